"""Trial populations: P learners of one method and shape trained in one batched step.

A coefficient search runs dozens of trials of identical shape on one dataset. Trained one after another, each
step of each trial is ~1,400 small kernels; trained as one population, the P members' contexts go through the
text encoder's shared-prefix path as P prefix groups, their CAT heads run as batched matmuls over stacked
parameters, and the P losses are summed into one backward. Members are independent (no op mixes two members'
rows), so the gradient each member's parameters receive is that of its own loss.

What each member keeps to itself: its ``DePTLearner`` (initialisation, loss weight, fusion weight, KgCoOp
weight) and its ``TrainConfig`` (lr, head-lr multiplier, weight decay, momentum, warmup, seed: its own shuffle
and view draws, ``dept.train``'s per-(seed, epoch) ``randperm`` and :func:`dept.schedule.epoch_views`). What the
members share (the population's "shape"): method, base classes, frozen text tower, context shape, logit scale,
CAT head or none, epochs and batch size.

The parameters stay each member's own leaf tensors (the learners are trained in place, and evaluate / save as
usual); one ``torch.optim.SGD`` holds one param group per member and part (prompts, CAT head), so the update is
torch's own per member. A member stopped by the caller after an epoch (``on_epoch`` returns True: ASHA's
decision) or failed with a non-finite loss leaves the forward: its parameters get no gradient, so SGD skips
them, and it costs nothing from then on.

Exactness (tests/dept/test_population.py): each member equals its own ``dept.train`` run within float32
rounding (~1e-6 relative: batched matmuls round differently from single ones); a population of one runs its
learner's own ``training_loss`` and gives ``dept.train``'s numbers bit for bit: ``dept.train`` is
``train_population([learner], ..., [config])[0].history`` (one loop: schedule, draws, optimizer, epoch stats,
resume states), with a non-finite loss trained through rather than failing the member.

Resuming: member ``p``'s :class:`dept.schedule.TrainResume` holds its learned tensors and its part of the optimizer as
the state_dict of the SGD ``dept.train`` alone would have (so a state saved by either resumes in either); a
resumed member joins the population at its epoch.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import torch
import torch.nn.functional as F

from dept.config import COMPILE_MODES, TrainConfig
from dept.head import stacked_training_logits
from dept.learner import DePTLearner
from dept.schedule import EpochStats, TrainResume, check_training_data, epoch_views
from dept.state import learned_state_dict

log = logging.getLogger(__name__)

MemberStatus = Literal["done", "stopped", "failed"]


@dataclass(frozen=True)
class PopulationOptions:
    amp: bool = False  # bf16 autocast for the forward; parameters, gradients and SGD stay fp32 (master weights)
    compile: str | None = None  # torch.compile mode for the loss ("default"; "reduce-overhead": CUDA graphs)
    #: Bytes of activations one step may hold. None: on a GPU, a share of its free memory (MEMORY_SHARE); on CPU,
    #: no limit. A population whose members' activations would not fit runs each step in chunks of members.
    memory_budget_bytes: int | None = None

    def __post_init__(self):
        if self.compile not in (None, *COMPILE_MODES):
            raise ValueError(f"population compile mode {self.compile!r} is not a torch.compile mode")
        if self.memory_budget_bytes is not None and self.memory_budget_bytes <= 0:
            raise ValueError(f"population memory budget must be > 0 bytes, got {self.memory_budget_bytes}")

    @classmethod
    def for_precision(cls, precision: str, compile: str | None = None) -> "PopulationOptions":
        """The options of a resolved precision ("fp32" / "bf16", :func:`dept.config.resolve_precision`)."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16 here (resolve 'auto' first), got {precision!r}")
        return cls(amp=precision == "bf16", compile=compile)


#: Share of a GPU's free memory a step's activations may take: the rest holds gradients, the optimizer's momentum,
#: the allocator's slack and the fused kernels' workspace.
MEMORY_SHARE = 0.6


@dataclass
class MemberResult:
    history: list[EpochStats] = field(default_factory=list)
    status: MemberStatus = "done"
    reason: str = ""  # why it stopped or failed

    @property
    def epochs_done(self) -> int:
        return len(self.history)


def check_population(learners: list[DePTLearner], configs: list[TrainConfig]) -> None:
    """One-line errors, before any work, for members that cannot be trained as one population."""
    if not learners:
        raise ValueError("a population needs at least one learner")
    if len(configs) != len(learners):
        raise ValueError(f"population: {len(learners)} learners but {len(configs)} training configs")
    if len({id(m) for m in learners}) != len(learners):
        raise ValueError("population: the same learner object appears twice (members must not share parameters)")
    lead, c0 = learners[0], configs[0]

    def shape(m: DePTLearner) -> tuple:
        return (type(m.method), [tuple(p.shape) for p in m.method.parameters()], m.dept is not None,
                next(m.method.parameters()).device)

    for i, (m, c) in enumerate(zip(learners, configs)):
        differs = [what for what, same in (
            ("method / context shape / CAT head / device", shape(m) == shape(lead)),
            ("base classes", m.base_classnames == lead.base_classnames),
            ("text tower", m.encoder._tower.transformer is lead.encoder._tower.transformer),
            ("logit scale", m.logit_scale == lead.logit_scale),
            ("epochs", c.epochs == c0.epochs),
            ("batch size", c.batch_size == c0.batch_size),
        ) if not same]
        if differs:
            raise ValueError(f"population member {i} differs from member 0 in {', '.join(differs)}; "
                             "train it in another population")


def population_losses(learners: list[DePTLearner], image_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[P]``: member ``p``'s ``training_loss`` on its own batch ``image_features[p] [B, D]``, ``labels[p]``.

    A population of one is its learner's own ``training_loss`` (so ``dept.train``'s numbers, bit for bit: batched
    matmuls' backward rounds differently from single ones); more members take :func:`batched_losses`."""
    if len(learners) == 1:
        return learners[0].training_loss(image_features[0], labels[0])[0].unsqueeze(0)
    return batched_losses(learners, image_features, labels)


def batched_losses(learners: list[DePTLearner], image_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`population_losses` as one batched computation over the P members (equal within float rounding)."""
    lead = learners[0]
    classes = lead.class_tokens(lead.base_classnames)
    methods = [m.method for m in learners]
    text = type(lead.method).population_text_features(methods, lead.encoder, classes, image_features)
    v, t = F.normalize(image_features, dim=-1), F.normalize(text, dim=-1)
    # The same ops, in the same order, as DePTLearner.itm_logits_from, one batch dimension up.
    if t.dim() == 4:
        itm = lead.logit_scale * torch.einsum("pbd,pbkd->pbk", v, t)
    else:
        itm = torch.bmm(lead.logit_scale * v, t.transpose(1, 2))
    loss = _mean_ce(itm, labels)
    if lead.dept is not None:
        rows = torch.arange(len(learners), device=labels.device)[:, None]
        if text.dim() == 4:  # each sample's own class text feature, as in DePTLearner.training_loss
            class_text = text[rows, torch.arange(labels.shape[1], device=labels.device)[None, :], labels]
        else:
            class_text = text[rows, labels]
        z = stacked_training_logits([m.cat_head for m in learners], image_features, class_text)
        lw = torch.tensor([m.dept.loss_weight for m in learners], dtype=loss.dtype, device=loss.device)
        one_minus = torch.tensor([1.0 - m.dept.loss_weight for m in learners], dtype=loss.dtype, device=loss.device)
        loss = one_minus * loss + lw * _mean_ce(z, torch.cat([labels, labels], dim=1))
    reg = type(lead.method).population_regularizer(
        methods, lead.encoder, classes, text if text.dim() == 3 else text.mean(1))
    return loss if reg is None else loss + reg


def _mean_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-member mean cross-entropy: ``[P, N, K]`` logits, ``[P, N]`` targets -> ``[P]``."""
    P, N, K = logits.shape
    return F.cross_entropy(logits.reshape(P * N, K), targets.reshape(P * N), reduction="none").view(P, N).mean(1)


def train_population(
    learners: list[DePTLearner],
    features: torch.Tensor,
    labels: torch.Tensor,
    configs: list[TrainConfig],
    *,
    on_epoch: Callable[[int, EpochStats], bool | None] | None = None,
    after_epoch: Callable[[int, list[int]], Iterable[int]] | None = None,
    validate: Callable[[int, DePTLearner], dict[str, float]] | None = None,
    resume: list[TrainResume | None] | None = None,
    resumable: bool = False,
    options: PopulationOptions = PopulationOptions(),
    nonfinite: Literal["fail", "continue"] = "fail",
) -> list[MemberResult]:
    """Train P members in place on one dataset's ``features [N, V, D]`` (or ``[N, D]``) and ``labels [N]``, each
    with its own ``configs[p]``; returns each member's history and status in member order.

    ``on_epoch(p, stats)`` after each of member ``p``'s epochs: return True to stop it there (ASHA).
    ``after_epoch(epoch, members)``: once every member trained in 1-based ``epoch`` has had its ``on_epoch``; returns
    those of ``members`` to stop there (a caller that waits for all members' decisions at once: Tune's, through
    ``pipelines.trial.population``). Not called after the last epoch.
    ``validate(p, learner)``: member ``p``'s metrics after each epoch (in ``stats.metrics``).
    ``resumable``: each epoch's stats carry the member's :class:`TrainResume` (a copy). ``resume[p]``: member
    ``p`` (built as for its first attempt) continues from that state, joining the population at its epoch; None:
    from the start. ``nonfinite``: "fail" marks a member whose loss is not finite failed and drops it; "continue"
    trains on (``dept.train``'s behaviour)."""
    check_population(learners, configs)
    if nonfinite not in ("fail", "continue"):
        raise ValueError(f"population: nonfinite must be 'fail' or 'continue', not {nonfinite!r}")
    lead, c0 = learners[0], configs[0]
    features = check_training_data(lead, features, labels)
    resume = check_resume(resume, configs)
    n, num_views, _ = features.shape
    device = next(lead.method.parameters()).device
    member_groups = [[{**g, "momentum": c.momentum, "weight_decay": c.weight_decay}
                      for g in m.param_groups(c.lr, c.head_lr_mult)] for m, c in zip(learners, configs)]
    base_lrs = [g["lr"] for gs in member_groups for g in gs]
    members_of = [p for p, gs in enumerate(member_groups) for _ in gs]
    starts = [0 if r is None else r.epoch for r in resume]
    momentum = {}  # resumed members' saved optimizer state, per parameter
    for p, r in enumerate(resume):
        if r is not None:
            momentum.update(load_member_state(learners[p], member_groups[p], configs[p], r))
    # One SGD, one param group per (member, part): member p's groups are those of dept.train's own optimizer.
    optimizer = torch.optim.SGD([g for gs in member_groups for g in gs], lr=c0.lr)
    member_groups = [[g for g, q in zip(optimizer.param_groups, members_of) if q == p] for p in range(len(learners))]
    optimizer.state.update(momentum)
    loss_fn = population_losses
    if options.compile:
        # One uncompiled forward first fills the lazy caches (class tokens, KgCoOp targets: tokenizer calls that
        # would break the graph); new member modules of the same shape reuse the compiled graph.
        with torch.no_grad():
            population_losses(learners, features[: c0.batch_size, 0].expand(len(learners), -1, -1).to(device),
                              labels[: c0.batch_size].expand(len(learners), -1).to(device))
        loss_fn = torch.compile(population_losses, mode=options.compile)
    amp = step_autocast(device, options.amp)
    chunk = members_per_step(learners, features, labels, c0.batch_size, options, device)
    if chunk < len(learners):
        log.info("population of %d: activations over the memory budget, each step runs in chunks of %d members",
                 len(learners), chunk)
    results = [MemberResult() for _ in learners]
    live = list(range(len(learners)))  # neither stopped nor failed
    for m in learners:
        m.train()
    for epoch in range(min(starts), c0.epochs):
        active = [p for p in live if starts[p] <= epoch]
        if not active:
            continue
        start = time.perf_counter()
        for group, base, p in zip(optimizer.param_groups, base_lrs, members_of):
            group["lr"] = configs[p].lr_at(epoch, base)
        # Each member's own shuffle and views, from (seed, epoch) only (what makes resuming exact).
        order = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(configs[p].seed * 1_000_003 + epoch))
                             for p in active])
        views = torch.stack([epoch_views(n, num_views, epoch, configs[p].seed) for p in active])
        totals = [0.0] * len(active)
        steps = 0
        for i in range(0, n - c0.batch_size + 1, c0.batch_size):
            idx = order[:, i : i + c0.batch_size]  # [A, B]
            batch = features[idx, views.gather(1, idx)].to(device)
            members = [learners[p] for p in active]
            targets = labels[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            values = []
            # Members are independent, so chunks' backwards add up to the whole population's gradients.
            for lo in range(0, len(active), chunk):
                with amp:
                    losses = loss_fn(members[lo : lo + chunk], batch[lo : lo + chunk], targets[lo : lo + chunk])
                losses.sum().backward()
                values += losses.tolist()
            bad = [j for j, v in enumerate(values) if not math.isfinite(v)] if nonfinite == "fail" else []
            for j in bad:  # failed: no update from this step on; the others' gradients are their own
                p = active[j]
                for q in learners[p].parameters():
                    q.grad = None
                results[p].status, results[p].reason = "failed", f"non-finite loss {values[j]} at epoch {epoch + 1}, step {steps + 1}"
                log.warning("population member %d failed: %s", p, results[p].reason)
            optimizer.step()
            for j, v in enumerate(values):
                totals[j] += v
            steps += 1
            if bad:
                keep = [j for j in range(len(active)) if j not in bad]
                active, order, views, totals = [active[j] for j in keep], order[keep], views[keep], [totals[j] for j in keep]
                if not active:
                    break
        seconds = time.perf_counter() - start
        done = [p for p in live if results[p].status == "failed"]
        for p, total in zip(active, totals):
            stats = EpochStats(epoch=epoch + 1, train_loss=total / max(steps, 1),
                               lr=configs[p].lr_at(epoch, configs[p].lr), seconds=seconds)
            if resumable:  # copies: training goes on in place
                stats.state = TrainResume(epoch + 1, {k: v.clone() for k, v in learned_state_dict(learners[p]).items()},
                                          member_optimizer_state(optimizer, member_groups[p], configs[p]))
            if validate is not None:
                learners[p].eval()
                with torch.no_grad():
                    stats.metrics = dict(validate(p, learners[p]))
                learners[p].train()
            results[p].history.append(stats)
            if on_epoch is not None and on_epoch(p, stats):
                results[p].status, results[p].reason = "stopped", f"stopped by the caller after epoch {epoch + 1}"
                done.append(p)
        if after_epoch is not None and epoch + 1 < c0.epochs:
            going_on = [p for p in active if p not in done]
            stop = set(after_epoch(epoch + 1, going_on)) & set(going_on)
            for p in sorted(stop):
                results[p].status, results[p].reason = "stopped", f"stopped by the caller after epoch {epoch + 1}"
                done.append(p)
        log.info("population epoch %d/%d: %d members, %.2fs", epoch + 1, c0.epochs, len(active), seconds)
        live = [p for p in live if p not in done]
        if not live:
            break
    for m in learners:
        m.eval()
    return results


def step_autocast(device: torch.device, amp: bool):
    """The training forward's precision context: bf16 autocast with ``amp``, else none (fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def activation_bytes(learners: list[DePTLearner], image_features: torch.Tensor, labels: torch.Tensor,
                     amp: bool = False) -> int:
    """Bytes of the activations autograd keeps for the backward of one batched step (:func:`batched_losses`) of
    ``learners`` on ``image_features [P, B, D]``: the storages saved for backward, each counted once, parameters and
    frozen weights left out (they are held anyway). Measured by running the forward, not estimated from shapes."""
    held = {q.untyped_storage().data_ptr() for m in learners for q in m.parameters()}
    held |= {q.untyped_storage().data_ptr() for q in learners[0].encoder.parameters()}
    held |= {q.untyped_storage().data_ptr() for q in learners[0].encoder.buffers()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in held:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), step_autocast(image_features.device, amp):
        losses = batched_losses(learners, image_features, labels)
    del losses
    return sum(saved.values())


def members_per_step(learners: list[DePTLearner], features: torch.Tensor, labels: torch.Tensor, batch_size: int,
                     options: PopulationOptions, device: torch.device) -> int:
    """How many members one forward / backward may hold: all of them, unless their activations would exceed the
    budget (:attr:`PopulationOptions.memory_budget_bytes`; on a GPU by default a share of its free memory).

    The step's activations are a part shared by the members (the class names' tokens through the text tower) plus
    a part per member; both are measured on probe steps of one and two members (:func:`activation_bytes`)."""
    budget = options.memory_budget_bytes
    if budget is None and device.type == "cuda":
        budget = int(torch.cuda.mem_get_info(device)[0] * MEMORY_SHARE)
    if budget is None or len(learners) == 1:
        return len(learners)
    one, two = (activation_bytes(learners[:p], features[:batch_size, 0].to(device).expand(p, -1, -1),
                                 labels[:batch_size].to(device).expand(p, -1), options.amp) for p in (1, 2))
    per_member = max(1, two - one)
    fits = (budget - (one - per_member)) // per_member
    if fits < 1:
        log.warning("population: one member's activations (%.1f MB) exceed the memory budget (%.1f MB); training "
                    "one member per step", one / 2**20, budget / 2**20)
    return int(max(1, min(len(learners), fits)))


def check_resume(resume: list[TrainResume | None] | None, configs: list[TrainConfig]) -> list[TrainResume | None]:
    """One-line errors, before any work, for resume states that do not fit the members' trainings."""
    if resume is None:
        return [None] * len(configs)
    if len(resume) != len(configs):
        raise ValueError(f"population: {len(configs)} learners but {len(resume)} resume states")
    for p, (r, c) in enumerate(zip(resume, configs)):
        if r is not None and not 0 <= r.epoch <= c.epochs:
            who = f"population member {p}: " if len(configs) > 1 else ""
            raise ValueError(f"{who}cannot resume after epoch {r.epoch} of a {c.epochs}-epoch training")
    return list(resume)


def member_optimizer(groups: list[dict], config: TrainConfig, saved: dict | None = None) -> torch.optim.SGD:
    """The SGD ``dept.train`` alone would train member ``groups`` with (its state_dict is ``TrainResume.optimizer``),
    over copies of the group dicts: loading ``saved`` into it leaves the population's groups alone."""
    sgd = torch.optim.SGD([dict(g) for g in groups], lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    if saved is not None:
        sgd.load_state_dict(saved)
    return sgd


def load_member_state(learner: DePTLearner, groups: list[dict], config: TrainConfig, state: TrainResume) -> dict:
    """Put a member's saved learned tensors into ``learner`` and its saved optimizer hyperparameters into its
    ``groups``; returns its saved optimizer state per parameter (for the population's optimizer, once built)."""
    for prefix, module in learner.learned_modules().items():
        own = {k[len(prefix) + 1 :]: v for k, v in state.learned.items() if k.startswith(prefix + ".")}
        module.load_state_dict(own, strict=True)
    sgd = member_optimizer(groups, config, state.optimizer)  # torch's own checks and device / dtype casts
    for g, saved in zip(groups, sgd.param_groups):
        g.update({k: v for k, v in saved.items() if k != "params"})
    return dict(sgd.state)


def member_optimizer_state(optimizer: torch.optim.SGD, groups: list[dict], config: TrainConfig) -> dict:
    """Member ``groups``' part of the population's ``optimizer`` as ``dept.train``'s own SGD's state_dict (a copy)."""
    sgd = member_optimizer(groups, config)
    sgd.state.update({q: optimizer.state[q] for g in groups for q in g["params"] if q in optimizer.state})
    return copy.deepcopy(sgd.state_dict())
