"""The brush pre-annotation of a pushed image (``labeling.push.preannotation_mask``): pure, no server.

Scoring records the predicted mask's ``lesion_fraction``; the push reads it instead of the mask file (one read
less per task): the result is the same as reading the mask, an empty predicted mask (a class without a lesion)
gives no brush region even where the probability map holds one, and a multi-region campaign still reads its
label map for the regions."""

from pathlib import Path

import numpy as np

from medloop.data.imagestore import ImageStore, mask_at, prob_mask
from medloop.labeling.push import preannotation_mask
from medloop.ledger import Prediction

H, W = 200, 256


def _scored(store: ImageStore, uid: str, mask: np.ndarray, *, recorded: bool) -> Prediction:
    """What scoring stores for one image at the model size (64x64): the lesion probability, the pixel
    uncertainty, the predicted mask; ``recorded``: with its lesion fraction, as scoring writes it."""
    yy, xx = np.mgrid[:64, :64]
    prob = (1.0 / (1.0 + np.exp(np.sqrt((yy - 30.0) ** 2 + (xx - 34.0) ** 2) - 12.0))).astype(np.float16)
    umap = store.put_array(f"umap/round-1/{uid}", np.full((64, 64), 0.1, np.float32))
    store.put_array(f"prob/round-1/{uid}", prob)
    return Prediction(round_id=1, sample_id=1, model_version="round-1", probs=[0.5, 0.5], pred_class=1,
                      confidence=0.5, mask_path=store.put_mask(f"pred/round-1/{uid}", mask), umap_path=umap,
                      lesion_fraction=float((mask > 0).mean()) if recorded else None)


def _lesion() -> np.ndarray:
    yy, xx = np.mgrid[:64, :64]
    return (np.sqrt((yy - 30.0) ** 2 + (xx - 34.0) ** 2) <= 12.0).astype(np.uint8)


def test_the_recorded_lesion_fraction_stands_in_for_the_mask_file(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    read = preannotation_mask(store, _scored(store, "a", _lesion(), recorded=False), H, W)
    pred = _scored(store, "b", _lesion(), recorded=True)
    assert read is not None and read.any()
    store.path(pred.mask_path or "").unlink()  # not read: the fraction says there is a lesion
    got = preannotation_mask(store, pred, H, W)
    assert got is not None and np.array_equal(got, read)
    assert np.array_equal(got, prob_mask(store.load_array("arrays/prob/round-1/b.npy"), (H, W)))


def test_an_empty_predicted_mask_gives_no_region_with_or_without_the_fraction(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)  # the probability map holds a lesion, the predicted class has none
    for uid, recorded in (("c", False), ("d", True)):
        assert preannotation_mask(store, _scored(store, uid, np.zeros((64, 64), np.uint8), recorded=recorded),
                                  H, W) is None


def test_a_multi_region_campaign_reads_the_regions_from_the_label_map(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    regions = _lesion()
    regions[24:36, 28:40] = 2  # a core inside the lesion
    pred = _scored(store, "e", regions, recorded=True)
    got = preannotation_mask(store, pred, H, W, regions=True)
    native = prob_mask(store.load_array("arrays/prob/round-1/e.npy"), (H, W))
    want = np.where(native > 0, np.maximum(mask_at(regions, (H, W)), 1), 0)
    assert got is not None and set(np.unique(got)) == {0, 1, 2} and np.array_equal(got, want)
