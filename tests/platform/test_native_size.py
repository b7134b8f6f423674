"""Native resolution: the store keeps each image and mask at the image's own size and aspect; the
model size (``data.image_size``) is derived when decoding, so changing it needs no re-annotation.
The resize helpers of the image store (masks nearest, probabilities bilinear then thresholded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from medloop.config import parse_campaign
from medloop.data.imagestore import ImageStore, mask_at, prob_at, prob_mask
from medloop.data.ingest import ingest
from medloop.ledger import Label, Ledger, Sample, add_human_label


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((((yy + 0.5) / h - cy) / ry) ** 2 + (((xx + 0.5) / w - cx) / rx) ** 2 <= 1.0).astype(np.uint8)


def _generic(root: Path) -> Path:
    """images/ of three sizes (500x380 among them), masks/ with a lesion, labels.csv."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["image,label"]
    for i, (w, h) in enumerate([(500, 380), (256, 200), (300, 300), (500, 380), (120, 90), (256, 200)]):
        img = rng.integers(0, 200, (h, w), dtype=np.uint8)
        m = _ellipse(h, w, 0.45, 0.5, 0.2, 0.15 + 0.02 * i)
        img[m > 0] = 250
        Image.fromarray(img).save(root / "images" / f"c{i}.png")
        Image.fromarray(m * 255).save(root / "masks" / f"c{i}.png")
        rows.append(f"c{i}.png,{['benign', 'malignant'][i % 2]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _campaign(root: Path, size: int):
    return parse_campaign({"name": "native", "root": str(root),
                           "data": {"image_size": size, "unlabeled_fraction": 0.5, "classes": ["normal", "benign",
                                                                                                "malignant"]}})


def test_ingest_keeps_native_size_and_image_size_change_needs_no_reannotation(tmp_path: Path) -> None:
    from medloop.trainers.dataset import load_arrays

    data = _generic(tmp_path / "d")
    campaign = _campaign(tmp_path / "c", 32)
    ingest(campaign, "generic", data)
    store = ImageStore(campaign.store)
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        samples = s.scalars(select(Sample).order_by(Sample.id)).all()
        truth = {lab.sample_id: lab.mask_path for lab in s.scalars(select(Label).where(Label.kind == "truth"))}
    sizes = sorted((smp.width, smp.height) for smp in samples)
    assert sizes == sorted([(500, 380), (256, 200), (300, 300), (500, 380), (120, 90), (256, 200)])
    for smp in samples:  # image and dataset mask stored at the image's own size, never squared
        assert store.load_image(smp.image_path).shape == (smp.height, smp.width)
        assert store.load_mask(truth[smp.id]).shape == (smp.height, smp.width)
        src = np.asarray(Image.open(smp.original_path))
        assert np.array_equal(store.load_image(smp.image_path), src)

    # an annotator's mask, drawn on the native 500x380 image, on a pool case
    big = next(smp for smp in samples if (smp.width, smp.height) == (500, 380))
    drawn = _ellipse(380, 500, 0.6, 0.4, 0.25, 0.3)
    rel = store.put_mask(f"human/{big.uid}-ls1", drawn)
    with ledger.transaction() as s:
        s.get_one(Sample, big.id).split = "pool"  # an annotated pool case trains
        add_human_label(s, big.id, class_name="malignant", mask_path=rel, author="a@x")
    assert np.array_equal(store.load_mask(rel), drawn)  # never resized on storage

    for size in (32, 64):  # the same ledger, another model size: no new ingest, no re-annotation
        arrays = load_arrays(_campaign(tmp_path / "c", size), ledger, "train")
        assert arrays.images.shape[1:] == (1, size, size) and arrays.masks.shape[1:] == (size, size)
        i = arrays.uids.index(big.uid)
        assert np.array_equal(arrays.masks[i], mask_at(drawn, (size, size)))
        assert arrays.labels[i] == 2
    assert np.array_equal(store.load_mask(rel), drawn)
    ledger.close()


def test_mask_at_keeps_values_and_returns_same_size_unchanged() -> None:
    m = np.zeros((380, 500), np.uint8)
    m[100:200, 150:300] = 1
    m[0, 0] = 255
    assert mask_at(m, (380, 500)) is m
    small = mask_at(m, (64, 64))
    assert small.shape == (64, 64) and set(np.unique(small)) <= {0, 1, 255}
    back = mask_at(small, (380, 500))
    assert back.shape == (380, 500) and back.dtype == np.uint8
    assert mask_at(np.ones((4, 4), bool), (8, 6)).dtype == np.uint8


def test_prob_mask_follows_the_boundary_at_native_size() -> None:
    """The pre-annotation: the model's 128x128 lesion probability (a BUSI campaign's size) resized
    bilinearly to 500x380 and thresholded at 0.5 agrees (Dice >= 0.99) with the model's own mask
    (probability >= 0.5 at 128x128) resized, without a shift, and its boundary is smoother (no blocks):
    closer to the true native ellipse. (At 64x64 the same lesion gives 0.984: the blocks of the
    nearest-upscaled mask are what differs.)"""
    h, w, size = 380, 500, 128
    yy, xx = np.mgrid[:size, :size]
    d = np.sqrt(((yy + 0.5) / size - 0.5) ** 2 / 0.2 ** 2 + ((xx + 0.5) / size - 0.45) ** 2 / 0.3 ** 2)
    prob = (1.0 / (1.0 + np.exp((d - 1.0) * 12.0))).astype(np.float16)  # a smooth lesion probability
    model_mask = (prob.astype(np.float32) >= 0.5).astype(np.uint8)
    pre = prob_mask(prob, (h, w))
    assert pre.shape == (h, w) and pre.dtype == np.uint8
    nearest = mask_at(model_mask, (h, w))
    dice = 2 * (pre & nearest).sum() / (pre.sum() + nearest.sum())
    assert dice >= 0.99, dice
    # the same place: centroids within half a native pixel
    cy = [np.nonzero(m)[0].mean() for m in (pre, nearest)]
    cx = [np.nonzero(m)[1].mean() for m in (pre, nearest)]
    assert abs(cy[0] - cy[1]) < 0.5 and abs(cx[0] - cx[1]) < 0.5
    truth = _ellipse(h, w, 0.5, 0.45, 0.2, 0.3)
    err_pre, err_nearest = (pre != truth).sum(), (nearest != truth).sum()
    assert err_pre < err_nearest, (err_pre, err_nearest)
    up = prob_at(prob, (h, w))
    assert up.dtype == np.float32 and 0.0 <= up.min() and up.max() <= 1.0
    assert prob_at(up, (h, w)) is not None and np.array_equal(prob_at(up, (h, w)), up)


def test_model_size_images_are_cached_per_size_and_rebuilt_for_a_new_size(tmp_path):
    from medloop.data.imagestore import ImageStore
    from medloop.trainers.dataset import fit_image, model_image, model_input_path

    store = ImageStore(tmp_path)
    rng = np.random.default_rng(0)
    native = rng.integers(0, 255, (380, 500), dtype=np.uint8)
    rel = store.put_image("case-abc", native)
    first = model_image(store, rel, 64, 1)
    cache = store.path(f"arrays/{model_input_path(rel, 64, 1)}.npy")
    assert cache.exists() and np.array_equal(first, fit_image(native, 64, 1))
    np.save(cache, np.zeros((1, 64, 64), np.uint8))  # the cache is what is read the second time
    assert not model_image(store, rel, 64, 1).any()
    other = model_image(store, rel, 32, 1)  # a new size: its own cache, from the native image
    assert other.shape == (1, 32, 32) and np.array_equal(other, fit_image(native, 32, 1))
    cache.write_bytes(b"broken")  # a damaged cache file is rebuilt
    assert np.array_equal(model_image(store, rel, 64, 1), first)


def test_store_writes_are_atomic_and_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    """put_bytes / put_image create missing folders, leave no temporary file, and a write that fails midway
    (a full disk: faked by making ``os.write`` fail after the first chunk, since a full disk cannot be
    caused here) keeps the previous file whole and removes the temporary one."""
    import errno
    import os

    store = ImageStore(tmp_path / "store")
    rel = store.put_bytes("images/deep/a.bin", b"first version")
    assert (tmp_path / "store" / rel).read_bytes() == b"first version"
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(store.load_image(store.put_image("b", img)), img)

    real_write = os.write
    calls = []

    def failing_write(fd: int, data) -> int:
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data[:3]))  # a short write: the loop must go on

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OSError, match="No space left") as err:
        store.put_bytes(rel, b"second, longer version")
    assert err.value.errno == errno.ENOSPC and len(calls) == 2
    monkeypatch.undo()
    assert (tmp_path / "store" / rel).read_bytes() == b"first version"
    assert sorted(p.name for p in (tmp_path / "store" / "images" / "deep").iterdir()) == ["a.bin"]
