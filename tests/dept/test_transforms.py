"""The training-view augmentation is deterministic per (seed, image, view) and follows the crop recipe; the test
transform is open_clip's."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dept import transforms
from dept.transforms import CROP_RATIO, CROP_SCALE, describe_train_view, sample_crop, train_view, view_generator

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8))


def view(img, **kw):
    args = dict(image_size=32, mean=MEAN, std=STD, seed=1, image_id="a/b.png", view=1)
    args.update(kw)
    return train_view(img, **args)


def test_view_is_deterministic_and_shaped(image):
    a, b = view(image), view(image)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)


@pytest.mark.parametrize("change", [{"view": 2}, {"seed": 2}, {"image_id": "a/c.png"}])
def test_view_changes_with_seed_image_and_view(image, change):
    assert not torch.allclose(view(image), view(image, **change))


def test_views_differ_from_each_other(image):
    views = torch.stack([view(image, view=v) for v in range(1, 9)])
    flat = views.flatten(1)
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            assert not torch.allclose(flat[i], flat[j]), (i, j)


def test_view_is_stable_across_processes(image, tmp_path):
    """Python's hash() is salted per process; the seed must not depend on it."""
    path = tmp_path / "img.png"
    image.save(path)
    code = (
        "import sys; from PIL import Image; from dept.transforms import train_view;"
        f"t = train_view(Image.open({str(path)!r}), image_size=32, mean={MEAN}, std={STD}, seed=1, image_id='a/b.png', view=1);"
        "print(repr(float(t.double().sum())), repr(float(t[0, 3, 5])))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    here = view(Image.open(path))
    assert float(out[0]) == float(here.double().sum()) and float(out[1]) == float(here[0, 3, 5])


def test_crop_boxes_follow_scale_and_ratio():
    width, height = 64, 48
    fits = 0
    for k in range(300):
        box = sample_crop(width, height, view_generator(0, f"img{k}", 1))
        assert 0 <= box.top and box.top + box.height <= height
        assert 0 <= box.left and box.left + box.width <= width
        frac = box.width * box.height / (width * height)
        # Rounding to whole pixels moves area and ratio a little off the sampled values.
        assert CROP_SCALE[0] * 0.8 <= frac <= 1.0
        if box.width != width or box.height != height:
            fits += 1
            assert CROP_RATIO[0] * 0.85 <= box.width / box.height <= CROP_RATIO[1] * 1.15
    assert fits > 250  # a 4:3 image almost always gets a random crop, not the fallback


def test_crop_fallback_clamps_aspect_ratio():
    # A 100:1 strip: no random box with aspect in [3/4, 4/3] covering >= 8% fits, so the centred fallback is used.
    box = sample_crop(1000, 10, view_generator(0, "strip", 1))
    assert box.height == 10 and box.width == round(10 * CROP_RATIO[1])
    assert box.left == (1000 - box.width) // 2 and box.top == 0


def test_flip_happens_about_half_the_time(image):
    """Compare each view with the unflipped crop rebuilt from the same generator stream."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    flips = 0
    n = 60
    for v in range(1, n + 1):
        g = view_generator(3, "x", v)
        box = sample_crop(image.width, image.height, g)
        crop = F.resized_crop(image, box.top, box.left, box.height, box.width, [32, 32],
                              interpolation=InterpolationMode.BICUBIC)
        plain = F.normalize(F.to_tensor(crop), MEAN, STD)
        got = train_view(image, image_size=32, mean=MEAN, std=STD, seed=3, image_id="x", view=v)
        if torch.equal(got, plain):
            continue
        assert torch.equal(got, torch.flip(plain, dims=[2]))
        flips += 1
    assert 0.25 * n < flips < 0.75 * n


def test_test_transform_is_the_models_preprocess(image, tiny_clip_checkpoint):
    from dept.clip import load_clip

    clip = load_clip("dept-tiny-vit", str(tiny_clip_checkpoint))
    ours = transforms.test_transform(clip.image_size, clip.mean, clip.std)(image)
    assert torch.equal(ours, clip.preprocess_test(image))
    assert ours.shape == (3, 32, 32)
    assert math.isclose(float(ours.mean()), float(clip.preprocess_test(image).mean()))


def test_crop_scale_min_bounds_the_crop_area_and_defaults_to_the_papers():
    from pipelines.featurize import FeaturizeConfig

    assert FeaturizeConfig.crop_scale_min == CROP_SCALE[0] == 0.08
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    g = lambda v: view_generator(0, "a.png", v)  # noqa: E731
    small = [sample_crop(64, 64, g(v)) for v in range(200)]
    large = [sample_crop(64, 64, g(v), scale=(0.5, 1.0)) for v in range(200)]
    assert min(b.height * b.width for b in small) < 0.2 * 64 * 64
    assert min(b.height * b.width for b in large) >= 0.45 * 64 * 64  # rounding of the sides
    a = train_view(img, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, seed=0, image_id="a.png", view=1)
    b = train_view(img, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, seed=0, image_id="a.png", view=1,
                   crop_scale_min=0.08)
    c = train_view(img, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, seed=0, image_id="a.png", view=1,
                   crop_scale_min=0.9)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert describe_train_view(0, 0.5)["scale"] == [0.5, 1.0] and describe_train_view(0)["scale"] == [0.08, 1.0]
