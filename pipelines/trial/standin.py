"""Bench only (bench/orchestration_ceiling.py; never set in real runs, no CLI option): what a ``tune`` run costs
with the training and scoring compute taken out.

``DEPT_BENCH_STANDIN_STEP=1`` in the environment of the driver (its local Ray's workers inherit it) replaces, in
every trial and population host, ``dept.train`` / ``dept.train_population`` and the per-epoch and final scoring
(``dept.evaluate_base_new``; a transfer trial's per-epoch ``source_accuracy``) by near-zero stand-ins with the same
shapes and outputs: every epoch's :class:`dept.schedule.EpochStats` (train loss 1.0, the schedule's lr, the same
metric keys), the same :class:`dept.schedule.TrainResume` contents (the learned tensors as built, zero momentum
buffers), the same final report keys and learned-state files. Ray Tune, the population host, per-epoch reports,
checkpoints, MLflow logging and artifacts all run as usual: what is left is the machinery's cost. The numbers are
meaningless.

The machinery's timers are :mod:`pipelines.benchtimers` (``DEPT_BENCH_TIMERS_DIR``, bench only too).
"""
from __future__ import annotations

import os
import time

STANDIN_ENV = "DEPT_BENCH_STANDIN_STEP"


def enabled() -> bool:
    return os.environ.get(STANDIN_ENV, "") not in ("", "0")


def train_population(learners, features, labels, configs, *, on_epoch=None, after_epoch=None, validate=None,
                     resume=None, resumable=False, options=None, nonfinite="continue"):
    """``dept.train_population``'s protocol (hooks, resume, stops, results) without its step."""
    import torch

    from dept.population import MemberResult, check_resume, load_member_state, member_optimizer
    from dept.schedule import EpochStats, TrainResume
    from dept.state import learned_state_dict

    resume = check_resume(resume, configs)
    groups, base_lrs = [], []
    for p, (m, c) in enumerate(zip(learners, configs)):
        gs = [{**g, "momentum": c.momentum, "weight_decay": c.weight_decay} for g in m.param_groups(c.lr, c.head_lr_mult)]
        base_lrs.append([g["lr"] for g in gs])
        if resume[p] is not None:
            load_member_state(m, gs, c, resume[p])
        groups.append(gs)
    starts = [0 if r is None else r.epoch for r in resume]
    results = [MemberResult() for _ in learners]
    live = list(range(len(learners)))
    epochs = configs[0].epochs
    for epoch in range(min(starts), epochs):
        active = [p for p in live if starts[p] <= epoch]
        if not active:
            continue
        start = time.perf_counter()
        done = []
        for p in active:
            stats = EpochStats(epoch=epoch + 1, train_loss=1.0, lr=configs[p].lr_at(epoch, configs[p].lr),
                               seconds=time.perf_counter() - start)
            if resumable:
                sgd = member_optimizer(groups[p], configs[p])
                for g, base in zip(sgd.param_groups, base_lrs[p]):  # the epoch's scheduled lr, as the real step's
                    g["lr"] = configs[p].lr_at(epoch, base)
                if configs[p].momentum:  # what the real step's SGD holds after a step: a momentum buffer each
                    for g in sgd.param_groups:
                        for q in g["params"]:
                            sgd.state[q] = {"momentum_buffer": torch.zeros_like(q, requires_grad=False)}
                stats.state = TrainResume(epoch + 1, learned_state_dict(learners[p]), sgd.state_dict())
            if validate is not None:
                stats.metrics = dict(validate(p, learners[p]))
            results[p].history.append(stats)
            if on_epoch is not None and on_epoch(p, stats):
                results[p].status, results[p].reason = "stopped", f"stopped by the caller after epoch {epoch + 1}"
                done.append(p)
        if after_epoch is not None and epoch + 1 < epochs:
            going_on = [p for p in active if p not in done]
            stop = set(after_epoch(epoch + 1, going_on)) & set(going_on)
            for p in sorted(stop):
                results[p].status, results[p].reason = "stopped", f"stopped by the caller after epoch {epoch + 1}"
                done.append(p)
        live = [p for p in live if p not in done]
        if not live:
            break
    return results


def train(learner, features, labels, config, *, on_epoch=None, validate=None, resume=None, resumable=False,
          options=None):
    """``dept.train``'s protocol without its step."""
    [result] = train_population(
        [learner], features, labels, [config], on_epoch=None if on_epoch is None else (lambda _, s: on_epoch(s)),
        validate=None if validate is None else (lambda _, m: validate(m)), resume=[resume], resumable=resumable)
    return result.history


def evaluate_base_new(learner, base_features, base_labels, new_features, new_labels, new_classnames, **_):
    """``dept.evaluate_base_new``'s result (same fields, logits of the right shapes, all zero) without its forward."""
    import torch

    from dept.evaluate import BaseNewResult, harmonic_mean

    logits = torch.zeros(len(base_labels), len(learner.base_classnames))
    new_acc = 0.0 if len(new_classnames) else float("nan")
    result = BaseNewResult(
        base_acc=0.0, new_acc=new_acc, hm=0.0, base_labels=base_labels.cpu(), base_itm_logits=logits,
        base_cat_logits=logits.clone() if learner.dept is not None else None,
        fusion_weight=learner.dept.fusion_weight if learner.dept is not None else 0.0,
        fusion=learner.dept.fusion if learner.dept is not None else "logits")
    result.base_acc = result.base_acc_at(result.fusion_weight)
    result.hm = harmonic_mean(result.base_acc, new_acc)
    return result
