"""The hyperparameters of one DePT trial: their defaults (taken from the method library's own config dataclasses
and method classes) and what each accepts in a search space (:data:`PARAM_RULES`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from dept.head import DePTConfig
from dept.methods import METHODS as REGISTRY
from dept.train import TrainConfig


def method_names() -> tuple[str, ...]:
    """The prompt methods a trial can use: every one registered in ``dept.methods.METHODS``."""
    return tuple(REGISTRY)


@dataclass(frozen=True)
class Hyperparameters:
    """Every knob of one trial. ``None`` means "the method's own default", resolved by :meth:`resolved`."""

    # Defaults come from the method library's own config dataclasses: one place for each number.
    method: str = "coop"
    dept: bool = True
    loss_weight: float = DePTConfig.loss_weight  # lam: weight of the CAT head's loss in training
    fusion_weight: float = DePTConfig.fusion_weight  # a: weight of the CAT head in base-class inference
    fusion: str = DePTConfig.fusion
    epochs: int = TrainConfig.epochs
    batch_size: int | None = None  # the method's default_batch_size (CoOp/KgCoOp 4, CoCoOp 1)
    lr: float | None = None  # the method's default_lr (CoOp/KgCoOp 0.0035, CoCoOp 0.002)
    head_lr_mult: float = TrainConfig.head_lr_mult
    warmup_epochs: int = TrainConfig.warmup_epochs
    warmup_lr: float = TrainConfig.warmup_lr
    momentum: float = TrainConfig.momentum
    weight_decay: float = TrainConfig.weight_decay
    n_ctx: int | None = None  # the method's Options default
    ctx_init: str | None = None  # the method's Options default; "" = random init
    class_specific: bool | None = None  # CoOp only
    kg_weight: float | None = None  # KgCoOp only; None: dept.methods.kgcoop's default (2.0, with or without DePT)
    shots: int | None = None  # None: the largest shot count in the feature store
    logit_scale: float | None = None  # ITM temperature tau; None: the CLIP model's learned value
    seed: int = 1

    def resolved(self, store_shots: list[int] | None = None) -> "Hyperparameters":
        """The same with every method default filled in (what the trial really uses, and what MLflow shows)."""
        if self.method not in REGISTRY:
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(method_names())}")
        # Method defaults belong to each method (dept.methods: class attributes and *Options); read them there.
        method = REGISTRY[self.method]
        changes: dict[str, Any] = {}
        if self.batch_size is None:
            changes["batch_size"] = method.default_batch_size
        if self.lr is None:
            changes["lr"] = method.default_lr
        if self.n_ctx is None or self.ctx_init is None:
            options = method.Options()
            if self.n_ctx is None:
                changes["n_ctx"] = options.n_ctx
            if self.ctx_init is None:
                changes["ctx_init"] = options.ctx_init or ""
        if self.method == "coop" and self.class_specific is None:
            changes["class_specific"] = False
        if self.method == "kgcoop" and self.kg_weight is None:
            changes["kg_weight"] = method.Options().kg_weight  # one default, with or without DePT
        if not self.dept:
            changes["loss_weight"] = 0.0
            changes["fusion_weight"] = 0.0
        if self.shots is None and store_shots:
            changes["shots"] = max(store_shots)
        return dataclasses.replace(self, **changes)

    def method_options(self) -> dict:
        """Options for ``dept.build_learner`` (only those the method has)."""
        options: dict[str, Any] = {"n_ctx": self.n_ctx, "ctx_init": self.ctx_init or None}
        if self.method == "coop":
            options["class_specific"] = bool(self.class_specific)
        if self.method == "kgcoop":
            options["kg_weight"] = self.kg_weight
        return options

    def as_params(self) -> dict[str, Any]:
        """Flat name -> value of everything that applies to this method (MLflow params, results tables)."""
        out = dataclasses.asdict(self)
        if out["logit_scale"] is None:
            out["logit_scale"] = "learned"  # the CLIP model's own tau; "none" would read as no temperature
        if self.method != "coop":
            out.pop("class_specific")
        if self.method != "kgcoop":
            out.pop("kg_weight")
        return out

    @classmethod
    def from_config(cls, config: dict) -> "Hyperparameters":
        """From a Tune trial config (extra keys such as Ray's own are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})


@dataclass(frozen=True)
class ParamRule:
    kind: type  # bool, int, float, str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    allowed: tuple | Callable[[], tuple] | None = None  # a callable: read when checking (the method registry)
    nullable: bool = False

    def choices(self) -> tuple | None:
        return self.allowed() if callable(self.allowed) else self.allowed


#: What each ``params`` key accepts. ``seed`` is deliberately absent: seeds go under ``seeds``.
PARAM_RULES: dict[str, ParamRule] = {
    "method": ParamRule(str, allowed=method_names),
    "dept": ParamRule(bool),
    "loss_weight": ParamRule(float, 0.0, 1.0),
    "fusion_weight": ParamRule(float, 0.0, 1.0),
    "fusion": ParamRule(str, allowed=("logits", "probs")),
    "epochs": ParamRule(int, 1),
    "batch_size": ParamRule(int, 1),
    "lr": ParamRule(float, 0.0, low_open=True),
    "head_lr_mult": ParamRule(float, 0.0, low_open=True),
    "warmup_epochs": ParamRule(int, 0),
    "warmup_lr": ParamRule(float, 0.0, low_open=True),
    "momentum": ParamRule(float, 0.0, 1.0, high_open=True),
    "weight_decay": ParamRule(float, 0.0),
    "n_ctx": ParamRule(int, 1),
    "ctx_init": ParamRule(str, nullable=True),
    "class_specific": ParamRule(bool),
    "kg_weight": ParamRule(float, 0.0),
    "shots": ParamRule(int, 1),
    "logit_scale": ParamRule(float, 0.0, low_open=True, nullable=True),
}
