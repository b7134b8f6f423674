"""Test-set evaluation: evaluation_metrics against hand-computed numbers, evaluate_checkpoint wiring."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medloop.trainers.evaluate import evaluate_checkpoint, evaluation_metrics

CLASSES = ["normal", "benign", "malignant"]


def _block(r0: int, r1: int, c0: int, c1: int, size: int = 8) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


def four_cases() -> dict[str, np.ndarray]:
    """Case 0: benign lesion (2x2), half of it predicted -> Dice 2/3, IoU 1/2, HD95 1.
    Case 1: malignant lesion predicted exactly -> Dice 1, IoU 1, HD95 0.
    Case 2: normal, predicted empty. Case 3: normal with a false lesion.
    Classes: 0 -> benign (right), 1 -> benign (wrong, malignant), 2 -> normal (right), 3 -> malignant (wrong)."""
    mask = np.stack([_block(1, 3, 1, 3), _block(4, 6, 4, 6), np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)])
    pred_mask = np.stack([_block(1, 2, 1, 3), _block(4, 6, 4, 6), np.zeros((8, 8), np.uint8), _block(0, 2, 0, 2)])
    probs = np.array([[0.09, 0.82, 0.09], [0.20, 0.62, 0.18], [0.72, 0.18, 0.10], [0.30, 0.05, 0.65]])
    return {"probs": probs, "label": np.array([1, 2, 0, 0]), "pred_mask": pred_mask, "mask": mask}


def test_hand_computed_metrics() -> None:
    m = evaluation_metrics(four_cases(), 3, CLASSES)
    assert m["n"] == 4 and m["n_class"] == 4 and m["n_lesion"] == 2 and m["n_no_lesion"] == 2
    # segmentation: mean per lesion case
    assert m["dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["iou"] == pytest.approx((0.5 + 1) / 2)
    assert m["hd95"] == pytest.approx((1 + 0) / 2)  # case 0: pooled distances [0,0,0,0,1,1] -> 95th pct 1
    assert m["empty_rate"] == pytest.approx(0.5)
    # classification
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["confusion"] == [[1, 0, 1], [0, 1, 0], [0, 1, 0]]
    assert m["f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert m["auc"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    # ECE, 15 bins: bin 9 {0.62 wrong, 0.65 wrong}, bin 10 {0.72 right}, bin 12 {0.82 right}
    assert m["ece"] == pytest.approx(2 / 4 * 0.635 + 1 / 4 * 0.28 + 1 / 4 * 0.18)
    assert m["brier"] == pytest.approx((0.0486 + 1.0968 + 0.1208 + 0.915) / 4)
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.82, 0.18, 0.72, 0.30])))
    pc = m["per_class"]
    assert pc["normal"] == pytest.approx({"n": 2, "recall": 0.5, "precision": 1.0, "accuracy": 0.75})
    assert pc["benign"] == pytest.approx({"n": 1, "recall": 1.0, "precision": 0.5, "accuracy": 0.75})
    assert pc["malignant"] == pytest.approx({"n": 1, "recall": 0.0, "precision": 0.0, "accuracy": 0.5})


def test_unlabelled_and_ignored_cases_are_left_out() -> None:
    p = four_cases()
    extra_mask = np.full((1, 8, 8), 255, np.uint8)  # no mask at all
    p = {"probs": np.concatenate([p["probs"], [[0.0, 0.0, 1.0]]]), "label": np.concatenate([p["label"], [-1]]),
         "pred_mask": np.concatenate([p["pred_mask"], np.ones((1, 8, 8), np.uint8)]),
         "mask": np.concatenate([p["mask"], extra_mask])}
    m = evaluation_metrics(p, 3, CLASSES)
    assert m["n"] == 5 and m["n_class"] == 4 and m["n_lesion"] == 2 and m["n_no_lesion"] == 2
    assert m["accuracy"] == pytest.approx(0.5) and m["dice"] == pytest.approx(5 / 6) and m["empty_rate"] == 0.5


def test_undefined_metrics_are_none() -> None:
    """No lesion case: Dice / IoU / HD95 None; no class label: accuracy None; JSON-friendly."""
    p = {"probs": np.array([[0.5, 0.3, 0.2]]), "label": np.array([-1]),
         "pred_mask": np.zeros((1, 8, 8), np.uint8), "mask": np.zeros((1, 8, 8), np.uint8)}
    m = evaluation_metrics(p, 3, CLASSES)
    assert m["dice"] is None and m["iou"] is None and m["hd95"] is None and m["empty_rate"] == 1.0
    assert m["accuracy"] is None and m["ece"] is None and m["per_class"] == {} and m["confusion"] is None
    with pytest.raises(ValueError):
        evaluation_metrics(p, 2, CLASSES)


def test_empty_prediction_on_a_lesion_counts_the_diagonal() -> None:
    p = {"probs": np.array([[0.1, 0.8, 0.1]]), "label": np.array([1]),
         "pred_mask": np.zeros((1, 8, 8), np.uint8), "mask": _block(2, 4, 2, 4)[None]}
    m = evaluation_metrics(p, 3, CLASSES)
    assert m["dice"] == 0.0 and m["hd95"] == pytest.approx(math.hypot(8, 8)) and m["empty_rate"] is None


# ---- evaluate_checkpoint on a real ledger ----------------------------------------------------------


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    from medloop.config import parse_campaign
    from medloop.data.ingest import ingest

    root = tmp_path_factory.mktemp("eval")
    c = parse_campaign({"name": "ev", "root": str(root / "camp"), "model": {"width": 4, "depth": 2},
                        "data": {"n_samples": 40, "image_size": 32, "seed": 3}}, "<test>")
    ingest(c, "synthetic")
    return c, root


def _checkpoint(campaign, folder: Path, **meta_override) -> tuple[str, torch.nn.Module]:
    from medloop.trainers.checkpoints import build_model, save_checkpoint
    from medloop.trainers.plain import LoopSettings

    settings = LoopSettings.from_campaign(campaign)
    torch.manual_seed(0)
    model = build_model(settings.model).eval()
    path = save_checkpoint(folder, model, {**settings.meta(), **meta_override})
    return str(path), model


def test_evaluate_checkpoint_uses_the_test_split_human_labels(ingested) -> None:
    from sqlalchemy import select

    from medloop.data.imagestore import ImageStore
    from medloop.ledger.schema import Label, Sample
    from medloop.ledger.store import Ledger
    from medloop.trainers.dataset import fit_image

    campaign, root = ingested
    ckpt, model = _checkpoint(campaign, root / "ckpt")
    led = Ledger.open(campaign.ledger)
    try:
        m = evaluate_checkpoint(campaign, led, ckpt)
        with led.reading() as s:
            rows = s.execute(select(Sample, Label).join(Label, Label.sample_id == Sample.id).where(
                Sample.split == "test", Label.kind == "human", Label.active.is_(True)).order_by(Sample.id)).all()
    finally:
        led.close()
    assert m["split"] == "test" and m["device"] == "cpu" and m["n"] == len(rows) > 0
    # an independent forward pass over the same cases
    store = ImageStore(campaign.store)
    x = np.stack([fit_image(store.load_image(smp.image_path), 32, 1) for smp, _ in rows])
    x = torch.from_numpy(x).float() / 255
    labels = np.array([CLASSES.index(lab.class_name) for _, lab in rows])
    with torch.no_grad():
        out = model(x)
    yhat = out.cls_logits.argmax(1).numpy()
    assert m["accuracy"] == pytest.approx(float(np.mean(yhat == labels)))
    assert sum(v["n"] for v in m["per_class"].values()) == len(rows)
    lesions = sum(bool(store.load_mask(lab.mask_path).any()) for _, lab in rows)
    assert m["n_lesion"] == lesions and m["n_no_lesion"] == len(rows) - lesions
    # the URL form opens and closes the ledger itself; "val" is another split
    v = evaluate_checkpoint(campaign, campaign.ledger, ckpt, split="val")
    assert v["split"] == "val" and v["n"] > 0


def test_evaluate_checkpoint_refuses_a_mismatched_checkpoint(ingested) -> None:
    campaign, root = ingested
    ckpt, _ = _checkpoint(campaign, root / "ckpt64", image_size=64)
    with pytest.raises(ValueError, match="image_size"):
        evaluate_checkpoint(campaign, campaign.ledger, ckpt)
