"""CLIP loading by ``(model, pretrained)``, open_clip style.

``pretrained`` is one of
- an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``, ...): downloaded where there is internet;
- a local checkpoint path (``.safetensors``; ``.pt``/``.bin`` only through ``torch.load(weights_only=True)``);
- ``None`` / ``"none"``: random init, seeded so every process builds the same weights;
- ``"shipped"``: the checkpoint that ships with this package for that model (``dept/assets/<model>.safetensors``;
  the pretrained miniature ``dept-mini-vit``).

Architectures shipped with this package (``dept/model_configs/*.json``) are registered with open_clip at import,
so ``--model dept-tiny-vit`` works everywhere a stock name does.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import open_clip
import torch
from torch import nn

from dept.weights import (  # noqa: F401  (re-exported: what a pretrained value names)
    ASSET_DIR,
    RANDOM_INIT_SEED,
    SHIPPED_TAG,
    file_sha256,
    is_local_checkpoint,
    is_none,
    shipped_models,
)

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)



class ClipLoadError(ValueError):
    """A model name or checkpoint the user gave cannot be loaded; the message is one line."""


@dataclass
class LoadedClip:
    model: nn.Module
    tokenizer: Callable
    model_name: str
    pretrained: str  # the tag, the checkpoint path, or "none"
    weights_id: str  # tag, "sha256:<hex>" of the checkpoint file, or "random-init:<seed>"
    embed_dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    preprocess_test: Callable | None  # PIL image -> tensor (resize shorter side, centre crop, normalise)
    text_only: bool

    @property
    def identity(self) -> dict:
        """What a feature store records about the model that produced it, and a trial checks."""
        return {"model": self.model_name, "weights_id": self.weights_id, "open_clip_version": open_clip.__version__}


def creation_kwargs(model_name: str, tag: str) -> dict:
    """open_clip ``create_model`` arguments for weights ``tag``. OpenAI weights were trained with QuickGELU;
    open_clip only warns when the model config says GELU and then gives wrong features, so ask for it here."""
    cfg = open_clip.get_pretrained_cfg(model_name, tag) or {}
    if cfg.get("quick_gelu", False) and not model_name.endswith("-quickgelu"):
        return {"force_quick_gelu": True}
    return {}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as e:  # truncated (a partial download) or no safetensors file at all
            raise ClipLoadError(f"checkpoint {path} is not a readable .safetensors file ({e}); "
                                "download it again") from None
    # Never unpickle arbitrary objects from a checkpoint.
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends: report in one line, run nothing
        raise ClipLoadError(f"checkpoint {path} is not a plain tensor file (weights_only load refused it): {type(e).__name__}") from None
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    return {k.removeprefix("module."): v for k, v in sd.items()}


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning():
    """open_clip warns on the root logger that a model built without a pretrained tag is random."""
    drop = _DropRandomInitWarning()
    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


def load_clip(
    model: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    text_only: bool = False,
) -> LoadedClip:
    """Build an open_clip model with frozen weights, in eval mode, in fp32."""
    if model not in open_clip.list_models():
        raise ClipLoadError(f"unknown open_clip model {model!r} (see open_clip.list_models())")
    if is_none(pretrained):
        torch.manual_seed(RANDOM_INIT_SEED)
        clip = open_clip.create_model(model, pretrained=None)
        pretrained_str, weights_id = "none", f"random-init:{RANDOM_INIT_SEED}"
    elif pretrained == SHIPPED_TAG or is_local_checkpoint(pretrained):
        path = ASSET_DIR / f"{model}.safetensors" if pretrained == SHIPPED_TAG else Path(str(pretrained)).expanduser()
        if pretrained == SHIPPED_TAG and not path.is_file():
            raise ClipLoadError(f"no checkpoint ships with this package for model {model!r} (looked for {path}); "
                                f"shipped: {', '.join(shipped_models()) or 'none'}")
        if not path.is_file():
            raise ClipLoadError(f"checkpoint not found: {path}")
        with _quiet_random_init_warning():  # the weights are loaded right below; open_clip's warning would mislead
            clip = open_clip.create_model(model, pretrained=None)
        try:
            missing, unexpected = clip.load_state_dict(read_state_dict(path), strict=False)
        except RuntimeError as e:  # shape mismatch: the file is for another architecture
            raise ClipLoadError(f"checkpoint {path} does not fit model {model!r}: {str(e).splitlines()[0]}") from None
        # Buffers such as attn_mask may legitimately be absent; learned weights may not.
        missing = [k for k in missing if not k.endswith("attn_mask")]
        if missing or unexpected:
            raise ClipLoadError(
                f"checkpoint {path} does not fit model {model!r}: "
                f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )
        pretrained_str = SHIPPED_TAG if pretrained == SHIPPED_TAG else str(path)
        weights_id = "sha256:" + file_sha256(path)
    else:
        tag = str(pretrained)
        if tag not in open_clip.list_pretrained_tags_by_model(model):
            raise ClipLoadError(
                f"unknown pretrained tag {tag!r} for model {model!r}; known: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none'}; or pass a checkpoint path"
            )
        kwargs = creation_kwargs(model, tag)
        if kwargs:
            log.info("%s/%s: using QuickGELU, as these weights were trained with it", model, tag)
        try:
            clip = open_clip.create_model(model, pretrained=tag, **kwargs)
        except (OSError, RuntimeError, ValueError) as e:  # no network, hub errors, corrupt download
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ClipLoadError(f"could not fetch pretrained weights {model}/{tag} ({type(e).__name__}: {first}); "
                                "without internet, pass a local checkpoint path as pretrained") from None
        pretrained_str, weights_id = tag, tag
    clip = clip.float().eval().requires_grad_(False)

    visual = clip.visual
    image_size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    preprocess = None
    if text_only:
        # Trials read cached image features: drop the image tower so it does not occupy memory.
        clip.visual = None
    else:
        preprocess = open_clip.image_transform(image_size, is_train=False, mean=mean, std=std)
    embed_dim = clip.text_projection.shape[1] if isinstance(clip.text_projection, torch.Tensor) else clip.text_projection.out_features
    return LoadedClip(
        model=clip.to(device),
        tokenizer=open_clip.get_tokenizer(model),
        model_name=model,
        pretrained=pretrained_str,
        weights_id=weights_id,
        embed_dim=int(embed_dim),
        image_size=int(image_size),
        mean=mean,
        std=std,
        preprocess_test=preprocess,
        text_only=text_only,
    )


def save_random_checkpoint(model: str, path: str | Path, seed: int = 1) -> Path:
    """Write a randomly initialised architecture as a local .safetensors checkpoint (tests, offline demos)."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    clip = open_clip.create_model(model, pretrained=None)
    sd = {k: v.contiguous() for k, v in clip.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path
