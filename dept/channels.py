"""Channel importance (the paper's Figure 3, docs/channels.md): how much of the ground-truth class's similarity a
window of feature channels carries, on base classes against new ones.

For L2-normalised image features v_n (label y_n) and class text features t_k of one class set (base, or new), and
the cyclic window W_s = {s, s+1, ..., s+w-1} (mod D) of w channels starting at channel s:

    sim_nk(W)  = max(0, sum_{c in W} v_nc t_kc)
    CI(W)      = 1/N sum_n  sim_{n,y_n}(W) / (1/K sum_k sim_nk(W) + eps),       eps = 1e-12

one value per start channel s (D windows). ``CI_base / CI_new`` per window is the ratio whose distribution the
paper draws: the reference (Koorye/DePT ``tests/channel_importance.py``) computes it on the test images of the base
classes with the base classes' texts, and of the new classes with the new ones, w = 64.

Pure torch (a notebook imports it); the run bookkeeping is ``pipelines.analysis.channels``'.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dept.learner import DePTLearner

#: The reference's window (``tests/channel_importance.py``) and its epsilon.
DEFAULT_WINDOW = 64
EPS = 1e-12
#: Elements of the per-chunk [images, classes, channels + window] product; bounds memory (float64: 8 bytes each).
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class ChannelImportance:
    """CI of every window, base and new; index s is the window starting at channel s."""

    base: torch.Tensor  # [D]
    new: torch.Tensor  # [D]
    window: int

    @property
    def ratio(self) -> torch.Tensor:
        """CI-base : CI-new per window (the paper's density plot); inf or NaN where CI-new is 0 (no new image has a
        positive similarity to its own class on those channels)."""
        return self.base / self.new

    def summary(self) -> dict[str, float]:
        """Means over the windows, the ratio's mean and spread over the windows where it is defined, the share of
        windows where base leads, and how many windows have no ratio."""
        r = self.ratio
        finite = r[torch.isfinite(r)]
        return {
            "ci_base": float(self.base.mean()), "ci_new": float(self.new.mean()),
            "ratio_mean": float(finite.mean()) if len(finite) else float("nan"),
            "ratio_std": float(finite.std()) if len(finite) > 1 else 0.0,
            "ratio_above_1": float((self.base > self.new).double().mean()),
            "ratio_undefined": float(len(r) - len(finite)),
        }


def channel_importance(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor,
    *,
    window: int = DEFAULT_WINDOW,
    eps: float = EPS,
) -> torch.Tensor:
    """CI of each of the D cyclic windows of ``window`` channels (module docstring). ``image_features`` [N, D],
    ``text_features`` [K, D] (one per class) or [N, K, D] (per image, CoCoOp), ``labels`` [N] in 0..K-1; both
    feature sets are L2-normalised here over all D channels first, as the reference's stats trainers save them."""
    if image_features.dim() != 2:
        raise ValueError(f"image features must be [N, D], got {tuple(image_features.shape)}")
    n, d = image_features.shape
    per_image = text_features.dim() == 3
    if text_features.dim() not in (2, 3) or text_features.shape[-1] != d or (per_image and len(text_features) != n):
        raise ValueError(f"text features must be [K, {d}] or [{n}, K, {d}], got {tuple(text_features.shape)}")
    if labels.shape != (n,):
        raise ValueError(f"labels must be [{n}], got {tuple(labels.shape)}")
    if n == 0:
        raise ValueError("no images to compute channel importance on")
    if not 1 <= window <= d:
        raise ValueError(f"window must be 1..{d} channels (the features' width), got {window}")
    k = text_features.shape[-2]
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise ValueError(f"labels must lie in 0..{k - 1} (one per class text), got {int(labels.min())}..{int(labels.max())}")
    # float64: the window sums below are differences of running sums.
    v = F.normalize(image_features.double(), dim=-1)
    t = F.normalize(text_features.double(), dim=-1)
    total = torch.zeros(d, dtype=torch.float64)
    step = max(1, _CHUNK_ELEMENTS // (k * (d + window)))
    for i in range(0, n, step):
        vi = v[i : i + step]
        ti = t[i : i + step] if per_image else t.unsqueeze(0)
        products = vi.unsqueeze(1) * ti  # [n, K, D]: each channel's share of every image-class similarity
        sims = window_sums(products, window).clamp_min_(0.0)  # [n, K, D]
        rows = torch.arange(len(vi))
        gt = sims[rows, labels[i : i + step]]  # [n, D]
        total += (gt / (sims.mean(dim=1) + eps)).sum(dim=0).cpu()
    return (total / n).float()


def window_sums(x: torch.Tensor, window: int) -> torch.Tensor:
    """Along the last axis (length D), the sum over the cyclic window of ``window`` entries starting at each
    index: out[..., s] = sum_{j < window} x[..., (s + j) mod D]."""
    d = x.shape[-1]
    wrapped = torch.cat([x, x[..., : window - 1]], dim=-1)
    running = F.pad(wrapped.cumsum(dim=-1), (1, 0))
    return running[..., window : window + d] - running[..., :d]


def base_new_channel_importance(
    base_images: torch.Tensor,
    base_labels: torch.Tensor,
    base_text: torch.Tensor,
    new_images: torch.Tensor,
    new_labels: torch.Tensor,
    new_text: torch.Tensor,
    *,
    window: int = DEFAULT_WINDOW,
) -> ChannelImportance:
    """CI of the base classes (their images, their texts) and of the new ones, window by window."""
    return ChannelImportance(channel_importance(base_images, base_text, base_labels, window=window),
                             channel_importance(new_images, new_text, new_labels, window=window), window)


@torch.no_grad()
def learner_text_features(
    learner: DePTLearner, classnames: list[str], image_features: torch.Tensor, *, batch_size: int = 16
) -> torch.Tensor:
    """The learned prompts' class text features in the space shared by base and new classes (the ITM head's; DePT's
    CAT head left out, as the reference's stats trainer does with its fusion weight 0): [K, D], or [N, K, D] for a
    method whose texts depend on the image (CoCoOp; N x K x D floats)."""
    learner.eval()
    device = next(learner.method.parameters()).device
    if not learner.method.per_image:
        return learner.text_features(list(classnames)).cpu()
    return torch.cat([learner.text_features(list(classnames), image_features[i : i + batch_size].to(device)).cpu()
                      for i in range(0, len(image_features), batch_size)])
