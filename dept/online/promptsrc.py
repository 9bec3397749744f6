"""PromptSRC (Khattak et al., ICCV 2023): independent deep prompts in both towers, regularised towards the frozen
CLIP ("self-regulating constraints"), and a Gaussian-weighted average of the prompts over the epochs.

Training loss on top of the classification loss (CE, or DePT's loss for PromptSRC+DePT):
    text_weight  * L1( norm(T), norm(T_zs) )     T_zs: frozen CLIP text features, the mean over the templates
    image_weight * L1( norm(V), norm(V_zs) )     V_zs: frozen CLIP image features of the same images
    KL( softmax(s_zs) || softmax(s) ), summed and divided by the number of logits   s_zs = tau norm(V_zs) norm(T_zs)^T
L1 is the mean absolute difference. Gaussian prompt aggregation (GPA): after epoch e (1-based) of N the learned
state is added with weight w_e = N(e; mean, std) / sum_{e'=1..N} N(e'; mean, std); the sum is the final state.

Reference recipe: 4 text + 4 vision context tokens, text context from "a photo of a", deep prompts N(0, 0.02),
depth 9 in both towers, text weight 25, image weight 10, GPA mean 15 std 1; SGD lr 0.0025, 20 epochs, batch 4.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dept.methods.base import MethodOptions, init_context
from dept.online.base import OnlinePromptMethod, register_online_method
from dept.online.vision import prompted_image_features, vision_layers, vision_width

#: The text templates whose frozen features PromptSRC averages (a 60-prompt subset of CLIP's ImageNet prompts).
PROMPTSRC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.",
    "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.",
    "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.",
    "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.", "the plastic {}.",
    "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.", "the toy {}.",
    "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
)


@dataclass(frozen=True)
class PromptSRCOptions(MethodOptions):
    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    ctx_init: str | None = "a photo of a"  # its token count sets n_ctx_text; None = random N(0, init_std)
    init_std: float = 0.02
    text_depth: int = 9
    vision_depth: int = 9
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    gpa_mean: float = 15.0
    gpa_std: float = 1.0
    templates: tuple[str, ...] = PROMPTSRC_TEMPLATES

    def __post_init__(self):
        if self.n_ctx_vision < 1 or self.text_depth < 1 or self.vision_depth < 1:
            raise ValueError("PromptSRC needs n_ctx_vision, text_depth and vision_depth >= 1")
        if self.text_loss_weight < 0 or self.image_loss_weight < 0 or not self.gpa_std > 0:
            raise ValueError("PromptSRC loss weights must be >= 0 and gpa_std > 0")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError("PromptSRC templates must be non-empty, each with '{}' for the class name")
        object.__setattr__(self, "templates", tuple(self.templates))


def gaussian_weights(epochs: int, mean: float, std: float) -> list[float]:
    """GPA's weight of each epoch 1..epochs: the normal density at the epoch, normalised to sum 1."""
    dens = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, epochs + 1)]
    total = sum(dens)
    if not total > 0:
        raise ValueError(f"GPA weights vanish for {epochs} epochs at mean {mean}, std {std}")
    return [d / total for d in dens]


class GaussianPromptAverage:
    """Accumulates ``w_e * state`` of the learned modules after each epoch; :meth:`apply` loads the sum."""

    def __init__(self, epochs: int, mean: float = 15.0, std: float = 1.0):
        self.weights = gaussian_weights(epochs, mean, std)
        self.sum: dict[str, torch.Tensor] | None = None
        self.epochs_seen = 0

    def update(self, module: nn.Module, epoch: int) -> None:
        """After 0-based ``epoch`` has finished."""
        w = self.weights[epoch]
        state = {k: v.detach().float() * w for k, v in module.state_dict().items() if v.is_floating_point()}
        self.sum = state if self.sum is None else {k: self.sum[k] + v for k, v in state.items()}
        self.epochs_seen += 1

    def apply(self, module: nn.Module) -> None:
        if self.sum is None:
            raise ValueError("no epoch averaged yet")
        current = module.state_dict()
        module.load_state_dict({**current, **{k: v.to(current[k].dtype) for k, v in self.sum.items()}})


@register_online_method("promptsrc")
class PromptSRC(OnlinePromptMethod):
    Options = PromptSRCOptions
    default_lr = 0.0025
    default_batch_size = 4
    default_epochs = 20

    def __init__(self, encoder, visual, options: PromptSRCOptions, *, classnames):
        super().__init__(encoder, visual, options, classnames=classnames)
        if options.text_depth > len(encoder._tower.transformer.resblocks) or options.vision_depth > vision_layers(visual):
            raise ValueError("PromptSRC prompt depth exceeds the towers' layers")
        self.ctx = nn.Parameter(init_context(encoder, options.n_ctx_text, options.ctx_init, options.init_std))
        n_t, d_t = self.ctx.shape
        n_v, d_v = options.n_ctx_vision, vision_width(visual)
        self.deep_text = nn.ParameterList(
            [nn.Parameter(torch.randn(n_t, d_t) * options.init_std) for _ in range(options.text_depth - 1)])
        self.vision = nn.ParameterList(
            [nn.Parameter(torch.randn(n_v, d_v) * options.init_std) for _ in range(options.vision_depth)])
        self._zs_text: dict[tuple[str, ...], torch.Tensor] = {}

    def text_features(self, encoder, classes, *, chunk_size=None):
        return encoder.deep_forward([self.ctx, *self.deep_text], classes, chunk_size=chunk_size)

    def image_features(self, visual, images):
        return prompted_image_features(visual, images, list(self.vision))

    def zero_shot_text_features(self, encoder, classnames: tuple[str, ...]) -> torch.Tensor:
        """``[K, D]`` frozen CLIP text features averaged over the templates (raw features, then the mean)."""
        if classnames not in self._zs_text:
            with torch.no_grad():
                feats = [encoder.encode_texts([t.format(c) for c in classnames]) for t in self.options.templates]
                self._zs_text[classnames] = torch.stack(feats, dim=1).mean(dim=1)
        return self._zs_text[classnames]

    def regularizer(self, *, encoder, visual, classes, images, text_features, image_features, itm_logits, logit_scale):
        o = self.options
        zs_text = F.normalize(self.zero_shot_text_features(encoder, tuple(classes.classnames)), dim=-1)
        with torch.no_grad():
            zs_image = F.normalize(visual(images.to(visual.conv1.weight.dtype)), dim=-1)
            zs_logits = logit_scale * zs_image @ zs_text.t()
        text_l1 = F.l1_loss(F.normalize(text_features, dim=-1), zs_text.to(text_features.dtype)) * o.text_loss_weight
        image_l1 = F.l1_loss(F.normalize(image_features, dim=-1), zs_image.to(image_features.dtype)) * o.image_loss_weight
        kl = F.kl_div(F.log_softmax(itm_logits, dim=-1), F.log_softmax(zs_logits, dim=-1), reduction="sum",
                      log_target=True) / itm_logits.numel()
        return text_l1 + image_l1 + kl
