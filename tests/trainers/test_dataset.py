"""The training loader: a small labeled set repeated up to ``compute.min_epoch_samples`` an epoch (off by default),
each repeat with an augmentation of its own; evaluation loaders and large sets untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from medloop.config import Campaign
from medloop.trainers.dataset import JointDataset, SampleArrays
from medloop.trainers.plain import LoopSettings, make_loader, train_plain


def arrays(n: int, size: int = 8) -> SampleArrays:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8)
    masks = (rng.random((n, size, size)) > 0.5).astype(np.uint8)
    return SampleArrays(np.arange(n, dtype=np.int64), [f"s{i}" for i in range(n)], images, masks,
                        np.arange(n, dtype=np.int64) % 3, ["human"] * n)


def settings(**kw) -> LoopSettings:
    base = {"model": {"name": "mtunet", "options": {"width": 4, "depth": 2}}, "classes": ["a", "b", "c"],
            "augment": ["flip", "rotate", "intensity"], "batch_size": 16, "image_size": 8}
    return LoopSettings(**{**base, **kw})


def drawn(loader) -> tuple[list[int], list[torch.Tensor]]:
    index, images = [], []
    for batch in loader:
        index += batch["index"].tolist()
        images += list(batch["image"])
    return index, images


def test_small_set_is_repeated_to_the_minimum_with_fresh_augmentations():
    loader = make_loader(arrays(22), settings(min_epoch_samples=256), train=True)
    index, images = drawn(loader)
    assert len(loader) == 16 and len(index) == 256  # 256 / 16 steps instead of 2
    counts = np.bincount(index, minlength=22)
    assert set(counts.tolist()) == {11, 12}  # 256 = 22 * 11 + 14: every sample 11 or 12 times
    # the repeats of one sample are not the same tensor: each item draws its own augmentation
    first = [img for i, img in zip(index, images) if i == 0]
    assert len({img.numpy().tobytes() for img in first}) > 1


def test_a_set_at_or_above_the_minimum_is_one_pass():
    data = arrays(40)
    a = drawn(make_loader(data, settings(min_epoch_samples=32), train=True))
    b = drawn(make_loader(data, settings(min_epoch_samples=0), train=True))
    assert sorted(a[0]) == list(range(40)) and a[0] == b[0]
    assert all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def test_evaluation_loader_ignores_the_minimum():
    index, _ = drawn(make_loader(arrays(5), settings(min_epoch_samples=256), train=False))
    assert index == [0, 1, 2, 3, 4]


def test_ddp_workers_share_the_repeated_epoch():
    dataset = JointDataset(arrays(22), length=256)
    shards = [list(DistributedSampler(dataset, num_replicas=2, rank=r, shuffle=True, seed=0)) for r in (0, 1)]
    assert [len(s) for s in shards] == [128, 128] and sorted(shards[0] + shards[1]) == list(range(256))
    assert dataset[255]["index"].item() == 255 % 22


def test_length_below_the_samples_is_refused():
    with pytest.raises(ValueError, match="below the 22 samples"):
        JointDataset(arrays(22), length=10)
    with pytest.raises(IndexError):
        JointDataset(arrays(3), length=6)[6]


def test_campaign_default_and_optimiser_steps(one_torch_thread):
    assert LoopSettings.from_campaign(Campaign.model_validate({})).min_epoch_samples == 0  # one pass
    assert LoopSettings.from_campaign(Campaign.model_validate({"compute": {"min_epoch_samples": 96}})
                                      ).min_epoch_samples == 96
    data = arrays(22)
    res = train_plain(settings(min_epoch_samples=64, epochs=2, lr_schedule="constant"), data, data.subset([]))
    assert [row["global_step"] for row in res.history] == [4, 8]  # 64 / 16 steps an epoch, not 2
    assert [row["images"] for row in res.history] == [64.0, 64.0]
