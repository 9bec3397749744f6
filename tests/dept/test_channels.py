"""``dept.channels``: the channel importance of the paper's Figure 3 against a straightforward window-by-window
implementation, on cases whose answer is known by construction, and on real learners' text features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dept import DePTConfig, build_learner
from dept.channels import (
    base_new_channel_importance,
    channel_importance,
    learner_text_features,
    window_sums,
)
from tests.dept.conftest import BASE


def loop_importance(img: np.ndarray, text: np.ndarray, labels: np.ndarray, window: int) -> np.ndarray:
    """One window at a time, as written down in docs/channels.md: channels s..s+w-1 wrapped at D, a matrix product
    of those channels, clamped at 0, the ground truth's share of the mean, averaged over images."""
    img = img / np.linalg.norm(img, axis=-1, keepdims=True)
    text = text / np.linalg.norm(text, axis=-1, keepdims=True)
    d = img.shape[1]
    out = []
    for s in range(d):
        chans = [(s + j) % d for j in range(window)]
        if text.ndim == 2:
            sims = img[:, chans] @ text[:, chans].T
        else:
            sims = np.einsum("nc,nkc->nk", img[:, chans], text[:, :, chans])
        sims = np.maximum(sims, 0.0)
        gt = sims[np.arange(len(labels)), labels]
        out.append(np.mean(gt / (sims.mean(axis=1) + 1e-12)))
    return np.array(out)


@pytest.mark.parametrize("n,k,d,window,per_image", [(37, 5, 24, 8, False), (20, 3, 16, 16, False), (9, 4, 12, 1, False),
                                                     (11, 3, 10, 4, True)])
def test_matches_the_window_by_window_loop(n, k, d, window, per_image):
    g = torch.Generator().manual_seed(n * d + window)
    img = torch.randn(n, d, generator=g)
    text = torch.randn(n, k, d, generator=g) if per_image else torch.randn(k, d, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    ours = channel_importance(img, text, labels, window=window)
    ref = loop_importance(img.double().numpy(), text.double().numpy(), labels.numpy(), window)
    assert ours.shape == (d,)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert ours.std() > 0  # random features: the windows differ


def test_chunked_images_give_the_same_numbers(monkeypatch):
    import dept.channels as channels

    g = torch.Generator().manual_seed(0)
    img, text, labels = torch.randn(50, 16, generator=g), torch.randn(4, 16, generator=g), torch.randint(0, 4, (50,))
    whole = channel_importance(img, text, labels, window=5)
    monkeypatch.setattr(channels, "_CHUNK_ELEMENTS", 4 * (16 + 5) * 3)  # three images per chunk
    torch.testing.assert_close(channel_importance(img, text, labels, window=5), whole)


def test_window_sums_wrap_around():
    x = torch.arange(5.0)
    assert window_sums(x, 2).tolist() == [1.0, 3.0, 5.0, 7.0, 4.0]  # the last window is x[4] + x[0]
    assert window_sums(x, 5).tolist() == [10.0] * 5


def one_channel_signal(d: int, b: float, n_per_class: int = 3):
    """Two classes told apart by channel 0 alone (+1 / -1); every other channel holds the same value b in every
    image and text (shared, no class signal)."""
    text = torch.full((2, d), b)
    text[0, 0], text[1, 0] = 1.0, -1.0
    labels = torch.tensor([0, 1] * n_per_class)
    img = text[labels].clone()
    return img, text, labels


def test_one_channel_carrying_all_the_class_signal():
    d, w, b = 16, 4, 0.2
    img, text, labels = one_channel_signal(d, b)
    ci = channel_importance(img, text, labels, window=w)
    # A window without channel 0: every class is as similar as the true one, CI = 1. A window with it and m = w - 1
    # shared channels: sim_true = 1 + m b^2, sim_other = max(0, m b^2 - 1) = 0 (m b^2 = 0.12): CI = 2.
    with_channel_0 = {(0 - j) % d for j in range(w)}  # the windows starting at 13, 14, 15, 0
    expected = torch.tensor([2.0 if s in with_channel_0 else 1.0 for s in range(d)])
    torch.testing.assert_close(ci, expected)


def test_base_signal_in_one_channel_new_in_another_gives_the_ratio_by_window():
    d, w = 16, 4
    base_img, base_text, base_labels = one_channel_signal(d, 0.2)
    new_img, new_text, new_labels = (x.roll(8, dims=-1) if x.dim() > 1 else x for x in one_channel_signal(d, 0.2))
    ci = base_new_channel_importance(base_img, base_labels, base_text, new_img, new_labels, new_text, window=w)
    ratio = ci.ratio
    assert set(torch.nonzero(ratio > 1.5).flatten().tolist()) == {13, 14, 15, 0}  # base's channel 0 only
    assert set(torch.nonzero(ratio < 0.75).flatten().tolist()) == {5, 6, 7, 8}  # new's channel 8 only
    assert ci.summary()["ratio_above_1"] == pytest.approx(4 / 16)
    assert ci.summary()["ratio_mean"] == pytest.approx((4 * 2 + 4 * 0.5 + 8) / 16)


def test_bad_shapes_and_windows_are_one_line_errors():
    img, text, labels = torch.randn(4, 8), torch.randn(3, 8), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="window must be 1..8"):
        channel_importance(img, text, labels, window=9)
    with pytest.raises(ValueError, match="text features must be"):
        channel_importance(img, torch.randn(3, 7), labels)
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        channel_importance(img, text, torch.tensor([0, 1, 3, 0]), window=2)
    with pytest.raises(ValueError, match="no images"):
        channel_importance(torch.randn(0, 8), text, torch.zeros(0, dtype=torch.long), window=2)


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_learner_text_features_are_the_itm_heads(clip, method):
    """The shared-space text features a learner scores new classes with (ITM logits / tau), per image for CoCoOp."""
    learner = build_learner(method, clip, BASE, dept=DePTConfig(), seed=1)
    img = torch.randn(5, clip.embed_dim)
    text = learner_text_features(learner, BASE[:3], img, batch_size=2)
    assert text.shape == ((5, 3, clip.embed_dim) if method == "cocoop" else (3, clip.embed_dim))
    with torch.no_grad():
        logits = learner.itm_logits(img, BASE[:3])
    torch.testing.assert_close(learner.itm_logits_from(img, text), logits, rtol=1e-4, atol=1e-4)


def test_a_window_where_no_new_image_matches_its_class_has_no_ratio():
    d, w = 8, 2
    base_img, base_text, base_labels = one_channel_signal(d, 0.2)
    # New classes told apart on channels 0-3; on channels 4-7 every image is anti-aligned with every text, so the
    # windows 4-5, 5-6, 6-7 give no new image a positive similarity: CI new is 0 there.
    new_text = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    new_labels = torch.tensor([0, 1] * 3)
    new_img = new_text[new_labels].clone()
    new_img[:, 4:] = -1.0
    ci = base_new_channel_importance(base_img, base_labels, base_text, new_img, new_labels, new_text, window=w)
    assert (ci.new[4:7] == 0).all() and (ci.new[:3] > 0).all()
    s = ci.summary()
    assert s["ratio_undefined"] == float((~torch.isfinite(ci.ratio)).sum()) >= 3
    assert s["ratio_mean"] == pytest.approx(float(ci.ratio[torch.isfinite(ci.ratio)].mean()))
    assert s["ratio_above_1"] == pytest.approx(float((ci.base > ci.new).double().mean()))
