"""Every setting of one DePT trial, defined once: :class:`Hyperparameters`, one field per setting, each declared
with :func:`setting` (type from the annotation; default, range, allowed values, help). Derived from the fields:

- the check of a search space's ``params`` values (:meth:`Setting.check`, used by :mod:`pipelines.tune.spaces`);
- the ``dept-pipeline train`` options, with their help and ranges (:func:`click_options`);
- the MLflow params of a run (:meth:`Hyperparameters.as_params`), ``dept.TrainConfig`` / ``dept.DePTConfig``
  (:meth:`~Hyperparameters.train_config`, :meth:`~Hyperparameters.dept_config`: the fields named as theirs) and
  the method's options (:meth:`~Hyperparameters.method_options`: the fields named as its ``Options``' fields);
- the settings table of ``tune_spaces/README.md`` (:func:`write_readme_table`).

Defaults belong to the method library: a default written ``"dept.config:DePTConfig.loss_weight"`` is read from
there (``dept.config`` is torch-free, so help texts read it at once), and ``per_method`` / ``option`` defaults
from the trial's method (``dept.methods.METHODS``: loads torch, read only when a trial is built; a method name is
checked against ``dept.methods.method_names`` without it).
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable

from dept.config import DePTConfig, TrainConfig, applied_dept

#: The prompt methods: the registry (loads torch: read when a trial is built) and its names (read without torch).
METHODS_REF = "dept.methods:METHODS"
METHOD_NAMES_REF = "dept.methods:method_names"


def dept_value(ref: str) -> Any:
    """The object ``module:Name.attr`` of the method library (imports it)."""
    module, path = ref.split(":")
    obj: Any = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _choices(value: Any) -> tuple:
    if isinstance(value, dict):  # a registry: its names
        return tuple(value)
    if typing.get_origin(value) is typing.Literal:
        return typing.get_args(value)
    return tuple(value)


def fmt(value: Any) -> str:
    """A value as a search space writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    return str(value)


@dataclass(frozen=True)
class Setting:
    """What one trial setting is: its type, default, range and meaning."""

    help: str
    default: Any = None  # a literal default
    from_dept: str | None = None  # or the method library's: "module:Name.attr", read when a trial is built
    per_method: str | None = None  # default: this class attribute of the trial's method (default_lr, ...)
    option: bool = False  # a field of the method's Options: default from there; applies only where it is one
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    space_low: float | None = None  # a tighter low bound in search spaces
    allowed: tuple | str | None = None  # values, or "module:Name" of dept (a registry or a Literal)
    registry: bool = False  # ``allowed`` names the method registry: checked by its names, not listed in help
    nullable: bool = False  # null / None is a valid value (besides "not given")
    none_means: str = ""  # what None means (help text), when None is the default
    none_label: str | None = None  # the MLflow param value of None
    blank_is_none: bool = False  # "" here is the method's None (ctx_init: random init)
    in_space: bool = True  # a ``params`` key of search spaces
    name: str = ""  # filled from the field
    kind: type = object  # bool, int, float or str: from the field's annotation

    # -- values ---------------------------------------------------------------------------------------------
    def choices(self) -> tuple | None:
        if self.allowed is None or isinstance(self.allowed, tuple):
            return self.allowed
        if self.registry:
            return dept_value(METHOD_NAMES_REF)()  # the registry's names, without loading it
        return _choices(dept_value(self.allowed))

    def type_name(self) -> str:
        return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}[self.kind]

    def check(self, value: Any, *, space: bool = False) -> Any:
        """``value`` as this setting's type and in its range (``space``: a search space's range), else
        ``ValueError`` with the reason in one line. Numbers written as text are read (command lines; YAML 1.1
        reads ``1e-3`` as text)."""
        if value is None:
            if self.nullable:
                return None
            raise ValueError(f"null is not allowed; expected {self.type_name()}")
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true/false, got {value!r}")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {value!r}")
            allowed = self.choices()
            if allowed is not None and value not in allowed:
                raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
            return value
        if isinstance(value, bool):
            raise ValueError(f"expected {self.type_name()}, got {value!r}")
        if isinstance(value, str):
            try:
                value = self.kind(value)
            except ValueError:
                raise ValueError(f"expected {self.type_name()}, got {value!r}") from None
        if self.kind is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int):
                raise ValueError(f"expected an integer, got {value!r}")
        else:
            if not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"expected a number, got {value!r}")
            value = float(value)
        low = self.space_low if space and self.space_low is not None else self.low
        if low is not None and (value < low or (self.low_open and value == low)):
            raise ValueError(f"{value!r} is below the allowed range ({'>' if self.low_open else '>='} {low:g})")
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise ValueError(f"{value!r} is above the allowed range ({'<' if self.high_open else '<='} {self.high:g})")
        return value

    def default_value(self) -> Any:
        """The default when no method fills it in (imports dept for ``from_dept``)."""
        return dept_value(self.from_dept) if self.from_dept else self.default

    def applies_to(self, method: type) -> bool:
        """Whether the setting means anything for ``method`` (a class of ``dept.methods.METHODS``)."""
        return not self.option or self.name in {f.name for f in dataclasses.fields(method.Options)}

    def method_default(self, method: type) -> Any:
        """The default for ``method``: its own for per-method settings, else :meth:`default_value`."""
        if self.per_method:
            return getattr(method, self.per_method)
        if self.option:
            value = getattr(method.Options(), self.name)
            return "" if self.blank_is_none and value is None else value
        return self.default_value()

    # -- texts ----------------------------------------------------------------------------------------------
    def range_text(self, *, space: bool, live: bool = False) -> str:
        """The values allowed, in words, in a search space or on the command line; ``live``: a registry's choices too
        (loads torch), else only those known without it ("" for a registry)."""
        if self.kind is bool:
            return "true/false"
        if self.kind is str:
            allowed = ", ".join(map(fmt, self.choices())) if live and self.allowed else self.choice_text()
            text = f"one of {allowed}" if allowed else "" if self.allowed else "text"
        else:
            low = self.space_low if space and self.space_low is not None else self.low
            word = "integer" if self.kind is int else "number"
            if low is not None and self.high is not None:
                ends = ("(" if self.low_open else "[", ")" if self.high_open else "]")
                text = f"{word} in {ends[0]}{low:g}, {self.high:g}{ends[1]}"
            elif low is not None:
                text = f"{word} {'>' if self.low_open else '>='} {low:g}"
            else:
                text = word
            if space and low != self.low:
                text += f" (train: >= {self.low:g})"
        return text + (", or null" if space and self.nullable and text else "")

    def choice_text(self) -> str:
        """The allowed values for help texts; "" when there are none or for the method registry (a method registered
        at run time is valid too)."""
        if self.allowed is None or self.registry:
            return ""
        return ", ".join(map(fmt, self.choices()))

    def default_text(self) -> str:
        """The default for help texts, without loading torch (``dept.config`` is torch-free)."""
        if self.per_method or self.option:
            return "the method's own"
        if self.from_dept:
            return fmt(self.default_value())
        return self.none_means if self.default is None else fmt(self.default)


def setting(default: Any = None, *, help: str, **kwargs) -> Any:
    """A :class:`Hyperparameters` field: ``default`` (or ``from_dept="module:Name.attr"``, the method library's,
    read when a trial is built) and the other keywords of :class:`Setting`."""
    meta = Setting(help=help, default=default, **kwargs)
    if meta.from_dept:
        return dataclasses.field(default_factory=meta.default_value, metadata={"setting": meta})
    return dataclasses.field(default=default, metadata={"setting": meta})


@dataclass(frozen=True)
class Hyperparameters:
    """Every setting of one trial. ``None`` means "the method's own default", resolved by :meth:`resolved`."""

    method: str = setting("coop", allowed=METHODS_REF, registry=True,
                          help="Base prompt method: a name registered in dept.methods (a wrong one lists them).")
    dept: bool = setting(True, help="With DePT's CAT head; false: the plain method (loss and fusion weight 0).")
    loss_weight: float = setting(from_dept="dept.config:DePTConfig.loss_weight", low=0.0, high=1.0,
                                 help="lam: the CAT head's share of the training loss (0: the plain method).")
    fusion_weight: float = setting(from_dept="dept.config:DePTConfig.fusion_weight", low=0.0, high=1.0,
                                   help="a: the CAT head's share of base-class logits at inference.")
    fusion: str = setting(from_dept="dept.config:DePTConfig.fusion", allowed="dept.config:FusionMode",
                          help="What is fused for base classes: logits (the reference code) or probs (the paper).")
    epochs: int = setting(from_dept="dept.config:TrainConfig.epochs", low=0, space_low=1,
                          help="Training epochs (0: the untrained prompts, e.g. zero-shot from a ctx init).")
    batch_size: int | None = setting(per_method="default_batch_size", low=1, help="Training batch size.")
    lr: float | None = setting(per_method="default_lr", low=0.0, low_open=True, help="Prompt learning rate.")
    head_lr_mult: float = setting(from_dept="dept.config:TrainConfig.head_lr_mult", low=0.0, low_open=True,
                                  help="CAT head lr = lr x this.")
    warmup_epochs: int = setting(from_dept="dept.config:TrainConfig.warmup_epochs", low=0,
                                 help="Epochs at the warmup lr.")
    warmup_lr: float = setting(from_dept="dept.config:TrainConfig.warmup_lr", low=0.0, low_open=True,
                               help="Constant lr of the warmup epochs.")
    momentum: float = setting(from_dept="dept.config:TrainConfig.momentum", low=0.0, high=1.0, high_open=True,
                              help="SGD momentum.")
    weight_decay: float = setting(from_dept="dept.config:TrainConfig.weight_decay", low=0.0,
                                  help="SGD weight decay.")
    n_ctx: int | None = setting(option=True, low=1, help="Context tokens.")
    ctx_init: str | None = setting(option=True, nullable=True, blank_is_none=True,
                                   help='Context init text ("" = random).')
    class_specific: bool | None = setting(option=True, help="One context per class (CoOp's CSC).")
    kg_weight: float | None = setting(option=True, low=0.0,
                                      help="KgCoOp's knowledge-guidance weight w_kg (the original KgCoOp: 8).")
    shots: int | None = setting(low=1, none_means="the store's largest", help="Few-shot images per class.")
    logit_scale: float | None = setting(low=0.0, low_open=True, nullable=True, none_means="the model's learned",
                                        none_label="learned", help="ITM temperature tau (e.g. 100, real CLIP's).")
    seed: int = setting(1, low=0, in_space=False, help="Few-shot draw and training seed.")

    def resolved(self, store_shots: list[int] | None = None) -> "Hyperparameters":
        """The same with every method default filled in (what the trial really uses, and what MLflow shows)."""
        method = method_class(self.method)
        changes: dict[str, Any] = {}
        for s in SETTINGS.values():
            if (s.per_method or s.option) and getattr(self, s.name) is None and s.applies_to(method):
                changes[s.name] = s.method_default(method)
        if not self.dept:
            changes["loss_weight"] = 0.0
            changes["fusion_weight"] = 0.0
        if self.shots is None and store_shots:
            changes["shots"] = max(store_shots)
        return dataclasses.replace(self, **changes)

    def method_options(self) -> dict:
        """Options for ``dept.build_learner``: the settings that are fields of the method's Options."""
        method = method_class(self.method)
        options = {}
        for s in SETTINGS.values():
            value = getattr(self, s.name)
            if s.option and s.applies_to(method) and value is not None:
                options[s.name] = None if s.blank_is_none and value == "" else value
        return options

    def train_config(self):
        """``dept.TrainConfig`` from the settings of its field names (resolve first)."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)
                              if f.name in SETTINGS})

    def dept_config(self):
        """``dept.DePTConfig`` from the settings of its field names; None without DePT."""
        if not self.dept:
            return None
        return DePTConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DePTConfig)})

    def applied_dept(self) -> dict[str, Any]:
        """What the trial really applies (``dept.applied_dept``): ``dept_effective`` and the loss / fusion
        weights in effect; DePT at loss weight 0 is the plain method: false, 0, 0."""
        return applied_dept(self.dept_config())

    def as_params(self) -> dict[str, Any]:
        """Flat name -> value of every setting that applies to this method, then what is really applied
        (:meth:`applied_dept`): MLflow params, results tables."""
        method = method_class(self.method)
        out: dict[str, Any] = {}
        for s in SETTINGS.values():
            if s.applies_to(method):
                value = getattr(self, s.name)
                out[s.name] = s.none_label if value is None and s.none_label else value
        return {**out, **self.applied_dept()}

    @classmethod
    def from_config(cls, config: dict) -> "Hyperparameters":
        """From a Tune trial config (extra keys such as Ray's own are ignored)."""
        return cls(**{k: v for k, v in config.items() if k in SETTINGS})


def _settings() -> dict[str, Setting]:
    hints = typing.get_type_hints(Hyperparameters)
    out = {}
    for f in dataclasses.fields(Hyperparameters):
        kinds = [t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None)]
        out[f.name] = dataclasses.replace(f.metadata["setting"], name=f.name, kind=kinds[0])
    return out


#: Every setting, in field order.
SETTINGS: dict[str, Setting] = _settings()


def default_of(name: str) -> Any:
    """A setting's default when no method fills it in."""
    return SETTINGS[name].default_value()


def method_names() -> tuple[str, ...]:
    """The prompt methods a trial can use: every one registered in ``dept.methods.METHODS``."""
    return SETTINGS["method"].choices()


def method_class(name: str) -> type:
    if name not in method_names():  # checked before the registry (torch) is loaded
        raise ValueError(f"unknown method {name!r}; known: {', '.join(method_names())}")
    return dept_value(METHODS_REF)[name]


# -- the train command's options -------------------------------------------------------------------------------
def click_options(command: Callable) -> Callable:
    """One ``train`` option per setting (``--loss-weight`` ...), checked by :meth:`Setting.check`. None has a click
    default: an option not given is absent, and :class:`Hyperparameters` fills in the setting's default."""
    import click

    class SettingType(click.ParamType):
        def __init__(self, s: Setting):
            self.setting, self.name = s, s.name

        def get_metavar(self, *args, **kwargs) -> str:
            choices = self.setting.choice_text()
            return f"[{choices.replace(', ', '|')}]" if choices else {int: "INTEGER", float: "FLOAT"}.get(
                self.setting.kind, "TEXT" if self.setting.allowed is None else self.setting.name.upper())

        def convert(self, value, param, ctx):
            try:
                return self.setting.check(value)
            except ValueError as e:
                self.fail(str(e), param, ctx)

    for s in reversed(SETTINGS.values()):
        flag = "--" + s.name.replace("_", "-")
        values = "" if s.kind is bool else s.range_text(space=False)
        text = f"{s.help}  [{values + '; ' if values else ''}default: {s.default_text()}]"
        if s.kind is bool:
            command = click.option(f"{flag}/--no-{flag[2:]}", s.name, default=None, help=text)(command)
        else:
            command = click.option(flag, s.name, type=SettingType(s), default=None, help=text)(command)
    return command


# -- the settings table of tune_spaces/README.md ---------------------------------------------------------------
TABLE_BEGIN = "<!-- settings table: from the fields, by pipelines.trial.settings.write_readme_table() -->"
TABLE_END = "<!-- end of settings table -->"


def settings_table() -> str:
    """The Markdown table of every search-space setting, defaults read from dept (imports it)."""
    methods = dept_value(METHODS_REF)
    rows = ["| setting | values | default | what |", "| --- | --- | --- | --- |"]
    for s in SETTINGS.values():
        if not s.in_space:
            continue
        if s.per_method or s.option:
            default = ", ".join(f"{n} `{fmt(s.method_default(m))}`" for n, m in methods.items() if s.applies_to(m))
        elif s.from_dept:
            default = f"`{fmt(s.default_value())}` ({s.from_dept.split(':')[1]})"
        else:
            default = s.none_means if s.default is None else f"`{fmt(s.default)}`"
        values = s.range_text(space=True, live=True)
        rows.append(f"| `{s.name}` | {values} | {default} | {s.help} |")
    return "\n".join(rows)


def readme_block() -> str:
    return f"{TABLE_BEGIN}\n{settings_table()}\n{TABLE_END}"


def write_readme_table(readme: str | None = None) -> str:
    """Rewrite the settings table of ``tune_spaces/README.md`` from the fields; returns the file's path."""
    import re
    from pathlib import Path

    path = Path(readme) if readme else Path(__file__).resolve().parents[2] / "tune_spaces" / "README.md"
    pattern = re.escape(TABLE_BEGIN) + ".*?" + re.escape(TABLE_END)
    path.write_text(re.sub(pattern, lambda _: readme_block(), path.read_text(), flags=re.S))
    return str(path)


# -- a trial's seed ------------------------------------------------------------------------------------------
#: The key Ray's ``Repeater`` sets in a config (``ray.tune.search.repeater.TRIAL_INDEX``).
REPEAT_INDEX_KEY = "__trial_index__"


def seed_of(config: dict, seeds: tuple[int, ...] | list[int]) -> int:
    """A trial's seed from its config: the ``seed`` value (random searcher), or the Repeater's index into
    ``seeds`` (other searchers)."""
    if "seed" in config:
        return int(config["seed"])
    return int(seeds[int(config.get(REPEAT_INDEX_KEY, 0)) % len(seeds)])
