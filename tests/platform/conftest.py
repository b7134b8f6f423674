"""Fixtures for the platform tests: tiny campaigns and datasets written in the real layouts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medloop.config import Campaign, parse_campaign


def make_campaign(root: Path, **data: Any) -> Campaign:
    base = {"image_size": 16, "n_samples": 30, "unlabeled_fraction": 0.5}
    base.update(data)
    return parse_campaign({"name": "t", "root": str(root), "data": base})


@pytest.fixture
def campaign_factory(tmp_path: Path) -> Callable[..., Campaign]:
    def factory(**data: Any) -> Campaign:
        return make_campaign(tmp_path / "campaign", **data)

    return factory


def grey(seed: int, h: int = 24, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def blob(h: int = 24, w: int = 32, y: int = 8, x: int = 10, r: int = 4) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (((yy - y) ** 2 + (xx - x) ** 2) <= r * r).astype(np.uint8)


def save_mask(path: Path, mask: np.ndarray, mode: str) -> None:
    """Write a binary mask in a PNG mode the datasets use: '1', 'L', 'RGB' or 'RGBA'."""
    m = mask.astype(bool)
    if mode == "1":
        im = Image.fromarray(m).convert("1")
    elif mode == "L":
        im = Image.fromarray(m.astype(np.uint8) * 255)
    elif mode == "RGB":
        im = Image.fromarray(np.repeat(m[..., None].astype(np.uint8) * 255, 3, axis=2), "RGB")
    else:
        rgba = np.zeros(m.shape + (4,), dtype=np.uint8)
        rgba[..., :3] = m[..., None] * 255
        rgba[..., 3] = 255
        im = Image.fromarray(rgba, "RGBA")
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    assert Image.open(path).mode == mode


def write_busi(root: Path, per_class: int = 4) -> Path:
    """A BUSI-layout folder: RGB images, masks in 1-bit / RGB / RGBA, one case with two lesions."""
    modes = ["1", "RGB", "RGBA"]
    top = root / "Dataset_BUSI_with_GT"
    for ci, cls in enumerate(("benign", "malignant", "normal")):
        (top / cls).mkdir(parents=True, exist_ok=True)
        for n in range(1, per_class + 1):
            img = grey(100 * ci + n)
            Image.fromarray(np.repeat(img[..., None], 3, axis=2), "RGB").save(top / cls / f"{cls} ({n}).png")
            mask = np.zeros_like(img) if cls == "normal" else blob(x=6 + n)
            save_mask(top / cls / f"{cls} ({n})_mask.png", mask, modes[(n + ci) % 3])
    # benign (1) has a second lesion in its own file: the image's mask is the union
    save_mask(top / "benign" / "benign (1)_mask_1.png", blob(y=18, x=26, r=3), "1")
    return root


def write_generic(root: Path, n: int = 9, labels: list[str] | None = None, masks: bool = True) -> Path:
    """images/, masks/ (same stem), labels.csv image,label; blank label = unlabeled."""
    classes = ["normal", "benign", "malignant"]
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["image,label"]
    for i in range(n):
        Image.fromarray(grey(1000 + i)).save(root / "images" / f"case{i}.png")
        if masks:
            save_mask(root / "masks" / f"case{i}.png", blob(x=5 + i), ["1", "L", "RGB", "RGBA"][i % 4])
        label = labels[i] if labels is not None else classes[i % 3]
        rows.append(f"case{i}.png,{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def lay() -> Any:
    """The layout helpers above (test modules cannot import conftest under --import-mode=importlib)."""
    import types

    return types.SimpleNamespace(
        grey=grey, blob=blob, save_mask=save_mask, write_busi=write_busi, write_generic=write_generic
    )
