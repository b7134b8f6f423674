"""2D training augmentations: ``hflip`` keeps the depth axis of an ultrasound image; ``affine`` moves image and
mask together and keeps the mask's values (0, 1, 255 = ignore)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medloop.trainers.dataset import IGNORE, Augment, random_affine


def _top_heavy(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """An image bright in its top rows only, a lesion left of the centre, an ignored bottom row."""
    image = np.zeros((1, size, size), np.float32)
    image[0, : size // 4] = 1.0
    mask = np.zeros((size, size), np.uint8)
    mask[10:20, 4:12] = 1
    mask[-1] = IGNORE
    return image, mask


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_hflip_never_turns_the_image_upside_down(seed: int) -> None:
    image, mask = _top_heavy()
    out, out_mask = Augment.from_names(["hflip"])(image, mask, np.random.default_rng(seed))
    np.testing.assert_array_equal(out, image)  # left-right symmetric content: the top stays on top
    assert (out_mask[-1] == IGNORE).all()
    flipped = np.array_equal(out_mask, mask[:, ::-1])
    assert flipped or np.array_equal(out_mask, mask)


def test_hflip_flips_left_right_about_half_the_time() -> None:
    image, mask = _top_heavy()
    aug = Augment.from_names(["hflip"])
    flips = sum(np.array_equal(aug(image, mask, np.random.default_rng(s))[1], mask[:, ::-1]) for s in range(400))
    assert 160 < flips < 240


def test_flip_includes_up_down_and_hflip_alone_does_not() -> None:
    image, mask = _top_heavy()
    both, left_right = Augment.from_names(["flip"]), Augment.from_names(["hflip"])
    upside_down = [both(image, mask, np.random.default_rng(s))[0][0, -1, 0] == 1.0 for s in range(100)]
    assert any(upside_down)
    assert not any(left_right(image, mask, np.random.default_rng(s))[0][0, -1, 0] == 1.0 for s in range(100))


def test_affine_identity_ranges_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import medloop.trainers.dataset as dataset

    monkeypatch.setattr(dataset, "AFFINE_DEGREES", 0.0)
    monkeypatch.setattr(dataset, "AFFINE_SCALE", 0.0)
    monkeypatch.setattr(dataset, "AFFINE_SHIFT", 0.0)
    image, mask = _top_heavy()
    out, out_mask = random_affine(image, mask, np.random.default_rng(0))
    np.testing.assert_allclose(out, image, atol=1e-6)
    np.testing.assert_array_equal(out_mask, mask)


def test_affine_quarter_turn_matches_rot90(monkeypatch: pytest.MonkeyPatch) -> None:
    """At exactly 90 degrees, no scale and no shift, the warp is numpy's quarter turn (the rotation's sense is
    the only free choice; either sense is a valid augmentation, so both are accepted)."""
    import medloop.trainers.dataset as dataset

    monkeypatch.setattr(dataset, "AFFINE_SCALE", 0.0)
    monkeypatch.setattr(dataset, "AFFINE_SHIFT", 0.0)

    class Fixed:
        def uniform(self, low: float, high: float, size: int | None = None):
            return np.zeros(size) if size else high

    monkeypatch.setattr(dataset, "AFFINE_DEGREES", 90.0)
    image, mask = _top_heavy(31)
    out, out_mask = random_affine(image, mask, Fixed())  # type: ignore[arg-type]
    turns = [np.rot90(mask, k) for k in (1, 3)]
    assert any(np.array_equal(out_mask, t) for t in turns)
    assert any(np.allclose(out[0], np.rot90(image[0], k), atol=1e-5) for k in (1, 3))


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=30, deadline=None)
def test_affine_keeps_mask_values_and_moves_image_and_mask_together(seed: int) -> None:
    size = 48
    image = np.zeros((1, size, size), np.float32)
    mask = np.zeros((size, size), np.uint8)
    image[0, 16:32, 16:32] = 1.0  # the lesion is the bright square
    mask[16:32, 16:32] = 1
    mask[0, 0] = IGNORE
    out, out_mask = Augment.from_names(["affine"])(image, mask, np.random.default_rng(seed))
    assert out.shape == image.shape and out.dtype == np.float32
    assert set(np.unique(out_mask)) <= {0, 1, IGNORE}
    lesion = out_mask == 1
    assert 0.7 * 256 < lesion.sum() < 1.3 * 256  # scale within +-10 %: area within about +-21 %
    assert out[0][lesion].mean() > 0.9 and out[0][out_mask == 0].mean() < 0.1


def test_unknown_augmentation_is_named() -> None:
    with pytest.raises(ValueError, match="vflip"):
        Augment.from_names(["hflip", "vflip"])


def test_campaign_refuses_an_unknown_augmentation_at_load() -> None:
    from pydantic import ValidationError

    from medloop.config import Campaign

    assert Campaign.model_validate({"compute": {"augment": ["hflip", "affine"]}}).compute.augment == ["hflip", "affine"]
    assert Campaign.model_validate({"compute": {"augment": []}}).compute.augmentations(volume=False) == []
    with pytest.raises(ValidationError, match=r"compute\.augment|augment.*vflip"):
        Campaign.model_validate({"compute": {"augment": ["vflip"]}})


def test_default_augmentations_keep_an_image_upright_and_volumes_as_before() -> None:
    """Unset ``compute.augment``: a 2D campaign trains with hflip + affine + intensity (no up-down flip, no
    quarter turn), a volume campaign with flip + rotate + intensity; a set value wins for both."""
    from medloop.config import Campaign
    from medloop.trainers.plain import LoopSettings

    campaign = Campaign()
    assert campaign.compute.augment is None
    assert LoopSettings.from_campaign(campaign).augment == ["hflip", "affine", "intensity"]
    assert LoopSettings.from_campaign(campaign, volume_channels=4).augment == ["flip", "rotate", "intensity"]
    chosen = Campaign.model_validate({"compute": {"augment": ["flip", "rotate"]}})
    assert LoopSettings.from_campaign(chosen).augment == ["flip", "rotate"]
    assert LoopSettings.from_campaign(chosen, volume_channels=4).augment == ["flip", "rotate"]
