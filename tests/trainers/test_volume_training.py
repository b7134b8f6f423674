"""Training data from a volume campaign: volumes decoded at ``data.volume_size`` (trilinear, masks nearest),
augmentation that keeps a volume and its mask aligned, and the 3D model chosen for the campaign's model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from volume_files import lidc_like  # tests/ is on sys.path

from medloop.config import parse_campaign
from medloop.data.imagestore import ImageStore, nearest_resize
from medloop.data.ingest import ingest
from medloop.ledger import Ledger
from medloop.trainers.dataset import IGNORE, Augment, JointDataset, load_arrays, resize_volume, volume_channels
from medloop.trainers.plain import LoopSettings

CLASSES = ["benign", "malignant"]


def volume_campaign(root: Path, data: Path, **sections) -> object:
    spec = {"name": "v", "root": str(root),
            "data": {"source": "generic", "path": str(data), "classes": CLASSES, "volume_size": [8, 16, 16],
                     "unlabeled_fraction": 0.5, "split": [0.5, 0.25, 0.25]},
            "model": {"width": 4, "depth": 3}}
    for k, v in sections.items():
        spec[k] = {**spec.get(k, {}), **v}
    return parse_campaign(spec)


@settings(max_examples=40, deadline=None)
@given(st.tuples(*[st.integers(1, 9)] * 3), st.tuples(*[st.integers(1, 12)] * 3))
def test_nearest_resize_is_torchs_nearest_exact(shape, target) -> None:
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    expected = torch.nn.functional.interpolate(torch.from_numpy(a)[None, None], size=target, mode="nearest-exact")
    np.testing.assert_array_equal(nearest_resize(a, target), expected[0, 0].numpy())


def test_load_arrays_gives_volumes_at_the_volume_size(tmp_path: Path) -> None:
    lidc_like(tmp_path / "data", n=8)
    c = volume_campaign(tmp_path / "camp", tmp_path / "data")
    ingest(c, "generic")
    ledger = Ledger.open(c.ledger)
    assert volume_channels(ledger) == 1
    train, pool = load_arrays(c, ledger, "train"), load_arrays(c, ledger, "unlabeled")
    store = ImageStore(c.store)
    from medloop.ledger import Sample

    with ledger.reading() as s:
        path_of = {row.id: row.image_path for row in s.query(Sample)}
    ledger.close()
    assert train.images.shape[1:] == (1, 8, 16, 16) and train.images.dtype == np.float16
    assert train.masks.shape[1:] == (8, 16, 16) and set(np.unique(train.masks)) <= {0, 1}
    assert (train.masks.reshape(len(train), -1).max(1) == 1).all()  # every nodule survives the resize
    for i, sid in enumerate(train.sample_ids):
        expected = resize_volume(store.load_volume(path_of[int(sid)]), (8, 16, 16)).astype(np.float16)
        np.testing.assert_array_equal(train.images[i], expected)
    assert (pool.masks == IGNORE).all() and (pool.labels == -1).all()
    item = JointDataset(train)[0]
    assert item["image"].dtype == torch.float32 and tuple(item["image"].shape) == (1, 8, 16, 16)
    assert float(item["image"].max()) <= 1.0  # a CT window, not / 255 again


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([(6, 8, 8), (6, 8, 10)]))
def test_volume_augmentation_keeps_image_and_mask_aligned(seed: int, shape) -> None:
    rng = np.random.default_rng(seed)
    image = rng.random((2, *shape)).astype(np.float32)
    mask = (image[0] > 0.5).astype(np.uint8)
    out_image, out_mask = Augment(intensity=False)(image, mask, np.random.default_rng(seed))
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    np.testing.assert_array_equal(out_mask, (out_image[0] > 0.5).astype(np.uint8))
    z = rng.normal(0, 1, (1, *shape)).astype(np.float32)  # an MRI z-score: no clip to [0, 1]
    shifted, _ = Augment(flip=False, rotate=False)(z, mask, np.random.default_rng(seed))
    assert shifted.min() < 0 and np.corrcoef(shifted.ravel(), z.ravel())[0, 1] > 0.999


def test_a_volume_campaign_trains_the_3d_version_of_its_model(tmp_path: Path) -> None:
    c = volume_campaign(tmp_path / "camp", tmp_path)
    s = LoopSettings.from_campaign(c, volume_channels=4)
    assert s.model["name"] == "mtunet3d" and s.model["options"]["in_channels"] == 4
    assert s.volume_size == [8, 16, 16] and s.meta()["volume_size"] == [8, 16, 16] and s.channels == 4
    mttu = LoopSettings.from_campaign(volume_campaign(tmp_path / "c2", tmp_path, model={"name": "mttu"}),
                                      volume_channels=1)
    assert mttu.model["name"] == "mttu3d" and mttu.model["options"]["image_size"] == [8, 16, 16]
    with pytest.raises(ValueError, match='model.name = "jrl" has no 3D version; the campaign holds volumes'):
        LoopSettings.from_campaign(volume_campaign(tmp_path / "c3", tmp_path, model={"name": "jrl", "depth": 3}),
                                   volume_channels=1)
    with pytest.raises(ValueError, match=r"data.volume_size = \[8, 16, 16\] cannot be divided by 2\*\*4 = 16"):
        LoopSettings.from_campaign(volume_campaign(tmp_path / "c4", tmp_path, model={"depth": 4}), volume_channels=1)
    assert LoopSettings.from_campaign(c).model["name"] == "mtunet"  # an image campaign: unchanged


def test_hd95_in_millimetres_on_volumes() -> None:
    from medloop.trainers.metrics import hd95
    from medloop.trainers.metrics.segmentation import surface

    p, g = np.zeros((6, 4, 4), np.uint8), np.zeros((6, 4, 4), np.uint8)
    p[0, 1, 1], g[3, 1, 1] = 1, 1
    assert hd95(p, g, spacing=(2.0, 1.0, 1.0)) == pytest.approx(6.0)  # 3 slices of 2 mm
    assert hd95(p, g) == pytest.approx(3.0)  # voxels
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    assert int(surface(cube).sum()) == 26  # 6-connected erosion leaves only the centre inside
    assert hd95(p, np.zeros_like(g), spacing=(2.0, 1.0, 1.0)) == pytest.approx(float(np.sqrt(12**2 + 4**2 + 4**2)))


def test_evidential_voxel_uncertainty_on_a_volume_model() -> None:
    """Subjective-logic vacuity per voxel (Ren, Zou et al., UML, MICCAI 2023, Eq. 1-2) on a 3D model:
    Q / S with alpha = softplus(logits) + 1, the same formula as for pixels."""
    from medloop.trainers.models import build
    from medloop.trainers.uncertainty import score_batch

    torch.manual_seed(0)
    model = build("mtunet3d", width=4, depth=3, in_channels=2, num_classes=2).eval()
    x = torch.rand(2, 2, 8, 16, 16)
    s = score_batch(model, x, method="evidential", cls_head="evidential", seg_head="evidential")
    with torch.no_grad():
        alpha = torch.nn.functional.softplus(model(x).seg_logits) + 1.0
    expected = (alpha.shape[1] / alpha.sum(1)).numpy()
    assert s.pixel_uncertainty.shape == (2, 8, 16, 16)
    np.testing.assert_allclose(s.pixel_uncertainty, expected, rtol=1e-5)
    assert np.isnan(s.std).all() and (s.vacuity > 0).all()  # one pass: no MC std
