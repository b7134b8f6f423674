"""The registered model loads and serves without medloop, and predicts what medloop predicts.

The round's model is a real (tiny, untrained) checkpoint, exported with torch.export and logged as an
MLflow pyfunc "model from code" (medloop.tracking.export, medloop.tracking.pyfunc_model). Isolation is
real: the subprocesses that load or serve the model run with a ``medloop`` package first on their
PYTHONPATH whose ``__init__`` raises ImportError, so any import of medloop -- by the model's code or by
unpickling one of its classes -- fails loudly, in the loader and in the server's worker processes alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from processes import free_port, stop_process_group
from support import checkpoint_train_round, tiny_campaign

from medloop.ledger import Ledger
from medloop.tracking import RoundRecord, Tracker, model_name

POISON = 'raise ImportError("poison: medloop must not be imported where the registered model is used")\n'
LOADER = """
import sys
import numpy as np
try:
    import medloop  # noqa: F401
except ImportError as err:
    assert "poison" in str(err), err
else:
    raise SystemExit("medloop is importable: no isolation")
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
x = np.load(sys.argv[2])
det = model.predict(x, params={"mc_passes": 1})
mc = model.predict(x, params={"mc_passes": 4, "seed": 5})
leaked = sorted(n for n in sys.modules if n.split(".")[0] == "medloop")
assert not leaked, leaked
np.savez(sys.argv[3], **{f"det_{k}": v for k, v in det.items()}, **{f"mc_{k}": v for k, v in mc.items()})
"""
# served field -> medloop's BatchScores field
SAME = {"class_probs": "probs", "pred_class": "pred_class", "confidence": "confidence", "mask_probs": "fg_prob",
        "std": "std", "entropy": "entropy", "mutual_info": "mutual_info", "vacuity": "vacuity", "margin": "margin",
        "lesion_uncertainty": "seg_uncertainty", "lesion_fraction": "lesion_fraction",
        "pixel_uncertainty": "pixel_uncertainty"}


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, size, size), dtype=np.float32)


def medloop_scores(checkpoint: str, campaign, x: np.ndarray, passes: int, seed: int = 0):
    """medloop's own prediction (score_batch, as the score step runs it); passes 1 = one deterministic pass."""
    from medloop.config import model_heads
    from medloop.trainers.checkpoints import load_model
    from medloop.trainers.uncertainty import score_batch

    model, _ = load_model(checkpoint)
    cls_head, seg_head = model_heads(campaign.model)
    method = "deterministic" if passes == 1 else campaign.uncertainty.method
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return score_batch(model, torch.from_numpy(x), method=method, passes=passes, cls_head=cls_head,
                           seg_head=seg_head, boundary_band=campaign.uncertainty.boundary_band, cached=True,
                           no_lesion_class=campaign.data.classes.index(campaign.data.no_lesion_class))


def assert_same(served: dict[str, np.ndarray], ours, mc: bool) -> None:
    for key, field in SAME.items():
        np.testing.assert_allclose(np.asarray(served[key], np.float64), np.asarray(getattr(ours, field), np.float64),
                                   rtol=1e-4, atol=1e-5, equal_nan=True, err_msg=key)
    clear = np.abs(ours.fg_prob - 0.5) > 1e-3  # masks compared where the lesion probability is not a tie
    assert (np.asarray(served["mask"])[clear] == ours.pred_mask[clear]).all()
    assert np.isnan(np.asarray(served["mutual_info"], np.float64)).all() != mc


def _log_model(root: Path, **sections):
    c = tiny_campaign(root, **sections)
    led = Ledger.open(c.ledger)
    ckpt = checkpoint_train_round([0.9])(c, led, round_id=1).checkpoint_path
    tracker = Tracker(c, ledger=led)
    pid = tracker.log_round(RoundRecord(1, {}, {"val_accuracy": 0.9}, checkpoint_path=ckpt, val_score=0.9))
    led.close()
    return c, ckpt, tracker, pid


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory):
    return _log_model(tmp_path_factory.mktemp("registered") / "camp")


@pytest.fixture
def isolated_env(tmp_path: Path, registered) -> dict[str, str]:
    poison = tmp_path / "poison" / "medloop"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text(POISON)
    c = registered[0]
    return {**os.environ, "PYTHONPATH": str(poison.parent), "MLFLOW_TRACKING_URI": c.tracking_uri,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_version_tags_and_signature(registered) -> None:
    c, ckpt, tracker, pid = registered
    name = model_name(c)
    mv = tracker.client.get_model_version(name, "1")
    assert mv.tags["medloop.round"] == "1" and mv.tags["medloop.run_id"] == pid == mv.run_id
    assert mv.tags["medloop.campaign_id"] == tracker.campaign_id and mv.tags["medloop.checkpoint"] == ckpt
    assert str(tracker.client.get_model_version_by_alias(name, "champion").version) == "1"
    import mlflow

    info = mlflow.models.get_model_info(f"models:/{name}/1")
    spec = info.signature.inputs.inputs[0]
    assert spec.shape == (-1, 1, 32, 32) and str(spec.type) == "float32"
    outputs = {o.name: o.shape for o in info.signature.outputs.inputs}
    assert outputs["class_probs"] == (-1, 3) and outputs["mask_probs"] == (-1, 32, 32)
    assert outputs["uncertainty"] == (-1,)
    assert {p.name: p.default for p in info.signature.params.params} == {"mc_passes": 10, "seed": -1}
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1"))
    reqs = (local / "requirements.txt").read_text().split()
    assert [r.split("==")[0] for r in reqs] == ["torch", "numpy", "mlflow"]
    assert {p.name for p in (local / "artifacts").iterdir()} == {"encode.pt2", "decode.pt2", "decode_mc.pt2",
                                                                 "checkpoint"}
    assert not list(local.rglob("*.pkl"))  # nothing pickled (the isolation tests below prove no medloop import)


def test_loads_without_medloop_and_equals_medloop_prediction(registered, isolated_env, tmp_path: Path) -> None:
    c, ckpt, _, _ = registered
    x = images(3, 32)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    out = tmp_path / "out.npz"
    uri = f"models:/{model_name(c)}@champion"
    done = subprocess.run([sys.executable, "-s", str(script), uri, str(tmp_path / "x.npy"), str(out)],
                          env=isolated_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(out)
    det = {k.removeprefix("det_"): got[k] for k in got.files if k.startswith("det_")}
    mc = {k.removeprefix("mc_"): got[k] for k in got.files if k.startswith("mc_")}
    assert_same(det, medloop_scores(ckpt, c, x, 1), mc=False)
    assert_same(mc, medloop_scores(ckpt, c, x, 4, seed=5), mc=True)
    assert np.allclose(det["uncertainty"], np.nan, equal_nan=True)  # the campaign selects by MC std: NaN in 1 pass
    np.testing.assert_array_equal(mc["uncertainty"], mc["std"])
    assert (mc["std"] > 0).all() and not np.allclose(mc["class_probs"], det["class_probs"])


def _http(url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - 127.0.0.1
        return resp.status, resp.read()


def test_mlflow_models_serve_answers_invocations(registered, isolated_env, tmp_path: Path) -> None:
    c, ckpt, _, _ = registered
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{model_name(c)}/1",
           "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, env=isolated_env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if _http(f"{base}/ping", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no /ping in 300 s: " + (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        x = images(2, 32, seed=3)
        status, body = _http(f"{base}/invocations", {"inputs": x.tolist(), "params": {"mc_passes": 1}})
        assert status == 200
        served = {k: np.asarray(v) for k, v in json.loads(body)["predictions"].items()}
        assert served["class_probs"].shape == (2, 3) and served["mask_probs"].shape == (2, 32, 32)
        assert_same(served, medloop_scores(ckpt, c, x, 1), mc=False)
        status, body = _http(f"{base}/invocations", {"inputs": x.tolist(), "params": {"mc_passes": 4, "seed": 5}})
        served = {k: np.asarray(v) for k, v in json.loads(body)["predictions"].items()}
        assert_same(served, medloop_scores(ckpt, c, x, 4, seed=5), mc=True)
    finally:
        stop_process_group(proc, timeout=30)
        log.close()
    assert "medloop" not in (tmp_path / "serve.log").read_text().replace("medloop-", "")


def test_evidential_model_in_process(tmp_path: Path) -> None:
    """UML (evidential class and mask heads), uncertainty "both": vacuity and MC passes through the
    evidential heads equal medloop's."""
    import mlflow

    c, ckpt, _, _ = _log_model(tmp_path / "camp", model={"name": "uml"}, uncertainty={"method": "both"},
                               selection={"measure": "vacuity"})
    model = mlflow.pyfunc.load_model(f"models:/{model_name(c)}/1")
    x = images(2, 32, seed=7)
    det = model.predict(x, params={"mc_passes": 1})
    assert_same(det, medloop_scores(ckpt, c, x, 1), mc=False)
    assert np.isfinite(det["vacuity"]).all() and np.array_equal(det["uncertainty"], det["vacuity"])
    mc = model.predict(x, params={"mc_passes": 3, "seed": 2})
    assert_same(mc, medloop_scores(ckpt, c, x, 3, seed=2), mc=True)
    with pytest.raises(Exception, match="(?i)shape"):
        model.predict(np.zeros((1, 3, 32, 32), np.float32))
