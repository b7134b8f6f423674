"""Ray Data pool scoring: Prediction rows, store maps, incremental re-scoring."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from sqlalchemy import select

from medloop.data.imagestore import ImageStore
from medloop.ledger.schema import Prediction
from medloop.ledger.store import Ledger
from medloop.trainers.checkpoints import build_model, save_checkpoint
from medloop.trainers.plain import LoopSettings
from medloop.trainers.score import score_samples
from medloop.trainers.toydata import populate, toy_campaign


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("score")
    campaign = toy_campaign(folder, compute={"score_batch_size": 4})
    ledger = Ledger.open(campaign.ledger)
    ids = populate(campaign, ledger, n_train=3, n_val=3, n_pool=7)
    settings = LoopSettings.from_campaign(campaign)
    model = build_model(settings.model)
    ckpt = save_checkpoint(folder / "ckpt", model, {**settings.meta(), "global_step": 0, "epoch": 0, "metrics": {}})
    return campaign, ledger, ids, str(ckpt)


def test_scores_written_to_ledger_and_store(setup):
    campaign, ledger, ids, ckpt = setup
    report = score_samples(campaign, ledger, round_id=1, checkpoint_path=ckpt, model_version="round-1")
    assert report.written == 10 and report.skipped == 0 and report.candidates == 10
    with ledger.reading() as s:
        rows = s.scalars(select(Prediction).where(Prediction.model_version == "round-1")).all()
    assert sorted(r.sample_id for r in rows) == sorted(ids["pool"] + ids["val"])
    store = ImageStore(campaign.store)
    for r in rows:
        assert r.round_id == 1 and len(r.probs) == 3 and abs(sum(r.probs) - 1) < 1e-4
        assert r.pred_class == int(np.argmax(r.probs)) and r.confidence == pytest.approx(max(r.probs), abs=1e-5)
        for col in ("std", "entropy", "mutual_info", "margin", "seg_uncertainty_image", "lesion_fraction"):
            assert getattr(r, col) is not None, col
        assert r.vacuity is None  # softmax heads: no vacuity
        assert r.mask_path.startswith("masks/pred/round-1/") and r.umap_path.startswith("arrays/umap/round-1/")
        assert store.load_array(r.umap_path).shape == (32, 32)
        assert store.load_mask(r.mask_path).shape == (32, 32)
        assert r.embedding is not None and len(r.embedding) % 4 == 0


def test_scoring_actor_computes_on_every_cpu_of_the_cluster(setup):
    """Ray starts a one-CPU actor with OMP_NUM_THREADS=1; the scorer sets the cluster's CPUs / actors torch
    threads itself (2 here: before, pool scoring ran on one of the 2 cores) and the report says so."""
    campaign, ledger, _, ckpt = setup
    report = score_samples(campaign, ledger, round_id=3, checkpoint_path=ckpt, model_version="round-3-threads")
    assert report.written == 10
    assert report.extra["torch_threads"] == 2
    two = campaign.model_copy(update={"compute": campaign.compute.model_copy(update={"score_actors": 2})})
    shared = score_samples(two, ledger, round_id=3, checkpoint_path=ckpt, model_version="round-3-two-actors")
    assert shared.written == 10 and shared.extra["torch_threads"] == 1
    one = campaign.model_copy(update={"compute": campaign.compute.model_copy(update={"score_threads": 1})})
    assert score_samples(one, ledger, round_id=3, checkpoint_path=ckpt,
                         model_version="round-3-one-thread").extra["torch_threads"] == 1


def test_incremental_rescoring_skips_done(setup):
    campaign, ledger, ids, ckpt = setup
    score_samples(campaign, ledger, round_id=1, checkpoint_path=ckpt, model_version="round-1")
    again = score_samples(campaign, ledger, round_id=1, checkpoint_path=ckpt, model_version="round-1")
    assert again.written == 0 and again.skipped == 10
    more = populate(campaign, ledger, n_train=0, n_val=0, n_pool=2, seed=5)
    third = score_samples(campaign, ledger, round_id=1, checkpoint_path=ckpt, model_version="round-1",
                          splits=("pool",))
    assert third.written == 2 and third.skipped == 7
    # another model version scores everything again
    other = score_samples(campaign, ledger, round_id=2, checkpoint_path=ckpt, model_version="round-2",
                          splits=("pool",), use_ray=False)
    assert other.written == 9
    with ledger.reading() as s:
        got = s.scalars(select(Prediction.sample_id).where(Prediction.model_version == "round-1")).all()
    assert len(got) == len(set(got)) == 12 and set(more["pool"]) <= set(got)


@pytest.mark.parametrize(("mc_cache", "cached"), [("on", True), ("off", False), ("auto", "auto")])
def test_uncertainty_mc_cache_reaches_the_sampler(setup, monkeypatch, mc_cache, cached):
    """``uncertainty.mc_cache`` decides how the score step samples: the sampler is called with it."""
    import medloop.trainers.uncertainty as unc

    campaign, ledger, ids, ckpt = setup
    seen: list[object] = []
    real = unc.score_batch

    def spy(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        seen.append(kw["cached"])
        return real(*args, **kw)

    monkeypatch.setattr(unc, "score_batch", spy)
    c = campaign.model_copy(update={"uncertainty": campaign.uncertainty.model_copy(update={"mc_cache": mc_cache})})
    score_samples(c, ledger, round_id=2, checkpoint_path=ckpt, model_version=f"round-2-{mc_cache}", use_ray=False)
    assert seen and set(seen) == {cached}
