"""A volume campaign whose model trains on patches (``data.patch_size``), for real: ingest of NIfTI phantoms, a
round (in-process training on random patches, validation, Ray Data scoring and evaluation over the whole grid
through the sliding window, selection, the registered MLflow model), then ``medloop predict`` on a volume file.

The model is ``mttu3d`` (its learned position embedding is made for the patch grid) without dropout, so its MC
passes agree and the pool's stored lesion probabilities can be checked against the sliding window's, and told
apart from one pass of the patch model over the whole grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select
from support import run_round_on_one_thread, tiny_campaign

from medloop.data.imagestore import ImageStore
from medloop.data.ingest import ingest
from medloop.data.phantoms3d import write_phantom_folder
from medloop.ledger import Ledger, Prediction, Round

VOLUME = [16, 32, 32]
PATCH = [16, 16, 16]


def _campaign(root: Path, data: Path, workers: int = 0, **data_keys):
    return tiny_campaign(
        root, data={"source": "generic", "path": str(data), "classes": ["idh_mutant", "idh_wildtype"],
                    "volume_size": VOLUME, "patch_size": PATCH, "unlabeled_fraction": 0.4, **data_keys},
        model={"name": "mttu", "width": 8, "depth": 2, "dropout": 0.0}, uncertainty={"mc_passes": 2},
        compute={"num_workers": workers, "epochs": 3, "batch_size": 4, "score_batch_size": 4},
        selection={"budget": 2, "tau_c": 0.5, "tau_u": 0.5, "max_ece": 1.0, "min_val_dice": 0.0, "mask_gate": 1.0},
        # under Ray Train, FixMatch's unlabeled batches are patches too
        training={"semi": "fixmatch" if workers else "none"})


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "ray-train-fixmatch"])
def test_a_round_that_trains_on_patches_and_predicts_over_the_whole_grid(tmp_path: Path, workers: int) -> None:
    write_phantom_folder(tmp_path / "data", n=14, size=16)
    c = _campaign(tmp_path / "camp", tmp_path / "data", workers)
    ingest(c, "generic")
    out = run_round_on_one_thread(c)
    assert out.status == "done", out
    assert {"dice", "accuracy", "val_score"} <= set(out.metrics)  # validation ran over whole grids
    ledger, store = Ledger.open(c.ledger), ImageStore(c.store)
    with ledger.reading() as s:
        preds = list(s.scalars(select(Prediction)))
        ckpt = s.get(Round, 1).checkpoint_path
    ledger.close()
    assert preds and all(store.load_label_map(p.mask_path).shape == tuple(VOLUME) for p in preds)
    assert all(store.load_array(p.umap_path).shape == tuple(VOLUME) for p in preds)

    from medloop.trainers.checkpoints import load_model
    from medloop.trainers.windowed import SlidingWindow

    model, meta = load_model(ckpt)
    assert meta["patch_size"] == PATCH and meta["volume_size"] == VOLUME
    assert isinstance(model, SlidingWindow) and meta["model"]["options"]["image_size"] == PATCH
    patch_model, _ = load_model(ckpt, windowed=False)
    from medloop.data.imagestore import prob_map_path
    from medloop.ledger import Sample
    from medloop.trainers.dataset import model_volume

    ledger = Ledger.open(c.ledger)
    with ledger.reading() as s:
        sample = s.get(Sample, preds[0].sample_id)
    ledger.close()
    x = torch.from_numpy(model_volume(store, sample.image_path, VOLUME).astype(np.float32))[None]
    stored = store.load_array(prob_map_path(preds[0].umap_path)).astype(np.float32)
    from medloop.trainers.uncertainty.mc import mc_sample

    with torch.no_grad():
        window = 1.0 - mc_sample(model, x, 2).seg_probs.mean(0)[0, 0].numpy()  # patch by patch, blended
        whole = torch.softmax(patch_model(x).seg_logits, 1)[0, 1].numpy()
    gap = float(np.abs(stored - window).max())
    assert gap < 0.01, gap  # scored through the sliding window (float16 storage, bf16 autocast)
    assert float(np.abs(stored - whole).max()) > 10 * max(gap, 1e-3)  # not one pass over the whole grid

    # the registered MLflow model (torch.export programs of the patch model, no medloop import) covers the grid
    # with its own sliding window: one deterministic pass agrees with medloop's SlidingWindow (MONAI)
    import mlflow

    mlflow.set_tracking_uri(c.tracking_uri)
    served = mlflow.pyfunc.load_model(f"models:/medloop-{c.name}/1")
    x = np.random.default_rng(0).random((2, 4, *VOLUME)).astype(np.float32)
    got = served.predict(x, params={"mc_passes": 1})
    assert got["mask"].shape == (2, *VOLUME) and got["class_probs"].shape == (2, 2)
    with torch.no_grad():
        ours = model(torch.from_numpy(x))
    probs = torch.softmax(ours.cls_logits, 1).numpy()  # a mean of logits against a mean of probabilities
    np.testing.assert_allclose(got["class_probs"], probs, atol=0.05)
    lesion = torch.softmax(ours.seg_logits, 1)[:, 1].numpy()
    assert np.abs(got["mask_probs"] - lesion).mean() < 0.02

    from medloop.trainers.evaluate import evaluate_checkpoint

    test = evaluate_checkpoint(c, c.ledger, ckpt)
    assert test["n"] > 0 and test["dice"] is not None

    from medloop.predict import run_predict

    write_phantom_folder(tmp_path / "new", n=2, seed=5, size=16)
    report = run_predict(c, [tmp_path / "new" / "images"], model=ckpt, out=tmp_path / "pred", passes=2)
    assert report.predicted == 2 and not report.unreadable
    import nibabel as nib

    for f in sorted((tmp_path / "pred" / "masks").glob("*.nii.gz")):
        assert nib.load(f).shape == (16, 16, 16)  # back on the input's own grid
        assert np.asarray(nib.load(f).dataobj).max() <= 1


def test_patch_size_larger_than_the_grid_or_not_divisible_is_refused(tmp_path: Path) -> None:
    from medloop.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.patch_size: expected .* at most data.volume_size"):
        tiny_campaign(tmp_path, data={"volume_size": [16, 32, 32], "patch_size": [32, 16, 16]})
    with pytest.raises(ConfigError, match=r"data.patch_size = \[12, 12, 12\] cannot be divided by 2\*\*3 = 8 .* "
                                          r"use data.patch_size = \[16, 16, 16\]"):
        tiny_campaign(tmp_path, data={"volume_size": [16, 32, 32], "patch_size": [12, 12, 12]},
                      model={"name": "mtunet3d", "depth": 3})
