"""A seeded synthetic set of paired chest radiographs and reports.

Every image is drawn from simple anatomy (body, lungs, mediastinum and heart,
ribs, clavicles, spine, trachea) with findings painted on top, and every report
is written from the same findings (or none: an image-only set). Nothing is random outside
``np.random.default_rng`` streams seeded from ``(seed, index)``, so a given
seed always gives the same bytes, and record ``i`` does not depend on ``n``.

Conventions: images follow the radiographic convention (the patient's right is
on the image's left). Drawing happens in canonical coordinates where the image
spans ``[0, 1]``; a per-study shift, scale and small rotation map them to pixels.
Findings with a region (``REGION_FINDINGS``) write their union to a binary mask;
cardiomegaly and support devices have no mask. A finding labelled ``-1`` is drawn
faintly and hedged in the report ("possible", "cannot exclude"); ``no_finding``
is ``1`` only when every other finding is ``0``.

Acquisition: the standard one draws each study's exposure (contrast, brightness, gamma)
from fixed ranges. Another :class:`~adaptor.config.synth.Acquisition` (``"shifted"``, or
your own) blurs, resamples and adds noise to the exposure before the display curve, bends
that curve, and changes how many studies have findings: a second site for transfer
studies. Labels and masks mean the same in every acquisition; its noise has its own
stream, so the standard acquisition is unchanged byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from adaptor import remote
from adaptor.config.synth import (
    ABNORMAL_SHARE,
    ACQUISITIONS,
    MAX_SIZE,
    MIN_SIZE,
    Acquisition,
    SynthOptions,
)
from adaptor.data.records import SPLITS, Record, write_records_jsonl

FINDINGS: tuple[str, ...] = (
    "opacity",
    "cardiomegaly",
    "pleural_effusion",
    "pneumothorax",
    "nodule",
    "support_device",
    "no_finding",
)
REGION_FINDINGS: frozenset[str] = frozenset(
    {"opacity", "pleural_effusion", "pneumothorax", "nodule"}
)
_DEFAULT = SynthOptions()

# Relative frequency of each finding among studies that have any; with ~1.05
# findings per study on average these give prevalences of roughly 12-23 %.
_FINDING_WEIGHTS: dict[str, float] = {
    "opacity": 0.22,
    "cardiomegaly": 0.16,
    "pleural_effusion": 0.18,
    "pneumothorax": 0.12,
    "nodule": 0.14,
    "support_device": 0.18,
}
_N_FINDINGS_P = (0.35, 0.35, 0.20, 0.10)  # P(0), P(1), P(2), P(3) findings per study
_UNCERTAIN_P = 0.04  # share of present findings (devices excepted) that are hedged
_STUDIES_PER_PATIENT_P = (0.5, 0.3, 0.2)  # P(1), P(2), P(3) studies per patient
_SPLIT_CUTS = (0.70, 0.85)  # train below the first, val below the second, test above

_EXPOSURE = ((0.85, 1.15), (-0.05, 0.05), (0.85, 1.15))  # contrast, brightness, gamma ranges
_STREAM_RECORD, _STREAM_PATIENT_SIZES, _STREAM_ANATOMY, _STREAM_SPLIT = 0, 1, 2, 3
_STREAM_ACQUISITION = 4  # a non-standard acquisition's noise (per record)


# --------------------------------------------------------------------------- geometry


@dataclass
class _Lung:
    """One lung field in canonical coordinates; ``s`` is -1 (patient right) or +1."""

    s: int
    cx: float
    cy: float
    rx: float
    ry: float
    flare: float  # how much wider the base is than the apex
    dome_y: float  # height of the costophrenic sulcus
    dome_h: float  # how far the hemidiaphragm domes up above the sulcus
    dome_cx: float
    dome_w: float


@dataclass
class _Anatomy:
    """A patient's habitus plus the study's placement on the detector."""

    lungs: dict[str, _Lung]
    body_w: float
    heart_cy: float
    heart_ry: float
    ctr: float
    rib_spacing: float
    rib_top: float
    rib_phase: float
    air: float
    tissue: float
    clavicles: bool
    gastric_bubble: bool
    arms: bool
    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    angle: float = 0.0


@dataclass
class _Finding:
    """One present finding: where it is, how big, and whether it is hedged."""

    name: str
    uncertain: bool = False
    side: str | None = None  # "right" / "left" (patient side)
    zone: str | None = None  # "upper" / "lower"
    size: float = 0.0  # blob radius, CTR, fluid height, collapse fraction or diameter (px)
    devices: tuple[str, ...] = ()


@dataclass
class _Canvas:
    """The layers a study is composed from before exposure is applied."""

    anatomy: _Anatomy
    size: int
    X: np.ndarray
    Y: np.ndarray
    px: float  # one pixel in canonical units
    lung: dict[str, np.ndarray]
    mediast: np.ndarray
    air: np.ndarray
    marks: np.ndarray
    bone_gain: np.ndarray
    extra: np.ndarray
    mask: np.ndarray
    heart: dict[str, float] = field(default_factory=dict)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * z)


@lru_cache(maxsize=4)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(c, c, indexing="ij")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _canonical_grid(size: int, a: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres mapped into canonical coordinates (inverse of shift/scale/rotation)."""
    x, y = _pixel_grid(size)
    dx, dy = x - 0.5 - a.shift[0], y - 0.5 - a.shift[1]
    cos, sin = math.cos(a.angle), math.sin(a.angle)
    return 0.5 + (cos * dx + sin * dy) / a.scale, 0.5 + (-sin * dx + cos * dy) / a.scale


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Unit-variance-ish noise with ``cells`` features across the image (bicubic upsampled)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    up = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    return up / (up.std() + 1e-6)


def _ellipse_r(X: np.ndarray, Y: np.ndarray, cx: float, cy: float, rx, ry) -> np.ndarray:
    return np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2)


def _lung_r(lung: _Lung, X: np.ndarray, Y: np.ndarray, shrink: float = 0.0) -> np.ndarray:
    """Normalised radius of the lung outline (1 on the border); ``shrink`` collapses it
    towards the hilum and base, keeping the medial border and the base in place."""
    rx, ry = lung.rx * (1 - shrink), lung.ry * (1 - shrink / 2)
    cx, cy = lung.cx - lung.s * lung.rx * shrink, lung.cy + lung.ry * shrink / 2
    rx_y = np.maximum(rx * (1 + lung.flare * (Y - cy) / ry), 0.3 * rx)
    return _ellipse_r(X, Y, cx, cy, rx_y, ry)


def _dome(lung: _Lung, X: np.ndarray) -> np.ndarray:
    """Height of the hemidiaphragm under each column (smaller is higher)."""
    return lung.dome_y - lung.dome_h * np.exp(-(((X - lung.dome_cx) / lung.dome_w) ** 2))


def _lung_field(lung: _Lung, X: np.ndarray, Y: np.ndarray, px: float) -> np.ndarray:
    edge = 1.5 * px
    inside = _sigmoid((1 - _lung_r(lung, X, Y)) * min(lung.rx, lung.ry) / edge)
    return inside * _sigmoid((_dome(lung, X) - Y) / edge)


def _thorax_width(a: _Anatomy) -> float:
    """Widest distance between the lateral lung borders (the CTR denominator)."""
    ys = np.linspace(0.3, 0.75, 64)
    edges = []
    for lung in a.lungs.values():
        t = np.clip(1 - ((ys - lung.cy) / lung.ry) ** 2, 0, None)
        rx_y = np.maximum(lung.rx * (1 + lung.flare * (ys - lung.cy) / lung.ry), 0.3 * lung.rx)
        edges.append(lung.cx + lung.s * rx_y * np.sqrt(t))
    return float(np.max(edges[1] - edges[0]))


def _segment_distance(X: np.ndarray, Y: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    d = q - p
    t = np.clip(((X - p[0]) * d[0] + (Y - p[1]) * d[1]) / max(float(d @ d), 1e-12), 0, 1)
    return np.hypot(X - p[0] - t * d[0], Y - p[1] - t * d[1])


def _polyline_distance(X: np.ndarray, Y: np.ndarray, points: np.ndarray) -> np.ndarray:
    dist = _segment_distance(X, Y, points[0], points[1])
    for p, q in zip(points[1:-1], points[2:], strict=True):
        np.minimum(dist, _segment_distance(X, Y, p, q), out=dist)
    return dist


def _bezier(*controls: tuple[float, float], n: int = 10) -> np.ndarray:
    """Points along a quadratic Bezier curve through three control points."""
    p0, p1, p2 = (np.asarray(c, dtype=np.float32) for c in controls)
    t = np.linspace(0, 1, n, dtype=np.float32)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _window(c: _Canvas, points: np.ndarray, margin: float) -> tuple[slice, slice]:
    """Pixel rows and columns that cover canonical ``points`` plus ``margin``."""
    a = c.anatomy
    cos, sin = math.cos(a.angle), math.sin(a.angle)
    u, v = points[:, 0] - 0.5, points[:, 1] - 0.5
    xs = 0.5 + a.shift[0] + a.scale * (cos * u - sin * v)
    ys = 0.5 + a.shift[1] + a.scale * (sin * u + cos * v)
    m = margin * a.scale

    def span(lo: float, hi: float) -> slice:
        return slice(max(int((lo - m) * c.size) - 1, 0), max(int((hi + m) * c.size) + 2, 0))

    return span(ys.min(), ys.max()), span(xs.min(), xs.max())


def _stroke(c: _Canvas, paths: list[np.ndarray], half_w: float) -> np.ndarray:
    """Soft-edged band of half-width ``half_w`` along polylines, computed in their window."""
    out = np.zeros_like(c.X)
    win = _window(c, np.concatenate(paths), half_w + 3 * c.px)
    X, Y = c.X[win], c.Y[win]
    dist = _polyline_distance(X, Y, paths[0])
    for path in paths[1:]:
        np.minimum(dist, _polyline_distance(X, Y, path), out=dist)
    out[win] = _sigmoid((half_w - dist) / (0.6 * c.px))
    return out


# --------------------------------------------------------------------------- anatomy


def _sample_habitus(rng: np.random.Generator) -> _Anatomy:
    """Patient-level anatomy: every study of a patient shares it."""
    width, height = rng.uniform(0.93, 1.07), rng.uniform(0.93, 1.06)
    lungs = {}
    for side, s in (("right", -1), ("left", 1)):
        rx, ry = 0.135 * width, 0.33 * height
        cx, cy = 0.5 + s * 0.165 * width, 0.43 + rng.uniform(-0.01, 0.01)
        dome_y = cy + ry - 0.04 - (0.02 if side == "right" else 0.0)
        lungs[side] = _Lung(
            s=s,
            cx=cx,
            cy=cy,
            rx=rx,
            ry=ry,
            flare=rng.uniform(0.15, 0.3),
            dome_y=dome_y,
            dome_h=rng.uniform(0.07, 0.1),
            dome_cx=cx - s * 0.15 * rx,
            dome_w=0.55 * rx,
        )
    return _Anatomy(
        lungs=lungs,
        body_w=0.44 * width,
        heart_cy=0.615 + rng.uniform(-0.015, 0.015),
        heart_ry=rng.uniform(0.11, 0.13),
        ctr=rng.uniform(0.38, 0.46),
        rib_spacing=rng.uniform(0.058, 0.068) * height,
        rib_top=0.07 + rng.uniform(-0.01, 0.01),
        rib_phase=rng.uniform(0, 1),
        air=rng.uniform(0.28, 0.34),
        tissue=rng.uniform(0.46, 0.54),
        clavicles=bool(rng.random() < 0.9),
        gastric_bubble=bool(rng.random() < 0.6),
        arms=bool(rng.random() < 0.7),
    )


def _place_study(habitus: _Anatomy, rng: np.random.Generator) -> _Anatomy:
    """The patient's anatomy as positioned for one study."""
    shift = (float(rng.normal(0, 0.015)), float(rng.uniform(-0.025, 0.025)))
    scale, angle = float(rng.uniform(0.92, 1.04)), float(np.deg2rad(rng.uniform(-2.5, 2.5)))
    return replace(habitus, shift=shift, scale=scale, angle=angle)


def _body(c: _Canvas, a: _Anatomy) -> np.ndarray:
    """Soft tissue: trunk with rounded shoulders (thicker centrally), neck and arms."""
    X, Y = c.X, c.Y
    half = a.body_w * (1 - 0.1 * np.clip((Y - 0.7) / 0.3, 0, 1))
    u = np.abs(X - 0.5) / half
    shoulder = np.square(np.square(np.clip((0.6 - Y) / 0.54, 0, None)))
    trunk = _sigmoid((1 - u * u * u - shoulder) / 0.05)
    neck = _sigmoid((0.075 - np.abs(X - 0.5)) / (2 * c.px)) * _sigmoid((0.2 - Y) / 0.02)
    thickness = 0.7 + 0.3 * np.sqrt(np.clip(1 - u**2, 0, 1))
    tissue = np.maximum(trunk * thickness, neck)
    if a.arms:
        gap = np.abs(X - 0.5) - a.body_w - 0.025
        arm = _sigmoid((0.06 - np.abs(gap - 0.06)) / 0.01) * _sigmoid((Y - 0.12) / 0.03)
        tissue = np.maximum(tissue, 0.75 * arm)
    return tissue * a.tissue


def _mediastinum(c: _Canvas, a: _Anatomy, ctr: float) -> np.ndarray:
    """Mediastinal band, aortic knob and heart shadow; records the heart's extent in ``c``."""
    X, Y, edge = c.X, c.Y, 2 * c.px
    half = 0.055 + 0.03 * np.clip((Y - 0.2) / 0.3, 0, 1)
    band = _sigmoid((half - np.abs(X - 0.5)) / edge) * _sigmoid((0.62 - Y) / 0.02)
    knob = _sigmoid((1 - _ellipse_r(X, Y, 0.555, 0.29, 0.038, 0.03)) * 0.03 / edge)
    width = ctr * _thorax_width(a)
    hx, hrx, hry = 0.5 + 0.15 * width, width / 2, a.heart_ry * math.sqrt(ctr / a.ctr)
    heart = _sigmoid((1 - _ellipse_r(X, Y, hx, a.heart_cy, hrx, hry)) * hry / edge)
    c.heart = {"cx": hx, "cy": a.heart_cy, "rx": hrx, "ry": hry}
    return np.maximum(np.maximum(band, knob), heart)


def _vessels(c: _Canvas, a: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Lung markings: ridge-like texture and hila, fading from each hilum to the periphery."""
    ridge = 1 - np.clip(np.abs(_smooth_noise(rng, c.size, 28)), 0, 1)
    dist = np.full_like(c.X, np.inf)
    for lung in a.lungs.values():
        hilum_x = lung.cx - lung.s * 0.55 * lung.rx
        np.minimum(dist, np.hypot(c.X - hilum_x, (c.Y - 0.45) * 0.8), out=dist)
    markings = np.exp(-dist / 0.12) * (0.05 + 0.09 * ridge * ridge * ridge)
    return markings + 0.1 * np.exp(-np.square(dist / 0.045))


def _ribs(c: _Canvas, a: _Anatomy) -> np.ndarray:
    """Posterior ribs arching laterally and down, fainter anterior ribs; clearest over the lungs."""
    X, Y = c.X, c.Y
    u = np.abs(X - 0.5)
    post = (Y - a.rib_top - (-0.3 * u + 2.2 * u**2)) / a.rib_spacing + a.rib_phase
    ant = (Y - a.rib_top - 0.1 - 0.6 * (0.32 - u)) / (1.25 * a.rib_spacing)
    post = 0.5 + 0.5 * np.cos(2 * np.pi * post)
    bands = 0.12 * post * post * post
    bands += 0.04 * (0.5 + 0.5 * np.cos(2 * np.pi * ant)) ** 2
    lateral = _sigmoid((a.body_w - 0.02 - u) / 0.01) * _sigmoid((u - 0.03) / 0.01)
    bottom = max(lung.dome_y for lung in a.lungs.values()) + 0.02
    vertical = _sigmoid((Y - a.rib_top) / 0.01) * _sigmoid((bottom - Y) / 0.02)
    over_lung = (0.25 + 0.75 * np.maximum(*c.lung.values())) * (1 - 0.6 * c.mediast)
    return bands * lateral * vertical * over_lung


def _clavicles(c: _Canvas) -> np.ndarray:
    paths = [
        _bezier((0.5 + s * 0.04, 0.17), (0.5 + s * 0.16, 0.16), (0.5 + s * 0.3, 0.09))
        for s in (-1, 1)
    ]
    return 0.14 * _stroke(c, paths, 0.011)


def _spine_and_airway(c: _Canvas) -> np.ndarray:
    """Spine (faint, with vertebral bodies) and the dark tracheal air column."""
    X, Y = c.X, c.Y
    spine = _sigmoid((0.028 - np.abs(X - 0.5)) / (2 * c.px))
    spine *= 0.05 + 0.03 * (0.5 + 0.5 * np.cos(2 * np.pi * Y / 0.045))
    trachea = np.array([[0.5, -0.05], [0.5, 0.34]], np.float32)
    bronchi = np.array([[0.44, 0.42], [0.5, 0.34], [0.565, 0.41]], np.float32)
    return spine - 0.09 * _stroke(c, [trachea, bronchi], 0.012)


def _gastric_bubble(c: _Canvas, a: _Anatomy) -> np.ndarray:
    lung = a.lungs["left"]
    cy = lung.dome_y + 0.035
    r = _ellipse_r(c.X, c.Y, lung.cx - 0.2 * lung.rx, cy, 0.045, 0.025)
    return 0.12 * _sigmoid((1 - r) * 0.025 / (2 * c.px))


# --------------------------------------------------------------------------- findings


def _draw_opacity(c: _Canvas, a: _Anatomy, f: _Finding, rng: np.random.Generator) -> None:
    """A large soft irregular blob that replaces air in one lung zone."""
    lung = a.lungs[f.side]
    top = lung.cy - lung.ry
    if f.zone == "upper":
        cy = rng.uniform(top + 0.1, lung.cy - 0.03)
    else:
        cy = rng.uniform(lung.cy + 0.06, lung.dome_y - lung.dome_h - 0.01)
    cx = lung.cx + lung.s * rng.uniform(0.0, 0.35) * lung.rx
    r = _ellipse_r(c.X, c.Y, cx, cy, f.size, f.size * rng.uniform(0.8, 1.2))
    r = r + 0.15 * _smooth_noise(rng, c.size, 6)
    blob = _sigmoid((1 - r) / 0.07) * c.lung[f.side]
    c.air *= 1 - (0.45 if f.uncertain else 0.92) * blob
    c.marks *= 1 - 0.5 * blob
    c.mask |= (blob > 0.5) & (c.mediast < 0.5)


def _draw_effusion(c: _Canvas, a: _Anatomy, f: _Finding) -> None:
    """Fluid filling the lung base up to a meniscus that climbs the lateral chest wall."""
    lung = a.lungs[f.side]
    lateral = np.clip((c.X - (lung.cx - lung.s * lung.rx)) * lung.s / (2 * lung.rx), 0, 1)
    level = lung.dome_y - lung.dome_h - f.size - 0.08 * lateral**2
    fluid = _sigmoid((c.Y - level) / (3 * c.px)) * c.lung[f.side]
    c.air *= 1 - (0.5 if f.uncertain else 0.95) * fluid
    c.extra += 0.03 * fluid * np.clip((c.Y - level) / 0.1, 0, 1)
    c.mask |= (fluid > 0.5) & (c.mediast < 0.5)


def _draw_pneumothorax(c: _Canvas, a: _Anatomy, f: _Finding) -> None:
    """Dark, markingless air around a collapsed lung whose edge is a thin pleural line."""
    lung = a.lungs[f.side]
    scale = min(lung.rx, lung.ry)
    outer = _lung_r(lung, c.X, c.Y)
    collapsed = _lung_r(lung, c.X, c.Y, shrink=f.size)
    region = c.lung[f.side] * _sigmoid((collapsed - 1) * scale / c.px)
    gain = 0.4 if f.uncertain else 1.0
    c.air += gain * 0.1 * region
    c.air *= 1 - gain * 0.2 * c.lung[f.side] * (1 - region)
    c.marks *= 1 - region
    c.bone_gain *= 1 - gain * 0.7 * region
    line = np.exp(-(((collapsed - 1) * scale / (0.9 * c.px)) ** 2))
    line *= _sigmoid(((1 - outer) * scale - 2 * c.px) / c.px) * c.lung[f.side]
    c.extra += gain * 0.16 * line
    c.mask |= region > 0.5


def _nodule_centre(
    c: _Canvas, a: _Anatomy, f: _Finding, rng: np.random.Generator
) -> tuple[float, float]:
    """A point well inside the finding's lung zone, clear of the heart, mediastinum and diaphragm."""
    lung = a.lungs[f.side]
    h = c.heart
    upper = f.zone == "upper"
    lo, hi = (lung.cy - 0.75 * lung.ry, lung.cy) if upper else (lung.cy, lung.dome_y - lung.dome_h)
    for _ in range(100):
        x = lung.cx + rng.uniform(-0.85, 0.85) * lung.rx
        y = rng.uniform(lo + 0.02, hi - 0.02)
        inside = _lung_r(lung, np.float32(x), np.float32(y)) < 0.8
        clear = _ellipse_r(x, y, h["cx"], h["cy"], h["rx"], h["ry"]) > 1.2 and abs(x - 0.5) > 0.12
        if inside and clear:
            return x, y
    return lung.cx + lung.s * 0.3 * lung.rx, lung.cy + (-0.3 if upper else 0.3) * lung.ry


def _draw_nodule(c: _Canvas, a: _Anatomy, f: _Finding, rng: np.random.Generator) -> None:
    """A small bright, slightly domed disc."""
    radius = f.size / 2 / 256  # canonical units: the image is 1 wide
    x, y = _nodule_centre(c, a, f, rng)
    r = _ellipse_r(c.X, c.Y, x, y, radius, radius)
    disc = _sigmoid((1 - r) * radius / c.px)
    profile = 0.75 + 0.25 * np.sqrt(np.clip(1 - r**2, 0, 1))
    c.extra += (0.16 if f.uncertain else 0.35) * disc * profile
    c.mask |= disc > 0.5


def _device_paths(
    devices: tuple[str, ...], rng: np.random.Generator
) -> list[tuple[np.ndarray, float, float]]:
    """Polylines (points, half-width, brightness) of the chosen tubes and lines."""

    def j(spread: float) -> float:
        return float(rng.uniform(-spread, spread))

    paths = []
    if "ett" in devices:
        x, tip = 0.5 + j(0.004), rng.uniform(0.24, 0.31)
        paths.append((np.array([[x, -0.05], [x, tip]], np.float32), 0.008, 0.3))
    if "ng" in devices:
        upper = _bezier((0.505, -0.05), (0.51 + j(0.01), 0.3), (0.52, 0.62))
        lower = _bezier((0.52, 0.62), (0.54, 0.75), (0.63 + j(0.03), 0.77 + j(0.02)))
        paths.append((np.concatenate([upper, lower[1:]]), 0.0045, 0.3))
    if "cvc" in devices:
        if rng.random() < 0.5:  # right internal jugular
            pts = _bezier((0.41 + j(0.02), -0.02), (0.45, 0.2), (0.47, 0.33 + j(0.02)))
        else:  # right subclavian
            pts = _bezier((0.2 + j(0.03), 0.15), (0.4, 0.18), (0.47, 0.34 + j(0.02)))
        paths.append((pts, 0.004, 0.35))
    return paths


def _draw_devices(c: _Canvas, f: _Finding, rng: np.random.Generator) -> None:
    """Bright tubes and lines, and ECG leads drawn as rings with a central dot."""
    for pts, half_w, amp in _device_paths(f.devices, rng):
        c.extra += amp * _stroke(c, [pts], max(half_w, 1.2 * c.px))
    if "ecg" in f.devices:
        for _ in range(int(rng.integers(2, 5))):
            side = 1 if rng.random() < 0.5 else -1
            x, y = 0.5 + side * rng.uniform(0.1, 0.38), rng.uniform(0.12, 0.7)
            win = _window(c, np.array([[x, y]], np.float32), 0.03)
            r = np.hypot(c.X[win] - x, c.Y[win] - y)
            ring = np.exp(-(((r - 0.02) / (1.2 * c.px)) ** 2)) + _sigmoid((0.006 - r) / c.px)
            c.extra[win] += 0.4 * ring


def _draw_finding(c: _Canvas, a: _Anatomy, f: _Finding, rng: np.random.Generator) -> None:
    if f.name == "opacity":
        _draw_opacity(c, a, f, rng)
    elif f.name == "pleural_effusion":
        _draw_effusion(c, a, f)
    elif f.name == "pneumothorax":
        _draw_pneumothorax(c, a, f)
    elif f.name == "nodule":
        _draw_nodule(c, a, f, rng)
    elif f.name == "support_device":
        _draw_devices(c, f, rng)
    # cardiomegaly is drawn by the heart's width in _mediastinum


def _n_findings_p(prevalence: float) -> tuple[float, ...]:
    """P(0..3 findings) with the share of studies that have any scaled by ``prevalence``."""
    if prevalence == 1:
        return _N_FINDINGS_P
    return (1 - prevalence * ABNORMAL_SHARE, *(prevalence * p for p in _N_FINDINGS_P[1:]))


def _sample_findings(rng: np.random.Generator, prevalence: float = 1.0) -> list[_Finding]:
    """0-3 findings with their side/zone/size; about 35 % of studies are normal (at
    ``prevalence`` 1; it scales the 65 % that are not)."""
    names = list(_FINDING_WEIGHTS)
    weights = np.array([_FINDING_WEIGHTS[n] for n in names])
    p = _n_findings_p(prevalence)
    k = int(rng.choice(len(p), p=p))
    chosen = sorted(rng.choice(len(names), size=k, replace=False, p=weights / weights.sum()))
    out = []
    for i in chosen:
        name = names[i]
        f = _Finding(name, uncertain=name != "support_device" and rng.random() < _UNCERTAIN_P)
        # side and zone are drawn for every finding so the stream does not depend on which
        f.side = str(rng.choice(["right", "left"]))
        f.zone = str(rng.choice(["upper", "lower"]))
        if name == "opacity":
            f.size = rng.uniform(0.075, 0.11)
        elif name == "cardiomegaly":
            f.size = rng.uniform(0.5, 0.53) if f.uncertain else rng.uniform(0.56, 0.66)
        elif name == "pleural_effusion":
            f.size = rng.uniform(0.0, 0.03) if f.uncertain else rng.uniform(0.04, 0.18)
        elif name == "pneumothorax":
            f.size = rng.uniform(0.08, 0.12) if f.uncertain else rng.uniform(0.15, 0.3)
        elif name == "nodule":
            f.size = rng.uniform(10, 18)  # diameter in pixels at 256 px
        elif name == "support_device":
            picks = [d for d in ("ett", "ng", "cvc", "ecg") if rng.random() < 0.5]
            f.devices = tuple(picks) or ("ett",)
        out.append(f)
    return out


# --------------------------------------------------------------------------- rendering


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with mirrored edges."""
    radius = max(int(math.ceil(3 * sigma)), 1)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(img, pad, mode="reflect")
        n = img.shape[axis]
        out = np.zeros_like(img)
        for k, w in enumerate(taps):
            out += w * (padded[k : k + n] if axis == 0 else padded[:, k : k + n])
        img = out
    return img


def _detector(img: np.ndarray, acq: Acquisition, rng: np.random.Generator, size: int) -> np.ndarray:
    """The exposure as a non-standard detector records it: blurred, sampled at
    ``acq.resolution`` of the side (box-averaged), noisy per detector pixel, resized back."""
    if acq.blur > 0:
        img = _gaussian_blur(img, acq.blur * size / 256)
    side = max(round(size * acq.resolution), 1)
    if side != size:
        img = np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BOX))
    if acq.noise > 0:
        img = img + acq.noise * rng.standard_normal(img.shape, np.float32)
    if side != size:
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))
    return img.astype(np.float32, copy=False)


def _render(
    a: _Anatomy,
    findings: list[_Finding],
    rng: np.random.Generator,
    size: int,
    acquisition: Acquisition = ACQUISITIONS["standard"],
    detector_rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one study; return the 8-bit image and the boolean region mask.

    Everything random that is not a finding is drawn first, so the same ``rng`` state
    rendered without its findings gives the study's finding-free twin. A non-standard
    ``acquisition`` draws its noise from ``detector_rng`` (default: a fixed stream).
    """
    X, Y = _canonical_grid(size, a)
    zeros = np.zeros((size, size), np.float32)
    c = _Canvas(
        anatomy=a,
        size=size,
        X=X,
        Y=Y,
        px=1.0 / (size * a.scale),
        lung={},
        mediast=zeros,
        air=zeros.copy(),
        marks=zeros,
        bone_gain=np.ones_like(zeros),
        extra=zeros.copy(),
        mask=np.zeros((size, size), bool),
    )
    c.mediast = _mediastinum(
        c, a, next((f.size for f in findings if f.name == "cardiomegaly"), a.ctr)
    )
    for side, lung in a.lungs.items():
        c.lung[side] = _lung_field(lung, X, Y, c.px)
        c.air += a.air * c.lung[side]
    c.marks = _vessels(c, a, rng) * np.maximum(*c.lung.values())
    grain = 0.035 * _smooth_noise(rng, size, 4) + 0.012 * rng.standard_normal(X.shape, np.float32)
    contrast, brightness, gamma = (rng.uniform(lo, hi) for lo, hi in _EXPOSURE)
    for f in findings:
        _draw_finding(c, a, f, rng)

    img = 0.04 + _body(c, a) + 0.1 * c.mediast
    img -= np.clip(c.air - c.marks, 0, None) * (1 - c.mediast)
    img += c.bone_gain * _ribs(c, a) + _spine_and_airway(c)
    if a.clavicles:
        img += _clavicles(c)
    if a.gastric_bubble:
        img -= _gastric_bubble(c, a)
    img += c.extra + grain
    if not acquisition.is_standard:
        img = _detector(img, acquisition, detector_rng or np.random.default_rng(0), size)
        contrast *= acquisition.contrast
        brightness += acquisition.brightness
        gamma *= acquisition.gamma
    img = np.clip((img - 0.4) * contrast + 0.4 + brightness, 1e-4, 1)
    img = np.exp(gamma * np.log(img))  # img ** gamma, without numpy's slow float32 pow
    return np.round(img * 255).astype(np.uint8), c.mask


# --------------------------------------------------------------------------- reports

_OPACITY_NOUNS = ("opacity", "airspace opacity", "consolidation", "airspace disease", "infiltrate")
_ZONES = {
    ("right", "upper"): ("right upper lobe", "right upper zone", "right upper lung"),
    ("right", "lower"): ("right lower lobe", "right lung base", "right lower zone"),
    ("left", "upper"): ("left upper lobe", "left upper zone", "left upper lung"),
    ("left", "lower"): ("left lower lobe", "left lung base", "left lower zone"),
}
_NEGATIONS = {
    "opacity": (
        "No focal consolidation.",
        "No focal airspace opacity.",
        "There is no consolidation.",
    ),
    "cardiomegaly": (
        "Heart size is normal.",
        "The cardiac silhouette is normal in size.",
        "Normal heart size.",
        "The cardiomediastinal silhouette is within normal limits.",
    ),
    "pleural_effusion": ("No pleural effusion.", "There is no pleural effusion."),
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax."),
    "nodule": ("No suspicious pulmonary nodules.", "No pulmonary nodules are seen."),
    "support_device": ("No lines or tubes.",),
}
_FILLERS = (
    "The osseous structures are intact.",
    "Mild degenerative changes of the thoracic spine.",
    "The visualized upper abdomen is unremarkable.",
    "Soft tissues are unremarkable.",
    "The mediastinal contours are unchanged.",
)
_NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
)
_LUNG_FINDINGS = ("opacity", "pleural_effusion", "pneumothorax", "nodule")
_MIN_WORDS, _MAX_BODY_WORDS = 15, 52  # reports run ~15-80 words with the impression


def _pick(rng: np.random.Generator, options) -> str:
    return str(options[int(rng.integers(len(options)))])


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _opacity_sentence(f: _Finding, rng: np.random.Generator) -> str:
    zone, noun = _pick(rng, _ZONES[(f.side, f.zone)]), _pick(rng, _OPACITY_NOUNS)
    if f.uncertain:
        return _pick(
            rng,
            (
                f"Possible subtle {noun} in the {zone}.",
                f"Cannot exclude early {noun} in the {zone}.",
            ),
        )
    cause = _pick(rng, ("", ", concerning for pneumonia", ", likely atelectasis or pneumonia"))
    return _pick(
        rng,
        (
            f"There is {noun} in the {zone}{cause}.",
            f"{_cap(zone)} {noun}{cause}.",
            f"Patchy {noun} is seen in the {zone}.",
            f"New {noun} involving the {zone}{cause}.",
        ),
    )


def _cardiomegaly_sentence(f: _Finding, rng: np.random.Generator) -> str:
    if f.uncertain:
        return _pick(
            rng,
            ("Borderline enlargement of the cardiac silhouette.", "Possible mild cardiomegaly."),
        )
    grade = "Mild" if f.size < 0.59 else "Moderate" if f.size < 0.63 else "Marked"
    return _pick(
        rng,
        (
            "The heart is enlarged.",
            "Cardiomegaly.",
            f"{grade} cardiomegaly.",
            "Enlarged cardiac silhouette.",
            "The cardiac silhouette is enlarged.",
        ),
    )


def _effusion_sentence(f: _Finding, rng: np.random.Generator) -> str:
    if f.uncertain:
        return _pick(
            rng,
            (
                f"Possible trace {f.side} pleural effusion.",
                f"Cannot exclude a small {f.side} pleural effusion.",
            ),
        )
    grade = "small" if f.size < 0.08 else "moderate" if f.size < 0.14 else "large"
    return _pick(
        rng,
        (
            f"{_cap(grade)} {f.side} pleural effusion.",
            f"There is a {grade} {f.side} pleural effusion.",
            f"Fluid in the {f.side} pleural space.",
            f"Blunting of the {f.side} costophrenic angle, consistent with a {grade} effusion.",
        ),
    )


def _pneumothorax_sentence(f: _Finding, rng: np.random.Generator) -> str:
    if f.uncertain:
        return _pick(
            rng,
            (
                f"Cannot exclude a tiny {f.side} apical pneumothorax.",
                f"Possible small {f.side} pneumothorax.",
            ),
        )
    grade = "small" if f.size < 0.2 else "moderate" if f.size < 0.26 else "large"
    return _pick(
        rng,
        (
            f"{_cap(grade)} {f.side} pneumothorax.",
            f"{_cap(f.side)} apical pneumothorax.",
            f"There is a {grade} {f.side} pneumothorax.",
            f"Visible {f.side} pleural line with a {grade} pneumothorax.",
        ),
    )


def _nodule_sentence(f: _Finding, rng: np.random.Generator) -> str:
    zone = _pick(rng, _ZONES[(f.side, f.zone)])
    if f.uncertain:
        return _pick(
            rng,
            (
                f"Questionable nodule in the {zone}.",
                f"Possible small nodular density in the {zone}.",
            ),
        )
    cm = f"{f.size * 1.4 / 10:.1f} cm"  # about 1.4 mm per pixel at 256 px
    return _pick(
        rng,
        (
            f"A {cm} nodule in the {zone}.",
            f"There is a {cm} pulmonary nodule in the {zone}.",
            f"Rounded nodular density in the {zone}, measuring {cm}.",
        ),
    )


_DEVICE_SENTENCES = {
    "ett": (
        "Endotracheal tube terminates about 4 cm above the carina.",
        "The endotracheal tube is in expected position.",
    ),
    "ng": (
        "Enteric tube courses below the diaphragm into the stomach.",
        "A nasogastric tube is seen with its tip in the stomach.",
    ),
    "cvc": (
        "Right-sided central venous catheter with tip in the SVC.",
        "A central line terminates in the superior vena cava.",
    ),
    "ecg": ("ECG leads overlie the chest.", "External monitoring leads are noted."),
}


def _device_sentence(f: _Finding, rng: np.random.Generator) -> str:
    return " ".join(_pick(rng, _DEVICE_SENTENCES[d]) for d in f.devices)


_SENTENCES = {
    "opacity": _opacity_sentence,
    "cardiomegaly": _cardiomegaly_sentence,
    "pleural_effusion": _effusion_sentence,
    "pneumothorax": _pneumothorax_sentence,
    "nodule": _nodule_sentence,
    "support_device": _device_sentence,
}


def _negations(absent: set[str], rng: np.random.Generator) -> list[str]:
    """Explicit negatives for some absent findings (never for a present one)."""
    out = []
    if set(_LUNG_FINDINGS) <= absent and rng.random() < 0.6:
        out.append(_pick(rng, ("The lungs are clear.", "The lungs are well expanded and clear.")))
    pleural = {"pleural_effusion", "pneumothorax"}
    if pleural <= absent and rng.random() < 0.5:
        out.append("No pleural effusion or pneumothorax.")
        absent = absent - pleural
    for name in sorted(absent):
        if rng.random() < (0.15 if name == "support_device" else 0.55):
            out.append(_pick(rng, _NEGATIONS[name]))
    return out


def _impression(findings: list[_Finding], rng: np.random.Generator) -> str:
    """The leading disease findings, reworded; a normal impression when there are none."""
    disease = [f for f in findings if f.name != "support_device"]
    if not disease:
        return _pick(rng, _NORMAL_IMPRESSIONS)
    lead = disease[: int(rng.integers(1, min(len(disease), 2) + 1))]
    return " ".join(_SENTENCES[f.name](f, rng) for f in lead)


def _write_report(findings: list[_Finding], rng: np.random.Generator) -> str:
    """Free-text report that states (or hedges) every finding and negates only absent ones."""
    present = [_SENTENCES[f.name](f, rng) for f in findings]
    order = rng.permutation(len(findings))
    findings, present = [findings[i] for i in order], [present[i] for i in order]
    absent = set(_FINDING_WEIGHTS) - {f.name for f in findings}
    negatives = _negations(absent, rng)
    while negatives and _n_words(present + negatives) > _MAX_BODY_WORDS:
        negatives.pop()
    body = present + negatives if rng.random() < 0.7 else negatives + present
    fillers = [str(s) for s in rng.permutation(_FILLERS)]
    if rng.random() < 0.3:
        body.append(fillers.pop())
    impression = _impression(findings, rng)
    sections = rng.random() < 0.5
    if not sections and impression in _NORMAL_IMPRESSIONS:
        body.append(impression)
    headed = 2 + _n_words([impression]) if sections else 0  # "FINDINGS:", "IMPRESSION:" ...
    while _n_words(body) + headed < _MIN_WORDS:
        body.append(fillers.pop())
    return f"FINDINGS: {' '.join(body)} IMPRESSION: {impression}" if sections else " ".join(body)


def _n_words(sentences: list[str]) -> int:
    return sum(len(s.split()) for s in sentences)


# --------------------------------------------------------------------------- records


def _labels(findings: list[_Finding]) -> dict[str, int | None]:
    labels: dict[str, int | None] = {name: 0 for name in FINDINGS}
    for f in findings:
        labels[f.name] = -1 if f.uncertain else 1
    labels["no_finding"] = int(not findings)
    return labels


def _patient_of_index(n: int, seed: int) -> list[int]:
    """Patient number of each record: consecutive runs of 1-3 studies (prefix-stable in n)."""
    rng = np.random.default_rng([seed, _STREAM_PATIENT_SIZES])
    out: list[int] = []
    patient = 0
    while len(out) < n:
        out.extend([patient] * (1 + int(rng.choice(3, p=_STUDIES_PER_PATIENT_P))))
        patient += 1
    return out[:n]


def _split_of_patient(patient: int, seed: int) -> str:
    u = np.random.default_rng([seed, _STREAM_SPLIT, patient]).random()
    return SPLITS[int(np.searchsorted(_SPLIT_CUTS, u, side="right"))]


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _resolve_acquisition(acquisition: str | Acquisition) -> tuple[str, Acquisition]:
    """An acquisition's name (``"custom"`` for one given as values) and its values."""
    if isinstance(acquisition, Acquisition):
        name = next((k for k, v in ACQUISITIONS.items() if v == acquisition), "custom")
        return name, acquisition
    if acquisition not in ACQUISITIONS:
        raise ValueError(
            f"acquisition must be one of {', '.join(ACQUISITIONS)} (or an Acquisition), "
            f"got {acquisition!r}"
        )
    return acquisition, ACQUISITIONS[acquisition]


def generate_synthetic(
    out_dir: Path,
    n: int,
    seed: int = _DEFAULT.seed,
    size: int = _DEFAULT.size,
    progress: bool = True,
    *,
    acquisition: str | Acquisition = _DEFAULT.acquisition,
    reports: bool = _DEFAULT.reports,
) -> list[Record]:
    """Write ``n`` synthetic chest radiographs, masks and reports under ``out_dir``.

    Creates ``images/<id>.png`` (8-bit grayscale, ``size`` x ``size``),
    ``masks/<id>.png`` (0/255) for studies with a regional finding, and finally
    ``records.jsonl``. Returns the records, with absolute paths. Keyword names follow
    :class:`SynthOptions`: ``generate_synthetic(out, **options.model_dump())``.

    ``acquisition``: a name of ``ACQUISITIONS`` or an :class:`Acquisition`; records of a
    non-standard one carry ``metadata["acquisition"]``. ``reports=False`` writes an
    image-only set: every report empty (the ``synthetic:`` source then declares it has no
    reports), images, labels, masks and splits the same as with reports.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be in {MIN_SIZE}..{MAX_SIZE}, got {size}")
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be non-negative, got n={n}, seed={seed}")
    name, acq = _resolve_acquisition(acquisition)
    out_dir = Path(out_dir).resolve()
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    patients = _patient_of_index(n, seed)
    records = []
    for i in tqdm(range(n), desc="synthetic CXR", disable=not progress):
        p = patients[i]
        habitus = _sample_habitus(np.random.default_rng([seed, _STREAM_ANATOMY, p]))
        rng = np.random.default_rng([seed, _STREAM_RECORD, i])
        findings = _sample_findings(rng, acq.prevalence)
        detector_rng = np.random.default_rng([seed, _STREAM_ACQUISITION, i])
        image, mask = _render(_place_study(habitus, rng), findings, rng, size, acq, detector_rng)
        record = Record(
            id=f"synth-{i:06d}",
            image=out_dir / "images" / f"synth-{i:06d}.png",
            report=_write_report(findings, rng) if reports else "",
            labels=_labels(findings),
            split=_split_of_patient(p, seed),
            patient_id=f"pt-{p:05d}",
            metadata={} if acq.is_standard else {"acquisition": name},
        )
        _save_png(image, record.image)
        if any(f.name in REGION_FINDINGS for f in findings):
            mask_path = out_dir / "masks" / f"{record.id}.png"
            _save_png(mask.astype(np.uint8) * 255, mask_path)
            record.mask = str(mask_path)
        records.append(record)
    remote.publish_tree(out_dir)  # in a remote folder's working copy: the images go up first
    write_records_jsonl(records, out_dir / "records.jsonl")
    return records
