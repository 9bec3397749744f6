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
from dept.miniature import MODEL_NAME, MiniatureError, PairStream, Tokens, build_probe, contrastive_loss, encode_text, to_model_input
from dept.miniature.model import MAX_LOGIT_SCALE, image_mean_std
from dept.miniature.world import HELD_OUT, all_compositions, composition_index

log = logging.getLogger(__name__)

CHECKPOINT_NAME = f"{MODEL_NAME}.safetensors"
RECORD_NAME = "pretrain.json"
DEFAULT_EXPERIMENT = "miniature-pretrain"
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
        existing = next(p for p in (out.resolve(), *out.resolve().parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise MiniatureError(f"--out {out}: {existing} is not a writable folder")

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


class _Mlflow:
    """The run's MLflow handle (the driver is the only process, and the only writer)."""

    def __init__(self, uri: str, experiment: str, run_name: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if uri.startswith("sqlite:///"):  # artifacts beside the database, not in whatever folder we run in
                location = (Path(uri[len("sqlite:///"):]).expanduser().resolve().parent / "mlruns").as_uri()
            exp_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags={"role": "miniature-pretrain"}).info.run_id

    def params(self, params: dict) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, int(step)) for k, v in metrics.items()])

    def artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Pretrain, probe, log, and write the checkpoint and its record into ``config.out``."""
    config.check()
    from pipelines.tracking import check_tracking_uri, default_tracking_uri

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

    tracker = _Mlflow(uri, config.experiment, run_name=f"{config.model} seed={config.seed}")
    status = "FAILED"
    threads_before = torch.get_num_threads()
    try:
        if config.threads is not None:
            # On a CPU shared with other jobs, one thread is often several times faster than two that wait
            # for each other.
            torch.set_num_threads(config.threads)
        tracker.params({
            "model": config.model, "seed": config.seed, "batch_size": config.batch_size, "lr": config.lr,
            "weight_decay": config.weight_decay, "warmup_steps": config.warmup_steps, "steps": config.steps,
            "minutes": config.minutes, "logit_scale": "learned" if config.logit_scale is None else config.logit_scale,
            "parameters": n_params, "torch_threads": torch.get_num_threads(),
            "held_out": ", ".join(all_compositions()[composition_index(c, s)].name for c, s in HELD_OUT),
        })
        record = _train(config, model, optimizer, stream, probe, tokenizer, tracker, mean, std)
        record["mlflow"] = {"tracking_uri": uri, "experiment": config.experiment, "run_id": tracker.run_id}
        result = _write(out, model, record)
        tracker.artifact(result.record_path)
        tracker.metrics({"checkpoint_mib": result.checkpoint.stat().st_size / 2**20}, step=record["steps"])
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        torch.set_num_threads(threads_before)
        tracker.end(status)


def _train(config, model, optimizer, stream, probe, tokenizer, tracker, mean, std) -> dict:
    total = config.steps
    budget = config.minutes * 60.0 if config.minutes is not None else None
    untrained = probe.evaluate(model, tokenizer)
    tracker.metrics(untrained, step=0)
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
            tracker.metrics({
                "loss": float(np.mean(window)), "logit_scale": model.logit_scale.exp().item(), "lr": lr,
                "pairs_per_second": step * config.batch_size / elapsed,
            }, step=step)
            window.clear()
        if step % config.probe_every == 0 and (total is None or step < total):
            last = probe.evaluate(model, tokenizer)
            tracker.metrics(last, step=step)
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
    tracker.metrics({**final, "final_loss": final_loss}, step=step)
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


# -- shipping a pretrained checkpoint with the package ------------------------------------------------------------
#: Largest relative feature change (||f16 - f32|| / ||f32||, per image or text) allowed by rounding weights to fp16.
FP16_TOLERANCE = 1e-3


#: What may be stored in fp16, tried in this order; the first whose features stay within ``FP16_TOLERANCE`` ships.
#: (Most parameters are the 49408-row token table, which only moves text features; the small image tower is the
#: part most sensitive to rounding.)
PRECISIONS: tuple[tuple[str, str | None], ...] = (
    ("float16", ""),  # every floating-point tensor
    ("float16 except the image tower", "visual."),  # tensors under visual. stay fp32
    ("float32", None),  # nothing rounded
)


#: Never rounded: the temperature is one number that scales every ITM logit downstream (DePT's tau).
KEEP_FP32 = ("logit_scale", "logit_bias")


def _round(state: dict[str, torch.Tensor], keep_fp32_prefix: str | None) -> dict[str, torch.Tensor]:
    if keep_fp32_prefix is None:
        return dict(state)

    def rounded(k: str) -> bool:
        return k not in KEEP_FP32 and not (keep_fp32_prefix and k.startswith(keep_fp32_prefix))

    return {k: v.half() if v.is_floating_point() and rounded(k) else v for k, v in state.items()}


@torch.no_grad()
def feature_change(state: dict[str, torch.Tensor], rounded: dict[str, torch.Tensor], model_name: str = MODEL_NAME,
                   images_per_split: int = 400) -> dict[str, float]:
    """How much image and text features move when a model built from ``state`` is built from ``rounded`` instead
    (loaded into an fp32 model, as ``load_clip`` does): the max and mean relative change ||a - b|| / ||b|| over
    the probe images, downstream test images of both class splits, and the prompts of every composition."""
    from dept.miniature.downstream import SPLITS, draw_class_images

    exact = open_clip.create_model(model_name).eval()
    exact.load_state_dict(state)
    approx = open_clip.create_model(model_name).eval()
    approx.load_state_dict(rounded)
    mean, std = image_mean_std(exact)
    downstream = []
    for split in SPLITS.values():
        per_class = max(1, images_per_split // len(split.classes))
        downstream += [draw_class_images(k, "test", per_class, seed=0) for k in split.classes]
    images = torch.cat([build_probe(mean, std).images, to_model_input(np.concatenate(downstream), mean, std)])
    texts = open_clip.get_tokenizer(model_name)([f"a photo of a {k.name}." for k in all_compositions()])

    def rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).norm(dim=-1) / b.norm(dim=-1)

    r_img = rel(approx.encode_image(images), exact.encode_image(images))
    r_txt = rel(approx.encode_text(texts), exact.encode_text(texts))
    return {
        "image_max": r_img.max().item(), "image_mean": r_img.mean().item(), "images": len(images),
        "text_max": r_txt.max().item(), "text_mean": r_txt.mean().item(), "texts": len(texts),
    }


def ship(run_dir: str | Path, assets_dir: str | Path) -> dict:
    """Copy a pretraining run's checkpoint into ``assets_dir`` — in the smallest of ``PRECISIONS`` that moves no
    feature by more than ``FP16_TOLERANCE`` (relative) — with a record of the pretraining figures and of the zero-shot
    base / new / HM that the shipped file gives through ``load_clip`` on the downstream test split of each class
    split (default dataset settings). Refuses to overwrite an existing shipped file."""
    import tempfile

    from safetensors.torch import load_file, save_file

    from dept.clip import load_clip
    from dept.miniature import DownstreamConfig, write_miniature_dataset, zero_shot_base_new
    from dept.miniature.downstream import SPLITS, ZERO_SHOT_TEMPLATE

    run_dir, assets_dir = Path(run_dir), Path(assets_dir)
    source, source_record = run_dir / CHECKPOINT_NAME, run_dir / RECORD_NAME
    for p in (source, source_record):
        if not p.is_file():
            raise MiniatureError(f"not a finished pretraining run: {p} is missing")
    pretrain_record = json.loads(source_record.read_text(encoding="utf-8"))
    model_name = pretrain_record["model"]
    target = assets_dir / f"{model_name}.safetensors"
    target_record = assets_dir / f"{model_name}.json"
    for p in (target, target_record):
        if p.exists():
            raise MiniatureError(f"{p} already exists; remove it yourself to ship another checkpoint")

    state = load_file(str(source))
    tried = []
    for precision, keep_fp32 in PRECISIONS:
        rounded = _round(state, keep_fp32)
        change = feature_change(state, rounded, model_name)
        tried.append({"precision": precision, **change})
        log.info("%s: relative feature change %s", precision, change)
        if max(change["image_max"], change["text_max"]) <= FP16_TOLERANCE:
            break
    assets_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    save_file(rounded, str(tmp), metadata={"model": model_name, "format": "open_clip state dict", "precision": precision})
    os.chmod(tmp, 0o644)  # package data: readable by everyone (the writer creates it owner-only)
    os.replace(tmp, target)
    log.info("shipped %s as %s (%.1f MiB)", source, precision, target.stat().st_size / 2**20)

    clip = load_clip(model_name, str(target))
    zero_shot = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        for name in SPLITS:
            cfg = DownstreamConfig(split=name)
            folder = write_miniature_dataset(Path(tmpdir) / name, cfg)
            res = zero_shot_base_new(clip, folder, template=ZERO_SHOT_TEMPLATE)
            zero_shot[name] = {**res, "template": ZERO_SHOT_TEMPLATE,
                               "dataset": {k: v for k, v in asdict(cfg).items() if k != "shift"}}
            log.info("shipped checkpoint, zero-shot on %r: %s", name, res)
    record = {
        "model": model_name,
        "checkpoint": target.name,
        "sha256": file_sha256(target),
        "dtype": precision,
        "checkpoint_bytes": target.stat().st_size,
        "fp32_checkpoint_bytes": source.stat().st_size,
        "feature_change": {"tolerance": FP16_TOLERANCE, "tried": tried},
        "downstream_zero_shot": zero_shot,
        "pretraining": {k: pretrain_record[k] for k in (
            "model_cfg", "parameters", "settings", "steps", "steps_planned", "stopped_by_time", "pairs_seen",
            "wall_seconds", "final", "untrained", "probe", "versions", "sha256")},
        "replay": pretrain_record.get("replay"),
    }
    tmp = target_record.with_name(target_record.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, target_record)
    return record
