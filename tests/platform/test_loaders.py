"""Loaders on files written in the real layouts: BUSI (multi-mask, 1-bit/RGB/RGBA) and generic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medloop.data.busi import scan_busi
from medloop.data.errors import DataError
from medloop.data.generic import scan_generic
from medloop.data.records import read_mask

CLASSES = ["normal", "benign", "malignant"]


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA"])
def test_mask_modes_binarised(lay, tmp_path: Path, mode: str) -> None:
    m = lay.blob()
    lay.save_mask(tmp_path / "m.png", m, mode)
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    assert np.array_equal(out, m)


def test_busi_layout_and_mask_union(lay, tmp_path: Path) -> None:
    root = lay.write_busi(tmp_path / "busi", per_class=3)
    items, bad = scan_busi(root, CLASSES)
    assert bad == []
    assert sorted((i.class_name, i.image.name) for i in items)[:2] == [("benign", "benign (1).png"),
                                                                       ("benign", "benign (2).png")]
    assert len(items) == 9
    first = next(i for i in items if i.image.name == "benign (1).png")
    assert [p.name for p in first.masks] == ["benign (1)_mask.png", "benign (1)_mask_1.png"]
    rec = first.load(channels=1)
    assert rec.image.shape == (24, 32) and rec.class_name == "benign"
    expected = np.maximum(lay.blob(x=7), lay.blob(y=18, x=26, r=3))
    assert np.array_equal(rec.mask, expected)
    assert rec.original_path == str((root / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png").resolve())
    normal = next(i for i in items if i.class_name == "normal").load()
    assert normal.mask is not None and normal.mask.sum() == 0
    rgb = first.load(channels=3)
    assert rgb.image.shape == (24, 32, 3)


def test_busi_root_may_be_the_inner_folder(lay, tmp_path: Path) -> None:
    root = lay.write_busi(tmp_path / "busi", per_class=1)
    items, _ = scan_busi(root / "Dataset_BUSI_with_GT", CLASSES)
    assert len(items) == 3
    with pytest.raises(DataError, match="not a folder"):
        scan_busi(tmp_path / "missing", CLASSES)


def test_generic_layout_labels_and_masks(lay, tmp_path: Path) -> None:
    root = lay.write_generic(tmp_path / "g", n=6, labels=["benign", "", "malignant", "normal", "benign", ""])
    items, bad = scan_generic(root, CLASSES)
    assert bad == []
    by = {i.image.stem: i for i in items}
    assert by["case0"].class_name == "benign" and by["case1"].class_name is None
    rec = by["case2"].load()
    assert np.array_equal(rec.mask, lay.blob(x=7)) and rec.image.shape == (24, 32)


def test_generic_without_masks_or_csv(lay, tmp_path: Path) -> None:
    root = tmp_path / "g"
    lay.write_generic(root, n=3, masks=False)
    (root / "labels.csv").unlink()
    items, bad = scan_generic(root, CLASSES)
    assert bad == [] and len(items) == 3
    assert all(i.class_name is None and i.masks == [] for i in items)
    assert items[0].load().mask is None


def test_generic_bad_csv_header(lay, tmp_path: Path) -> None:
    root = lay.write_generic(tmp_path / "g", n=2)
    (root / "labels.csv").write_text("file,class\ncase0.png,benign\n")
    with pytest.raises(DataError, match=r"labels.csv: expected a header with columns image,label"):
        scan_generic(root, CLASSES)


def test_generic_needs_images_folder(lay, tmp_path: Path) -> None:
    (tmp_path / "g").mkdir()
    with pytest.raises(DataError, match="expected a folder images/"):
        scan_generic(tmp_path / "g", CLASSES)
    assert lay.grey(0).shape == (24, 32)
