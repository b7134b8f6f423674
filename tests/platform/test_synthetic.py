"""The phantom generator: determinism, exact class mix, and the class cues it promises."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.data.synthetic import class_counts, generate


def _aspect(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    return (np.ptp(xs) + 1) / (np.ptp(ys) + 1)


def test_same_seed_same_images_other_seed_differs() -> None:
    a = generate(12, 32, seed=7, class_mix=[1, 1, 1])
    b = generate(12, 32, seed=7, class_mix=[1, 1, 1])
    c = generate(12, 32, seed=8, class_mix=[1, 1, 1])
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks) and a.labels == b.labels
    assert not np.array_equal(a.images, c.images)
    assert a.images.dtype == np.uint8 and a.images.shape == (12, 32, 32)


def test_class_mix_is_exact() -> None:
    assert class_counts(10, [0.2, 0.5, 0.3]) == [2, 5, 3]
    assert sum(class_counts(7, [1, 1, 1])) == 7
    p = generate(20, 32, seed=0, class_mix=[0.2, 0.5, 0.3])
    assert [p.labels.count(k) for k in ("normal", "benign", "malignant")] == [4, 10, 6]


def test_class_cues() -> None:
    p = generate(60, 48, seed=1, class_mix=[1, 1, 1], difficulty=0.2)
    labels = np.array(p.labels)
    assert p.masks[labels == "normal"].sum() == 0
    assert all(m.any() for m in p.masks[labels != "normal"])
    benign = np.mean([_aspect(m) for m in p.masks[labels == "benign"]])
    malignant = np.mean([_aspect(m) for m in p.masks[labels == "malignant"]])
    assert benign > 1.2 and malignant < 0.85
    # lesions are hypoechoic: darker inside than outside
    for img, m in zip(p.images[labels != "normal"], p.masks[labels != "normal"]):
        assert img[m == 1].mean() < img[m == 0].mean()
    # posterior acoustic shadowing: below a malignant lesion is darker than beside it
    ratios = []
    for img, m in zip(p.images[labels == "malignant"], p.masks[labels == "malignant"]):
        ys, xs = np.nonzero(m)
        below = img[ys.max() + 2 :, xs.min() : xs.max() + 1]
        beside = np.concatenate([img[ys.max() + 2 :, : max(xs.min() - 2, 1)], img[ys.max() + 2 :, xs.max() + 3 :]],
                                axis=1)
        if below.size and beside.size:
            ratios.append(below.mean() / beside.mean())
    assert np.mean(ratios) < 0.9


def test_difficulty_brings_classes_together() -> None:
    easy = generate(60, 48, seed=2, class_mix=[0, 1, 1], difficulty=0.0)
    hard = generate(60, 48, seed=2, class_mix=[0, 1, 1], difficulty=1.0)

    def gap(p):
        lab = np.array(p.labels)
        return np.mean([_aspect(m) for m in p.masks[lab == "benign"]]) - np.mean(
            [_aspect(m) for m in p.masks[lab == "malignant"]]
        )

    assert gap(easy) > gap(hard) + 0.3


def test_unknown_class_rejected() -> None:
    with pytest.raises(ValueError, match="cyst"):
        generate(6, 32, classes=["normal", "cyst"], class_mix=[1, 1])
