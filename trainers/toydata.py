"""A tiny, easily learnable dataset written straight into a campaign's ledger and image store.

Class 0 = empty noisy background, class 1 = a bright disc, class 2 = a bright square; the mask
is the shape. Used by the Ray train/score/tune tests and ``bench/bench_train.py`` (the synthetic
phantoms of ``medloop.data.synthetic`` are the realistic data; this one learns in seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medloop.config import Campaign
from medloop.data.imagestore import ImageStore, content_hash
from medloop.ledger.schema import Sample
from medloop.ledger.store import Ledger, add_human_label, add_truth_label


def toy_sample(rng: np.random.Generator, cls: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (S, S), mask uint8 {0, 1}) for class 0 (empty), 1 (disc) or 2 (square)."""
    img = np.clip(rng.normal(0.25, 0.08, (size, size)), 0, 1)
    mask = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    r = rng.uniform(0.14, 0.22) * size
    cy, cx = rng.uniform(r + 1, size - r - 1, 2)
    if cls == 1:
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = 1
    elif cls == 2:
        mask[(np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)] = 1
    boost = rng.uniform(0.3, 0.4) if cls == 1 else rng.uniform(0.6, 0.7)  # squares are brighter too
    img = np.where(mask > 0, np.clip(img + boost, 0, 1), img)
    return (img * 255).astype(np.uint8), mask


def toy_campaign(folder: str | Path, **overrides: Any) -> Campaign:
    """A campaign for tiny CPU runs: 32x32 grey images, width-4 mtunet, 2 workers, few epochs."""
    data: dict[str, Any] = {
        "name": "toy",
        "root": str(folder),
        "data": {"image_size": 32, "channels": 1},
        "model": {"name": "mtunet", "width": 4, "depth": 2, "dropout": 0.1,
                  "options": {"loss_options": {"seg_weight": 1.0, "cls_weight": 1.0}}},
        "compute": {"num_workers": 2, "epochs": 4, "batch_size": 4, "lr": 1e-2, "patience": 10, "keep": "best",
                    "lr_schedule": "constant", "augment": ["flip", "rotate"], "score_batch_size": 16,
                    "score_actors": 1},
        "uncertainty": {"mc_passes": 4},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Campaign.model_validate(data)


def populate(
    campaign: Campaign,
    ledger: Ledger,
    *,
    n_train: int = 48,
    n_val: int = 24,
    n_pool: int = 0,
    seed: int = 0,
    masks: bool = True,
) -> dict[str, list[int]]:
    """Write balanced toy samples: train and val with human labels, pool with hidden truth.

    Returns sample ids per split.
    """
    store = ImageStore(campaign.store)
    size = campaign.data.image_size
    classes = campaign.data.classes
    rng = np.random.default_rng(seed)
    ids: dict[str, list[int]] = {"train": [], "val": [], "pool": []}
    with ledger.transaction() as s:
        for split, n in (("train", n_train), ("val", n_val), ("pool", n_pool)):
            for i in range(n):
                cls = i % 3
                img, mask = toy_sample(rng, cls, size)
                uid = f"toy-{seed}-{split}-{i}"
                rel = store.put_image(uid, img)
                sample = Sample(uid=uid, content_hash=content_hash(img), image_path=rel, source="toy",
                                split=split, height=size, width=size, channels=1)
                s.add(sample)
                s.flush()
                mask_rel = store.put_mask(f"truth/{uid}", mask) if masks else None
                if split == "pool":
                    add_truth_label(s, sample.id, class_name=classes[cls], mask_path=mask_rel, source="toy")
                else:
                    add_human_label(s, sample.id, class_name=classes[cls], mask_path=mask_rel, author="toy")
                ids[split].append(sample.id)
    return ids
