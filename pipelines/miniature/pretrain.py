"""``miniature pretrain``: contrastive pretraining of the miniature CLIP (``dept-mini-vit``) from scratch on
generated image-caption pairs, with a tqdm progress bar and MLflow curves (the driver is the only writer).

Determinism: the pairs of step ``t`` are a function of ``(seed, t)`` and the initial weights of ``seed``, so two
runs with the same seed and the same number of steps give the same weights (same machine, same thread count).
``--minutes`` only chooses that number: at the end of the warm-up the run measures its speed and fixes the total
step count (recorded as ``steps``); the learning-rate schedule (linear warm-up, then cosine to zero) depends on
the step count alone. ``--steps N --seed S`` replays a ``--minutes`` run exactly. If the machine slows down so
much that the run passes 1.25x its time budget, it stops early and records that.

Output folder: ``dept-mini-vit.safetensors`` (fp32 open_clip state dict; ``--model dept-mini-vit --pretrained
<that file>`` loads it everywhere) and ``pretrain.json`` (architecture config, settings, final loss, learned
logit scale, the zero-shot probe before and after). An existing checkpoint there is never overwritten.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
from tqdm import tqdm

from dept.clip import file_sha256
from dept.miniature import (
    MODEL_NAME,
    MiniatureError,
    PairStream,
    Tokens,
    build_probe,
    contrastive_loss,
    encode_text,
    to_model_input,
)
from dept.miniature.model import MAX_LOGIT_SCALE, image_mean_std
from dept.miniature.world import HELD_OUT, all_compositions, composition_index
from pipelines.paths import PathError, check_writable_folder
from pipelines.tracking.client import Tracker, check_tracking_uri, default_tracking_uri
from pipelines.vocabulary import ROLE_TAG

log = logging.getLogger(__name__)

CHECKPOINT_NAME = f"{MODEL_NAME}.safetensors"
RECORD_NAME = "pretrain.json"
DEFAULT_EXPERIMENT = "miniature-pretrain"
ROLE_MINIATURE_PRETRAIN = "miniature-pretrain"  # the run's ``role`` tag
#: A ``--minutes`` run that falls this far behind its budget stops early instead of running on.
TIME_OVERRUN = 1.25
#: Loss and logit scale go to MLflow as the mean over this many steps.
LOG_EVERY = 10


@dataclass(frozen=True)
class PretrainConfig:
    out: str
    minutes: float | None = None  # time budget; chooses the step count when ``steps`` is not given
    steps: int | None = None
    seed: int = 0
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1  # AdamW, on weight matrices and embeddings (not gains, biases, logit scale)
    warmup_steps: int = 200
    probe_every: int = 100
    logit_scale: float | None = None  # a fixed temperature tau (not learned) when set, e.g. 100 as real CLIP's
    model: str = MODEL_NAME
    mlflow_uri: str | None = None  # None: sqlite:///mlflow.db in the working folder
    experiment: str = DEFAULT_EXPERIMENT
    threads: int | None = None  # torch CPU threads while pretraining (None: torch's default)
    progress: bool = True

    def check(self) -> None:
        """Every user error, in one line, before any work."""
        if self.steps is None and self.minutes is None:
            raise MiniatureError("pretrain needs --minutes or --steps")
        if self.steps is not None and self.steps < 1:
            raise MiniatureError(f"--steps must be at least 1, got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise MiniatureError(f"--minutes must be positive, got {self.minutes}")
        if self.batch_size < 2:
            raise MiniatureError(f"--batch-size must be at least 2 (a contrastive loss needs negatives), got {self.batch_size}")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_steps < 1 or self.probe_every < 1:
            raise MiniatureError(
                f"bad optimisation settings: lr={self.lr} weight_decay={self.weight_decay} "
                f"warmup_steps={self.warmup_steps} (>= 1) probe_every={self.probe_every} (>= 1)"
            )
        if self.logit_scale is not None and not 1.0 <= self.logit_scale <= 100.0:
            raise MiniatureError(f"--logit-scale must lie in 1..100 (it is tau, not log tau), got {self.logit_scale}")
        if self.threads is not None and self.threads < 1:
            raise MiniatureError(f"--threads must be at least 1, got {self.threads}")
        if self.model not in open_clip.list_models():
            raise MiniatureError(f"unknown open_clip model {self.model!r}")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise MiniatureError(f"--out {out} exists and is not a folder")
        if (out / CHECKPOINT_NAME).exists():
            raise MiniatureError(f"{out / CHECKPOINT_NAME} already exists; choose another --out (nothing is overwritten)")
        try:
            check_writable_folder(out, "--out")
        except PathError as e:
            raise MiniatureError(str(e)) from None

    def lr_at(self, step: int, total: int | None) -> float:
        """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to 0 at ``total``."""
        if step < self.warmup_steps or total is None:
            return self.lr * min(1.0, (step + 1) / self.warmup_steps)
        span = max(1, total - self.warmup_steps)
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * min(1.0, (step - self.warmup_steps) / span)))


@dataclass
class PretrainResult:
    checkpoint: Path
    record_path: Path
    record: dict = field(default_factory=dict)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's rule: decay weight matrices and embeddings; not gains, biases or the logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Pretrain, probe, log, and write the checkpoint and its record into ``config.out``."""
    config.check()
    uri = config.mlflow_uri or default_tracking_uri()
    check_tracking_uri(uri)
    out = Path(config.out)

    torch.manual_seed(config.seed)
    model = open_clip.create_model(config.model, pretrained=None)
    if not hasattr(model, "token_embedding"):
        raise MiniatureError(f"model {config.model!r} is not an open_clip CLIP with its text tower on the model")
    model.train()
    if config.logit_scale is not None:
        model.logit_scale.data.fill_(math.log(config.logit_scale))
        model.logit_scale.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(config.model)
    mean, std = image_mean_std(model)
    stream = PairStream(Tokens(tokenizer, model.context_length), config.seed, config.batch_size)
    probe = build_probe(mean, std)
    # fused: one kernel over all parameters; the unfused step over the 49408-row token table costs ~15 % of a step
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    n_params = sum(p.numel() for p in model.parameters())

    tracker = Tracker(uri, config.experiment)
    run_id = tracker.create_run(f"{config.model} seed={config.seed}", {ROLE_TAG: ROLE_MINIATURE_PRETRAIN})

    def log_metrics(values: dict[str, float], step: int) -> None:
        tracker.log_values(run_id, values, step)

    status = "FAILED"
    threads_before = torch.get_num_threads()
    try:
        if config.threads is not None:
            # On a CPU shared with other jobs, one thread is often several times faster than two that wait
            # for each other.
            torch.set_num_threads(config.threads)
        tracker.log_params(run_id, {
            "model": config.model, "seed": config.seed, "batch_size": config.batch_size, "lr": config.lr,
            "weight_decay": config.weight_decay, "warmup_steps": config.warmup_steps, "steps": config.steps,
            "minutes": config.minutes, "logit_scale": "learned" if config.logit_scale is None else config.logit_scale,
            "parameters": n_params, "torch_threads": torch.get_num_threads(),
            "held_out": ", ".join(all_compositions()[composition_index(c, s)].name for c, s in HELD_OUT),
        })
        record = _train(config, model, optimizer, stream, probe, tokenizer, log_metrics, mean, std)
        record["mlflow"] = {"tracking_uri": uri, "experiment": config.experiment, "run_id": run_id}
        result = _write(out, model, record)
        tracker.client.log_artifact(run_id, str(result.record_path))
        log_metrics({"checkpoint_mib": result.checkpoint.stat().st_size / 2**20}, step=record["steps"])
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        torch.set_num_threads(threads_before)
        tracker.client.set_terminated(run_id, status)


def _train(config, model, optimizer, stream, probe, tokenizer, log_metrics, mean, std) -> dict:
    total = config.steps
    budget = config.minutes * 60.0 if config.minutes is not None else None
    untrained = probe.evaluate(model, tokenizer)
    log_metrics(untrained, step=0)
    log.info("untrained zero-shot: seen %.1f %%, held-out %.1f %% (chance %.1f %%)",
             untrained["zs_seen"], untrained["zs_heldout"], probe.chance)
    bar = tqdm(total=total, desc="pretrain", unit="step", disable=not config.progress, dynamic_ncols=True, mininterval=2.0)
    losses: deque[float] = deque(maxlen=50)
    window: list[float] = []
    last = dict(untrained)
    start = time.perf_counter()
    timing_from: tuple[int, float] | None = None
    stopped_by_time = False
    step = 0
    while total is None or step < total:
        lr = config.lr_at(step, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = stream.batch(step)
        images = to_model_input(batch.images, mean, std)
        loss = contrastive_loss(model.encode_image(images), encode_text(model, batch.tokens), model.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        step += 1
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"pretraining diverged at step {step}: loss {value}")
        losses.append(value)
        window.append(value)
        elapsed = time.perf_counter() - start
        if step == 5:
            timing_from = (step, elapsed)  # the first steps pay for allocation and caching
        if step % LOG_EVERY == 0:
            log_metrics({
                "loss": float(np.mean(window)), "logit_scale": model.logit_scale.exp().item(), "lr": lr,
                "pairs_per_second": step * config.batch_size / elapsed,
            }, step=step)
            window.clear()
        if step % config.probe_every == 0 and (total is None or step < total):
            last = probe.evaluate(model, tokenizer)
            log_metrics(last, step=step)
        if budget is not None and total is None and step >= config.warmup_steps:
            # Fix the step count from the measured speed; the cosine part of the schedule starts only now.
            t0_step, t0 = timing_from if timing_from is not None else (0, 0.0)
            per_step = (elapsed - t0) / max(1, step - t0_step)
            total = max(step, step + int((budget - elapsed) / per_step))
            bar.total = total
            log.info("time budget %.1f min: %.2f s/step measured, %d steps in all", config.minutes, per_step, total)
        if budget is not None and elapsed > budget * (TIME_OVERRUN if total is not None and config.steps is None else 1.0):
            if total is None or step < total:
                stopped_by_time = True
                log.warning("stopped at step %d of %s by the time budget (%.1f min)", step, total or "?", config.minutes)
                break
        bar.update(1)
        if step % LOG_EVERY == 0:
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", tau=f"{model.logit_scale.exp().item():.1f}",
                            seen=f"{last['zs_seen']:.0f}%", held_out=f"{last['zs_heldout']:.0f}%", refresh=False)
    bar.close()
    wall = time.perf_counter() - start
    final = probe.evaluate(model, tokenizer)
    final_loss = float(np.mean(losses))
    logit_scale = model.logit_scale.exp().item()
    log_metrics({**final, "final_loss": final_loss}, step=step)
    log.info("pretrained %d steps in %.1f min: loss %.3f, logit scale %.1f, zero-shot seen %.1f %%, held-out %.1f %%",
             step, wall / 60, final_loss, logit_scale, final["zs_seen"], final["zs_heldout"])
    return {
        "model": config.model,
        "model_cfg": open_clip.get_model_config(config.model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "settings": {k: v for k, v in asdict(config).items() if k not in ("out", "mlflow_uri", "progress", "threads")},
        "steps": step,
        "steps_planned": total,
        "stopped_by_time": stopped_by_time,
        "pairs_seen": step * config.batch_size,
        "wall_seconds": round(wall, 1),
        "final": {"loss": final_loss, "loss_window_steps": len(losses), "logit_scale": logit_scale, **final},
        "untrained": untrained,
        # the same weights again (same machine and thread count); a run cut short by time cannot be replayed
        "replay": None if stopped_by_time else (
            f"dept-pipeline miniature pretrain --out OUT --steps {step} --seed {config.seed} --batch-size {config.batch_size} "
            f"--lr {config.lr} --weight-decay {config.weight_decay} --warmup-steps {config.warmup_steps} "
            f"--probe-every {config.probe_every} --model {config.model} --threads {torch.get_num_threads()}"
            + (f" --logit-scale {config.logit_scale}" if config.logit_scale is not None else "")
        ),
        "probe": {"template": "a photo of a {}.", "classes": len(probe.classnames), "chance": probe.chance,
                  "images_seen": int((~probe.held_out).sum()), "images_held_out": int(probe.held_out.sum()),
                  "held_out": [all_compositions()[composition_index(c, s)].name for c, s in HELD_OUT]},
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, "numpy": np.__version__,
                     "python": platform.python_version(), "torch_threads": torch.get_num_threads()},
    }


def _write(out: Path, model: torch.nn.Module, record: dict) -> PretrainResult:
    """Checkpoint and record, each written to a temporary name and renamed: a file is complete or absent."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT_NAME
    if ckpt.exists():  # checked before training too; another process may have written it since
        raise MiniatureError(f"{ckpt} appeared during the run; not overwriting it")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = out / (CHECKPOINT_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"model": record["model"], "format": "open_clip state dict"})
    os.replace(tmp, ckpt)
    record = {**record, "checkpoint": CHECKPOINT_NAME, "sha256": file_sha256(ckpt), "dtype": "float32",
              "checkpoint_bytes": ckpt.stat().st_size}
    rec_path = out / RECORD_NAME
    tmp = out / (RECORD_NAME + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, rec_path)
    log.info("wrote %s (%.1f MiB) and %s", ckpt, ckpt.stat().st_size / 2**20, rec_path)
    return PretrainResult(checkpoint=ckpt, record_path=rec_path, record=record)
