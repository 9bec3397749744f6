"""Vectorised drawing of the miniature's images: one coloured shape on a textured background, 32 x 32 RGB.

A batch of scenes is drawn at once with numpy on a 2x supersampled grid and box-averaged down (anti-aliased
edges and stripes). Everything random is drawn from a ``numpy.random.Generator`` the caller passes in, so a
batch is a pure function of that generator's seed.

Pretraining scenes (``sample_pretrain_scenes``): grey plain / striped / dotted backgrounds, opaque shapes, light
noise. Downstream scenes (``sample_downstream_scenes``): a shifted domain — checkered and blotchy backgrounds
pretraining never shows, in tinted colours, semi-transparent shapes, a per-image colour cast, stronger noise
and rotations up to 30 degrees (15 in pretraining). Placement and sizes are the same in both. The transfer suite
adds sketches (outlines only), renditions (patterned fills) and hard examples (``sample_sketch_scenes`` etc.).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from dept.miniature.world import BACKGROUNDS, COLOUR_RGB, SHAPES, composition_index

IMAGE_SIZE = 32
SUPERSAMPLE = 2

#: Shape radius ranges in pixels (of the 32 px image) for "small" and "large".
RADIUS = {0: (4.5, 6.5), 1: (8.5, 11.0)}
#: Anchor coordinates (pixels) of shape centres, on both axes, and the jitter around them.
ANCHORS = np.array([8.0, 16.0, 24.0])
JITTER = 1.0


@dataclass
class Scenes:
    """Parameters of ``n`` images; every field is an array with ``n`` rows."""

    shape: np.ndarray  # [n] int, index into SHAPES
    colour: np.ndarray  # [n] int, index into COLOURS (the class colour; ``rgb`` holds the jittered value)
    rgb: np.ndarray  # [n, 3] float, object colour
    size: np.ndarray  # [n] int, 0 small / 1 large
    radius: np.ndarray  # [n] float, pixels
    cx: np.ndarray  # [n] float, pixels
    cy: np.ndarray  # [n] float, pixels
    angle: np.ndarray  # [n] float, radians
    position: np.ndarray  # [n] int, index into world.POSITIONS: anchor row * 3 + anchor column
    background: np.ndarray  # [n] int, index into world.BACKGROUNDS
    bg_a: np.ndarray  # [n, 3] float, background colour
    bg_b: np.ndarray  # [n, 3] float, pattern colour
    period: np.ndarray  # [n] float, pattern period in pixels
    phase: np.ndarray  # [n, 2] float, pattern offset in pixels
    orient: np.ndarray  # [n] int, stripe orientation (0 vertical, 1 horizontal, 2 / 3 diagonals)
    blotch: np.ndarray  # [n, 5, 5] float, coarse noise grid of the blotchy background
    alpha: np.ndarray  # [n] float, shape opacity
    cast: np.ndarray  # [n, 3] float, per-channel gain over the whole image
    noise: np.ndarray  # [n] float, std of per-pixel Gaussian noise (0..255 scale)
    # Renditions for the transfer suite (None: a filled, solid-coloured shape, as in every other scene).
    outline: np.ndarray | None = None  # [n] float, contour width in pixels: only the shape's outline is drawn
    fill_kind: np.ndarray | None = None  # [n] int, index into BACKGROUNDS: the pattern of a two-colour fill
    fill_rgb: np.ndarray | None = None  # [n, 3] float, the fill pattern's second colour

    def __len__(self) -> int:
        return len(self.shape)


# -- shapes -----------------------------------------------------------------------------------------------------
def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, first_vertex: float) -> np.ndarray:
    """Inside a regular polygon with unit circumradius and a vertex at angle ``first_vertex``."""
    sector = 2.0 * math.pi / sides
    phi = np.mod(np.arctan2(v, u) - first_vertex, sector) - sector / 2.0
    return np.hypot(u, v) * np.cos(phi) <= math.cos(math.pi / sides)


def _star(u: np.ndarray, v: np.ndarray, points: int = 5, inner: float = 0.45) -> np.ndarray:
    """Inside a star with straight edges between outer vertices (radius 1) and inner vertices (``inner``)."""
    half = math.pi / points
    a = np.mod(np.arctan2(v, u) + math.pi / 2.0, 2.0 * half)  # 0 at an outer vertex; first vertex points up
    a = np.minimum(a, 2.0 * half - a)  # by symmetry, 0 .. half
    # The edge from the outer vertex (1, 0) to the inner vertex (inner*cos(half), inner*sin(half)), as n.x = d.
    ex, ey = inner * math.cos(half) - 1.0, inner * math.sin(half)
    nx, ny = ey, -ex
    d = nx * 1.0
    boundary = d / (nx * np.cos(a) + ny * np.sin(a))
    return np.hypot(u, v) <= boundary


def shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of ``SHAPES[shape]`` in shape-local coordinates (radius 1, y pointing down)."""
    name = SHAPES[shape]
    if name == "circle":
        return u * u + v * v <= 0.9**2
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.78
    if name == "triangle":
        return _regular_polygon(u, v + 0.15, 3, -math.pi / 2.0)  # nudged down: its centroid sits at the centre
    if name == "star":
        return _star(u, v)
    if name == "hexagon":
        return _regular_polygon(u, v, 6, 0.0)
    if name == "diamond":
        return np.abs(u) / 0.62 + np.abs(v) <= 1.0
    if name == "cross":
        a, b = np.abs(u), np.abs(v)
        return ((a <= 0.3) & (b <= 0.95)) | ((b <= 0.3) & (a <= 0.95))
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    raise ValueError(f"unknown shape {name!r}")


# -- drawing ----------------------------------------------------------------------------------------------------
def _grid(size: int, ss: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size * ss, dtype=np.float32) + 0.5) / ss
    return c[None, :], c[:, None]  # x [1, W], y [H, 1]


def _pattern(s: Scenes, idx: np.ndarray, kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pattern weight in [0, 1] ([m, H, W]) of the background kind ``kind`` for scenes ``idx``."""
    p = s.period[idx].astype(np.float32)[:, None, None]
    px = x[None] + s.phase[idx, 0].astype(np.float32)[:, None, None]
    py = y[None] + s.phase[idx, 1].astype(np.float32)[:, None, None]
    if kind == "striped":
        # coordinate across the stripes: x (vertical stripes), y (horizontal), or one of the diagonals
        o = s.orient[idx]
        cx = np.array([1.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)], dtype=np.float32)[o][:, None, None]
        cy = np.array([0.0, 1.0, math.sqrt(0.5), -math.sqrt(0.5)], dtype=np.float32)[o][:, None, None]
        t = px * cx + py * cy
        return (np.mod(t, p) < p / 2).astype(np.float32)
    if kind == "dotted":
        dx = np.mod(px, p) - p / 2
        dy = np.mod(py, p) - p / 2
        return (dx * dx + dy * dy <= (0.3 * p) ** 2).astype(np.float32)
    if kind == "checkered":
        return (np.mod(np.floor(px / p) + np.floor(py / p), 2) == 1).astype(np.float32)
    if kind == "blotchy":
        g = s.blotch[idx].astype(np.float32)  # [m, 5, 5], bilinearly interpolated over the image
        cells = g.shape[1] - 1
        gx = np.clip(x[0] / IMAGE_SIZE * cells, 0, cells - 1e-4)
        gy = np.clip(y[:, 0] / IMAGE_SIZE * cells, 0, cells - 1e-4)
        ix, iy = gx.astype(np.int64), gy.astype(np.int64)
        fx, fy = (gx - ix)[None, None, :], (gy - iy)[None, :, None]
        rows0, rows1 = g[:, iy, :], g[:, iy + 1, :]  # [m, H, 5]
        top = rows0[:, :, ix] * (1 - fx) + rows0[:, :, ix + 1] * fx
        bottom = rows1[:, :, ix] * (1 - fx) + rows1[:, :, ix + 1] * fx
        value = top * (1 - fy) + bottom * fy
        return np.clip((value - 0.5) * 4.0 + 0.5, 0.0, 1.0).astype(np.float32)
    raise ValueError(f"unknown background {kind!r}")


def _contour(mask: np.ndarray, width: np.ndarray, supersample: int) -> np.ndarray:
    """The outline of each mask ([n, H, W], 0/1 on the supersampled grid): the mask minus the mask eroded by a
    disc of ``width`` pixels (at least one sub-pixel). Outside the image counts as the edge pixel's value."""
    out = np.empty_like(mask)
    radius = np.maximum(1, np.rint(width * supersample)).astype(np.int64)
    h, w = mask.shape[1:]
    for k in np.unique(radius):
        idx = np.flatnonzero(radius == k)
        padded = np.pad(mask[idx], ((0, 0), (k, k), (k, k)), mode="edge")
        eroded = mask[idx].copy()
        for dy in range(-k, k + 1):
            for dx in range(-k, k + 1):
                if dy * dy + dx * dx <= k * k:
                    np.minimum(eroded, padded[:, k + dy : k + dy + h, k + dx : k + dx + w], out=eroded)
        out[idx] = mask[idx] - eroded
    return out


def _downsample(x: np.ndarray, k: int) -> np.ndarray:
    """Box-average ``[n, H, W]`` by ``k`` on both axes."""
    if k == 1:
        return x
    out = x[:, 0::k, 0::k].copy()
    for i in range(k):
        for j in range(k):
            if i or j:
                out += x[:, i::k, j::k]
    return out * (1.0 / (k * k))


def render(s: Scenes, size: int = IMAGE_SIZE, supersample: int = SUPERSAMPLE, noise_rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw the scenes: uint8 ``[n, size, size, 3]``. ``noise_rng`` draws the pixel noise (none when ``None``)."""
    n = len(s)
    x, y = _grid(size, supersample)
    hw = size * supersample
    weight = np.zeros((n, hw, hw), dtype=np.float32)  # background pattern weight
    for k, kind in enumerate(BACKGROUNDS):
        idx = np.flatnonzero(s.background == k)
        if len(idx) and kind != "plain":
            weight[idx] = _pattern(s, idx, kind, x, y)
    mask = np.zeros((n, hw, hw), dtype=np.float32)
    cos = np.cos(s.angle).astype(np.float32)[:, None, None]
    sin = np.sin(s.angle).astype(np.float32)[:, None, None]
    inv_r = (1.0 / s.radius).astype(np.float32)[:, None, None]
    dx = (x[None] - s.cx.astype(np.float32)[:, None, None]) * inv_r
    dy = (y[None] - s.cy.astype(np.float32)[:, None, None]) * inv_r
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    for k in range(len(SHAPES)):
        idx = np.flatnonzero(s.shape == k)
        if len(idx):
            mask[idx] = shape_mask(k, u[idx], v[idx])
    if s.outline is not None:
        mask = _contour(mask, s.outline, supersample)
    # The box average is linear, so the composite can be formed at the output resolution from the averages of
    # the pattern weight w, the shape mask m and their product: 4x fewer RGB pixels to blend.
    w, m, mw = _downsample(weight, supersample), _downsample(mask, supersample), _downsample(mask * weight, supersample)
    f32 = np.float32
    a = s.alpha.astype(f32)[:, None, None, None]
    bg_a = s.bg_a.astype(f32)[:, None, None, :]
    bg_diff = s.bg_b.astype(f32)[:, None, None, :] - bg_a
    rgb = s.rgb.astype(f32)[:, None, None, :]
    m, w, mw = m[..., None], w[..., None], mw[..., None]
    # pixel = (1 - a m) (bg_a + w bg_diff) + a m rgb, averaged over each output pixel's sub-samples
    img = bg_a * (1 - a * m) + bg_diff * (w - a * mw) + rgb * (a * m)
    if s.fill_kind is not None:  # inside the shape, the fill pattern's weight moves rgb to fill_rgb
        fill = np.zeros_like(mask)
        for k, kind in enumerate(BACKGROUNDS):
            idx = np.flatnonzero(s.fill_kind == k)
            if len(idx) and kind != "plain":
                fill[idx] = _pattern(s, idx, kind, x, y)
        mf = _downsample(mask * fill, supersample)[..., None]
        img = img + (s.fill_rgb.astype(f32)[:, None, None, :] - rgb) * (a * mf)
    img = img * s.cast.astype(f32)[:, None, None, :]
    if noise_rng is not None:
        img = img + noise_rng.standard_normal(img.shape, dtype=np.float32) * s.noise[:, None, None, None].astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# -- sampling ---------------------------------------------------------------------------------------------------
def _placement(rng: np.random.Generator, n: int, max_angle: float) -> dict[str, np.ndarray]:
    """Size, position and rotation. Small shapes sit on a 3 x 3 grid of anchors (8, 16, 24 px on each axis),
    large ones at the centre, each jittered by up to ``JITTER`` px. The anchors lie on the 8 px patch grid: a
    from-scratch ViT of this size learns translation slowly, and with free placement it did not learn shapes
    within a CPU pretraining budget (supervised 8-way shape accuracy after 150 steps: ~20 % with free placement,
    ~60 % on the anchor grid), so the world is built to be learnable in minutes."""
    size = rng.integers(0, 2, n)
    lo = np.array([RADIUS[0][0], RADIUS[1][0]])[size]
    hi = np.array([RADIUS[0][1], RADIUS[1][1]])[size]
    radius = lo + (hi - lo) * rng.random(n)
    small = size == 0
    gx = np.where(small, rng.integers(0, 3, n), 1)
    gy = np.where(small, rng.integers(0, 3, n), 1)
    cx = ANCHORS[gx] + rng.uniform(-JITTER, JITTER, n)
    cy = ANCHORS[gy] + rng.uniform(-JITTER, JITTER, n)
    angle = rng.uniform(-max_angle, max_angle, n)
    return {"size": size, "radius": radius, "cx": cx, "cy": cy, "angle": angle, "position": gy * 3 + gx}


def _pattern_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "period": rng.uniform(4.0, 8.0, n),
        "phase": rng.uniform(0.0, 8.0, (n, 2)),
        "orient": rng.integers(0, 4, n),
        "blotch": rng.random((n, 5, 5)),
    }


def _object_rgb(rng: np.random.Generator, colour: np.ndarray, jitter: float) -> np.ndarray:
    return np.clip(COLOUR_RGB[colour] + rng.uniform(-jitter, jitter, (len(colour), 3)), 0, 255)


def sample_pretrain_scenes(rng: np.random.Generator, colour: np.ndarray, shape: np.ndarray) -> Scenes:
    """Pretraining scenes for the given compositions: grey plain / striped / dotted backgrounds, opaque shapes."""
    n = len(colour)
    place = _placement(rng, n, max_angle=math.radians(15))
    pattern = _pattern_params(rng, n)
    grey = rng.uniform(70.0, 180.0, n)
    contrast = rng.uniform(25.0, 50.0, n) * rng.choice([-1.0, 1.0], n)
    return Scenes(
        shape=np.asarray(shape), colour=np.asarray(colour), rgb=_object_rgb(rng, np.asarray(colour), 15.0),
        background=rng.choice(np.array([0, 1, 2]), n),
        bg_a=np.repeat(grey[:, None], 3, axis=1), bg_b=np.repeat(np.clip(grey + contrast, 0, 255)[:, None], 3, axis=1),
        alpha=np.ones(n), cast=np.ones((n, 3)), noise=rng.uniform(0.0, 6.0, n), **place, **pattern,
    )


@dataclass(frozen=True)
class Shift:
    """How far the downstream domain is from pretraining. Defaults: the shipped downstream dataset."""

    tint: float = 45.0  # background colours: grey plus a per-channel offset up to this size
    alpha: tuple[float, float] = (0.6, 0.9)  # shape opacity range
    cast: float = 0.2  # per-channel gain in 1 +- cast
    noise: tuple[float, float] = (8.0, 16.0)  # pixel-noise std range
    max_angle_deg: float = 30.0
    # A class-specific shift: every image of a class has its object colour moved by the same RGB offset (up to
    # this size per channel, fixed per colour x shape). Only a class's own shots reveal its offset, so what is
    # learned on base classes does not carry to new ones. 0: none (the shipped dataset).
    class_tint: float = 0.0


#: Seeds the per-class offsets of ``Shift.class_tint`` (independent of the scene streams, so 0 changes nothing).
CLASS_TINT_STREAM = 5


def class_tint_offsets(colour: np.ndarray, shape: np.ndarray, size: float) -> np.ndarray:
    """``[n, 3]`` RGB offsets, the same for every image of one composition (and for every data seed)."""
    keys = composition_index(np.asarray(colour), np.asarray(shape))
    table = {int(k): np.random.default_rng([CLASS_TINT_STREAM, int(k)]).uniform(-size, size, 3) for k in np.unique(keys)}
    return np.stack([table[int(k)] for k in keys]) if len(keys) else np.zeros((0, 3))


def sample_downstream_scenes(rng: np.random.Generator, colour: np.ndarray, shape: np.ndarray, shift: Shift = Shift()) -> Scenes:
    """Downstream scenes: checkered / blotchy backgrounds in tinted colours (never seen in pretraining),
    semi-transparent shapes, a colour cast over the whole image and stronger noise."""
    n = len(colour)
    place = _placement(rng, n, max_angle=math.radians(shift.max_angle_deg))
    pattern = _pattern_params(rng, n)
    grey = rng.uniform(70.0, 180.0, (n, 1))
    bg_a = np.clip(grey + rng.uniform(-shift.tint, shift.tint, (n, 3)), 0, 255)
    bg_b = np.clip(bg_a + rng.uniform(25.0, 50.0, (n, 1)) * rng.choice([-1.0, 1.0], (n, 1)), 0, 255)
    rgb = _object_rgb(rng, np.asarray(colour), 15.0)
    if shift.class_tint > 0:
        rgb = np.clip(rgb + class_tint_offsets(colour, shape, shift.class_tint), 0, 255)
    return Scenes(
        shape=np.asarray(shape), colour=np.asarray(colour), rgb=rgb,
        background=rng.choice(np.array([3, 4]), n), bg_a=bg_a, bg_b=bg_b,
        alpha=rng.uniform(*shift.alpha, n), cast=rng.uniform(1 - shift.cast, 1 + shift.cast, (n, 3)),
        noise=rng.uniform(*shift.noise, n), **place, **pattern,
    )


# -- the transfer suite's domains (see dept.miniature.transfer) ---------------------------------------------------
def sample_sketch_scenes(rng: np.random.Generator, colour: np.ndarray, shape: np.ndarray) -> Scenes:
    """Sketches (what ImageNet-Sketch is to ImageNet): only the shape's outline, a thin opaque contour in the
    class colour, on a plain light-grey background; no texture, no colour cast, light noise."""
    n = len(colour)
    place = _placement(rng, n, max_angle=math.radians(30))
    paper = np.repeat(rng.uniform(205.0, 245.0, (n, 1)), 3, axis=1)
    return Scenes(
        shape=np.asarray(shape), colour=np.asarray(colour), rgb=_object_rgb(rng, np.asarray(colour), 15.0),
        background=np.zeros(n, dtype=np.int64), bg_a=paper, bg_b=paper, alpha=np.ones(n), cast=np.ones((n, 3)),
        noise=rng.uniform(0.0, 4.0, n), outline=rng.uniform(1.0, 1.5, n), **place, **_pattern_params(rng, n),
    )


def sample_rendition_scenes(rng: np.random.Generator, colour: np.ndarray, shape: np.ndarray) -> Scenes:
    """Renditions (what ImageNet-R is): the shape filled with stripes or dots of its class colour and a light or
    dark version of it, on a plain background of any colour, under a colour cast."""
    n = len(colour)
    place = _placement(rng, n, max_angle=math.radians(30))
    rgb = _object_rgb(rng, np.asarray(colour), 15.0)
    towards = np.where(rng.random((n, 1)) < 0.5, 255.0, 0.0)  # the second colour: the class colour lightened or darkened
    backdrop = rng.uniform(40.0, 220.0, (n, 3))
    return Scenes(
        shape=np.asarray(shape), colour=np.asarray(colour), rgb=rgb, background=np.zeros(n, dtype=np.int64),
        bg_a=backdrop, bg_b=backdrop, alpha=rng.uniform(0.85, 1.0, n), cast=rng.uniform(0.8, 1.2, (n, 3)),
        noise=rng.uniform(4.0, 10.0, n), fill_kind=rng.choice(np.array([1, 2]), n), fill_rgb=rgb + 0.6 * (towards - rgb),
        **place, **_pattern_params(rng, n),
    )


#: Hard examples (``sample_hard_scenes``): the downstream domain with fainter shapes and heavier noise. Softened
#: from opacity 0.35-0.55, noise 20-32, radius 3.5-5 px, where the shipped CLIP's zero-shot was only 2x chance.
HARD_SHIFT = Shift(alpha=(0.45, 0.65), noise=(16.0, 26.0))
HARD_RADIUS = (4.0, 5.5)


def sample_hard_scenes(rng: np.random.Generator, colour: np.ndarray, shape: np.ndarray) -> Scenes:
    """Hard examples (what ImageNet-A is): downstream scenes with every shape small (``HARD_RADIUS``, at its
    drawn position), faint (``HARD_SHIFT.alpha``) and under heavy noise."""
    s = sample_downstream_scenes(rng, colour, shape, HARD_SHIFT)
    return replace(s, size=np.zeros(len(s), dtype=np.int64), radius=rng.uniform(*HARD_RADIUS, len(s)))
