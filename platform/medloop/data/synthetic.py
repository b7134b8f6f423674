"""Ultrasound-like phantoms with classes normal / benign / malignant and lesion masks.

Pure and seeded: the i-th phantom depends only on (seed, i, its class, size, difficulty),
so the same seed gives the same images. Appearance follows the BI-RADS cues radiologists use:

* background: layered tissue texture, depth attenuation, multiplicative speckle
  (gamma-distributed, as for a fully developed speckle envelope);
* benign: smooth oval hypoechoic lesion, wider than tall (parallel orientation);
* malignant: irregular / spiculated hypoechoic lesion, taller than wide (non-parallel),
  with posterior acoustic shadowing (darker columns below the lesion);
* normal: no lesion (empty mask); with difficulty > 0 a faint dark lobule that is *not* a lesion.

``difficulty`` in [0, 1] moves the class cues toward each other (aspect ratios toward 1,
less spiculation and shadow, lower contrast, more speckle), so class overlap is tunable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

KINDS = ("normal", "benign", "malignant")


@dataclass
class Phantoms:
    """A batch of phantoms: images (N, H, W) uint8, masks (N, H, W) uint8 {0, 1}, class names."""

    images: np.ndarray
    masks: np.ndarray
    labels: list[str]


def class_counts(n: int, mix: list[float]) -> list[int]:
    """Exact per-class counts for ``n`` items by the largest-remainder rule."""
    p = np.asarray(mix, dtype=float)
    if p.ndim != 1 or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"class_mix: expected non-negative proportions with a positive sum, got {mix}")
    p = p / p.sum()
    raw = p * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _background(rng: np.random.Generator, size: int, yy: np.ndarray) -> np.ndarray:
    """Layered tissue echo texture with depth attenuation, values around 0.5."""
    layers = 0.5 + 0.12 * np.sin(yy * rng.uniform(6, 14) + rng.uniform(0, 6.3))
    texture = gaussian_filter(rng.standard_normal((size, size)), sigma=(size / 64 * 1.0, size / 64 * 3.0))
    texture /= texture.std() + 1e-8
    attenuation = 1.0 - 0.35 * yy  # deeper tissue returns less echo
    return (layers + 0.08 * texture) * attenuation


def _lesion(rng: np.random.Generator, kind: str, d: float, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, float]:
    """Binary lesion mask (bool) and the shadow strength for one lesion of ``kind``."""
    cy, cx = rng.uniform(0.35, 0.6), rng.uniform(0.3, 0.7)
    area_r = rng.uniform(0.11, 0.17)  # geometric-mean radius (fraction of the side)
    if kind == "benign":
        aspect = rng.normal(1.7 - 0.65 * d, 0.12)  # width / height > 1: parallel orientation
        spic_amp, lobes = rng.uniform(0.0, 0.05 + 0.2 * d), rng.integers(2, 5)
        shadow = rng.uniform(0.0, 0.35 * d)
    else:
        aspect = 1.0 / rng.normal(1.6 - 0.55 * d, 0.12)  # taller than wide
        spic_amp, lobes = rng.uniform(0.18, 0.35) * (1 - 0.6 * d), rng.integers(7, 13)
        shadow = rng.uniform(0.45, 0.7) * (1 - 0.5 * d)
    aspect = float(np.clip(aspect, 0.45, 2.4))
    rx, ry = area_r * np.sqrt(aspect), area_r / np.sqrt(aspect)
    theta = np.arctan2((yy - cy) / ry, (xx - cx) / rx)
    rho = np.hypot((yy - cy) / ry, (xx - cx) / rx)
    edge = 1.0 + spic_amp * np.cos(lobes * theta + rng.uniform(0, 6.3))
    if kind == "malignant":  # a second, finer harmonic makes the margin angular / spiculated
        edge += 0.5 * spic_amp * np.cos((2 * lobes + 1) * theta + rng.uniform(0, 6.3))
    return rho <= edge, float(shadow)


def phantom(seed: int, index: int, kind: str, size: int = 64, difficulty: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """One phantom of class ``kind``: (image uint8 (size, size), mask uint8 {0, 1})."""
    if kind not in KINDS:
        raise ValueError(f"synthetic class {kind!r}: expected one of {', '.join(KINDS)}")
    d = float(np.clip(difficulty, 0.0, 1.0))
    rng = np.random.default_rng([seed, index, KINDS.index(kind)])
    axis = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    echo = _background(rng, size, yy)
    mask = np.zeros((size, size), dtype=bool)
    if kind == "normal":
        if rng.uniform() < d:  # a fat lobule: dark, smooth, not a lesion
            cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.06, 0.12)
            blob = np.exp(-(((yy - cy) ** 2 + ((xx - cx) / 1.4) ** 2) / (2 * r * r)))
            echo *= 1.0 - 0.5 * d * blob
    else:
        mask, shadow = _lesion(rng, kind, d, yy, xx)
        contrast = rng.uniform(0.55, 0.8) * (1 - 0.45 * d)  # hypoechoic: the lesion is darker
        soft = gaussian_filter(mask.astype(float), sigma=size / 64 * (1.2 if kind == "benign" else 0.5))
        echo *= 1.0 - contrast * soft
        if shadow > 0:
            cols = np.asarray(mask.any(axis=0))
            bottom = np.where(cols, size - 1 - np.argmax(mask[::-1], axis=0), size)
            below = np.arange(size)[:, None] > bottom[None, :]
            shade = gaussian_filter((below & cols[None, :]).astype(float), sigma=size / 64 * 1.5)
            echo *= 1.0 - shadow * shade
    looks = 3.0 - 1.5 * d  # fewer looks = stronger speckle
    speckle = rng.gamma(looks, 1.0 / looks, size=(size, size))
    image = gaussian_filter(echo * speckle, sigma=size / 128)
    image = np.clip(image * 255.0 / 0.9, 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8)


def generate(
    n: int = 240,
    size: int = 64,
    seed: int = 0,
    class_mix: list[float] | None = None,
    difficulty: float = 0.3,
    classes: list[str] | tuple[str, ...] = KINDS,
) -> Phantoms:
    """``n`` phantoms with exact class counts from ``class_mix`` (one proportion per class, shuffled by seed)."""
    unknown = [c for c in classes if c not in KINDS]
    if unknown:
        raise ValueError(f"data.classes: the synthetic generator knows {', '.join(KINDS)}, not {', '.join(unknown)}")
    mix = list(class_mix) if class_mix is not None else [1.0] * len(classes)
    if len(mix) != len(classes):
        raise ValueError("class_mix: expected one proportion per class")
    labels = [c for c, k in zip(classes, class_counts(n, mix)) for _ in range(k)]
    order = np.random.default_rng(seed).permutation(n)
    labels = [labels[i] for i in order]
    images = np.empty((n, size, size), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    for i, kind in enumerate(labels):
        images[i], masks[i] = phantom(seed, i, kind, size, difficulty)
    return Phantoms(images=images, masks=masks, labels=labels)
