"""Save and load only what was learned (context, meta-net, CAT head) plus the config to rebuild it, as
safetensors — never the frozen CLIP."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dept.clip import LoadedClip
from dept.config import DePTConfig
from dept.learner import DePTLearner, build_learner

CONFIG_KEY = "dept_learner_config"


def learned_state_dict(learner: DePTLearner) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.{name}": tensor.detach().cpu().contiguous()
        for prefix, module in learner.learned_modules().items()
        for name, tensor in module.state_dict().items()
    }


def save_state(learner: DePTLearner, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(learned_state_dict(learner), str(tmp), metadata={CONFIG_KEY: json.dumps(learner.config())})
    tmp.replace(path)  # never leave a half-written state under the final name
    return path


def read_state_config(path: str | Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if CONFIG_KEY not in meta:
        raise ValueError(f"{path} is not a DePT learned state (no {CONFIG_KEY} metadata)")
    return json.loads(meta[CONFIG_KEY])


def load_state(path: str | Path, clip: LoadedClip) -> DePTLearner:
    """Rebuild the learner saved at ``path`` on top of ``clip`` (which must be the model it was trained with)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"learned state not found: {path}")
    cfg = read_state_config(path)
    saved = cfg.get("clip", {})
    if saved and (saved.get("model"), saved.get("weights_id")) != (clip.model_name, clip.weights_id):
        raise ValueError(
            f"{path} was trained on {saved.get('model')}/{saved.get('weights_id')}, "
            f"not {clip.model_name}/{clip.weights_id}"
        )
    learner = build_learner(
        cfg["method"],
        clip,
        cfg["base_classnames"],
        dataset=cfg.get("dataset", ""),
        method_options=cfg["method_options"],
        dept=DePTConfig(**cfg["dept"]) if cfg["dept"] is not None else None,
        seed=None,
        logit_scale=cfg.get("logit_scale"),  # the temperature it was trained with (an override, or the learned one)
    )
    tensors = load_file(str(path))
    for prefix, module in learner.learned_modules().items():
        own = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        module.load_state_dict(own, strict=True)
    return learner
