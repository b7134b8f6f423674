"""The Label Studio ML backend (``medloop labelstudio backend``, labeling/ml_backend.py).

Unit tests of the request -> response mapping (labeling config targets, prediction format, image URLs,
a batch with unreadable images, the HTTP routes) with a real tiny checkpoint, then a real Label Studio
server connected to the backend (started as the CLI command) that stores predictions for tasks medloop
did not push."""

from __future__ import annotations

import io
import itertools
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from medloop.config import parse_campaign
from medloop.labeling.ml_backend import (
    BackendRequestError,
    Targets,
    build_backend,
    make_server,
    model_version_of,
    prediction_for,
    targets_from_config,
)
from medloop.labeling.project import label_config
from medloop.labeling.rle import rle_to_mask
from medloop.labeling.task_image import Location, TaskImageError, locate

CLASSES = ["normal", "benign", "malignant"]
_names = itertools.count()

TEAM_CONFIG = """<View>
  <Header value="CT"/>
  <Image name="scan" value="$ct"/>
  <Choices name="diagnosis" toName="scan"><Choice value="Benign"/><Choice value="Malignant"/></Choices>
  <BrushLabels name="tumour" toName="scan"><Label value="Cyst"/><Label value="lesion"/></BrushLabels>
</View>"""


# ---- a tiny real checkpoint -------------------------------------------------------------------------------------


def tiny_campaign(root: Path, **sections):
    data = {"name": f"mlb{next(_names)}", "root": str(root), "model": {"width": 4, "depth": 2},
            "data": {"image_size": 32, "classes": CLASSES},
            "labeling": {"url": "http://127.0.0.1:9", "token_env": "MEDLOOP_TEST_NO_TOKEN"}}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_campaign(data, "<test>")


def make_checkpoint(campaign, folder: Path, *, known: bool = True, version: str = "round-7") -> Path:
    """A real checkpoint of the campaign's model. ``known``: its output heads are set (weights 0, biases
    chosen) so that every image is "malignant" (softmax of [0, 0, 8]) with a lesion on every pixel (logits
    -8 / +8): the answer is known whatever the image and the dropout masks. Otherwise random weights."""
    from medloop.trainers.checkpoints import build_model, save_checkpoint
    from medloop.trainers.plain import LoopSettings

    settings = LoopSettings.from_campaign(campaign)
    torch.manual_seed(0)
    model = build_model(settings.model)
    if known:
        with torch.no_grad():
            model.seg_head.weight.zero_()
            model.seg_head.bias.copy_(torch.tensor([-8.0, 8.0]))
            model.classifier[-1].weight.zero_()
            model.classifier[-1].bias.copy_(torch.tensor([0.0, 0.0, 8.0]))
    return save_checkpoint(folder, model, {**settings.meta(), "model_version": version})


def grey_png(path: Path, height: int, width: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:height, :width]
    blob = 200 * np.exp(-(((yy - height / 2) / (height / 4)) ** 2 + ((xx - width / 2) / (width / 4)) ** 2))
    noise = np.random.default_rng(seed).integers(0, 40, (height, width))
    Image.fromarray(np.clip(blob + noise, 0, 255).astype(np.uint8)).save(path)
    return path


# ---- labeling config -> targets ------------------------------------------------------------------------------------


def test_targets_of_medloop_config(tmp_path):
    campaign = tiny_campaign(tmp_path / "c")
    t = targets_from_config(label_config(campaign), "Lesion")
    # the second Image (the uncertainty map) is labelled by no control: the class and lesion go on "image"
    assert t == Targets(image_to="image", image_key="image", class_from="class", class_values=tuple(CLASSES),
                        lesion_from="lesion", lesion_label="Lesion")


def test_targets_of_a_team_config_and_refusals():
    t = targets_from_config(TEAM_CONFIG, "Lesion")
    assert (t.image_to, t.image_key, t.class_from, t.lesion_from) == ("scan", "ct", "diagnosis", "tumour")
    assert t.class_values == ("Benign", "Malignant") and t.lesion_label == "lesion"  # matched ignoring case
    assert targets_from_config(TEAM_CONFIG, "Tumour").lesion_label == "Cyst"  # absent: the first label
    with pytest.raises(BackendRequestError, match="no <Image>"):
        targets_from_config('<View><Text name="t" value="$text"/>'
                            '<Choices name="c" toName="t"><Choice value="a"/></Choices></View>', "Lesion")
    with pytest.raises(BackendRequestError, match="cannot be parsed"):
        targets_from_config("<View><Image ", "Lesion")


# ---- one prediction -----------------------------------------------------------------------------------------------


def test_prediction_format_is_medloops_preannotation(tmp_path):
    from label_studio_sdk.label_interface import LabelInterface

    campaign = tiny_campaign(tmp_path / "c")
    config = label_config(campaign)
    targets = targets_from_config(config, "Lesion")
    mask = np.zeros((45, 70), np.uint8)
    mask[10:30, 20:61] = 1
    probs = np.array([0.1, 0.25, 0.65], np.float32)
    measures = {"confidence": 0.65, "entropy": 0.85, "mutual_info": 0.031, "std": float("nan")}
    p = prediction_for(2, probs, measures, mask, CLASSES, targets, "round-3", 17)
    assert p["model_version"] == "round-3" and p["score"] == pytest.approx(0.65)
    choice, brush = p["result"]
    assert choice == {"id": "c17", "from_name": "class", "to_name": "image", "type": "choices",
                      "value": {"choices": ["malignant"]}}
    assert (brush["id"], brush["from_name"], brush["to_name"], brush["type"]) == ("m17", "lesion", "image",
                                                                                  "brushlabels")
    assert (brush["original_height"], brush["original_width"]) == (45, 70)
    assert brush["value"]["format"] == "rle" and brush["value"]["brushlabels"] == ["Lesion"]
    np.testing.assert_array_equal(rle_to_mask(brush["value"]["rle"], 45, 70), mask)
    assert LabelInterface(config).validate_prediction({"result": p["result"]}) is True
    extra = p["medloop"]
    assert extra["class"] == "malignant" and extra["probs"]["benign"] == pytest.approx(0.25)
    assert extra["std"] is None and extra["mutual_info"] == pytest.approx(0.031) and extra["lesion_pixels"] == 820

    # a team's config: its names; the class matched ignoring case; a class it lacks -> no choice region
    team = targets_from_config(TEAM_CONFIG, "Lesion")
    q = prediction_for(2, probs, measures, mask, CLASSES, team, "round-3", 5)
    assert [(r["from_name"], r["to_name"]) for r in q["result"]] == [("diagnosis", "scan"), ("tumour", "scan")]
    assert q["result"][0]["value"]["choices"] == ["Malignant"] and q["result"][1]["value"]["brushlabels"] == ["lesion"]
    assert LabelInterface(TEAM_CONFIG).validate_prediction({"result": q["result"]}) is True
    r = prediction_for(0, probs, measures, np.zeros((45, 70), np.uint8), CLASSES, team, "round-3", 5)
    assert r["result"] == [] and r["medloop"]["class"] == "normal"  # "normal" is not a choice; empty mask
    # a confidence over 1 by round-off is clipped to Label Studio's [0, 1]
    assert prediction_for(2, probs, {"confidence": 1.0000002}, mask, CLASSES, targets, "v", 1)["score"] == 1.0


def test_a_multi_region_model_paints_one_brush_per_region_when_the_project_has_their_labels(tmp_path):
    from label_studio_sdk.label_interface import LabelInterface

    regions = ["oedema", "core"]
    campaign = tiny_campaign(tmp_path / "c", data={"regions": regions})
    config = label_config(campaign)  # medloop's interface: one brush label per region
    targets = targets_from_config(config, "Lesion", regions)
    assert targets.region_labels == ("oedema", "core")
    labels = np.zeros((40, 50), np.uint8)
    labels[5:30, 5:45] = 1
    labels[12:20, 15:30] = 2
    p = prediction_for(1, np.array([0.1, 0.8, 0.1]), {"confidence": 0.8}, labels, CLASSES, targets, "round-2", 9)
    brushes = {r["value"]["brushlabels"][0]: r for r in p["result"] if r["type"] == "brushlabels"}
    assert sorted(brushes) == ["core", "oedema"] and brushes["core"]["id"] == "m9-2"
    for value, name in ((1, "oedema"), (2, "core")):
        np.testing.assert_array_equal(rle_to_mask(brushes[name]["value"]["rle"], 40, 50), labels == value)
    assert p["medloop"]["lesion_pixels"] == int((labels > 0).sum())  # pixels, not the sum of region labels
    assert LabelInterface(config).validate_prediction({"result": p["result"]}) is True
    # a team's project without a label per region: the whole lesion under its lesion label
    team = targets_from_config(TEAM_CONFIG, "Lesion", regions)
    assert team.region_labels == ()
    q = prediction_for(1, np.array([0.1, 0.8, 0.1]), {"confidence": 0.8}, labels, CLASSES, team, "round-2", 9)
    (brush,) = [r for r in q["result"] if r["type"] == "brushlabels"]
    assert brush["value"]["brushlabels"] == ["lesion"]
    np.testing.assert_array_equal(rle_to_mask(brush["value"]["rle"], 40, 50), labels > 0)
    # labels matched ignoring case, in region order whatever the config's order
    shuffled = TEAM_CONFIG.replace('<Label value="Cyst"/><Label value="lesion"/>',
                                   '<Label value="CORE"/><Label value="Oedema"/>')
    assert targets_from_config(shuffled, "Lesion", regions).region_labels == ("Oedema", "CORE")


def test_lesion_area_of_a_region_label_map_counts_pixels():
    from medloop.trainers.inference import ImagePrediction

    labels = np.zeros((10, 10), np.uint8)
    labels[:2, :5] = 3
    labels[5, :4] = 1
    pred = ImagePrediction(probs=np.ones(3) / 3, pred_class=1, measures={}, mask=labels,
                           fg_prob=np.zeros((10, 10), np.float32), uncertainty=np.zeros((10, 10), np.float32))
    assert (pred.lesion_area, pred.lesion_fraction) == (14, 0.14)


def test_model_version_names():
    assert model_version_of(4, {"model_version": "x"}, "/c/ck") == "round-4"
    assert model_version_of(None, {"model_version": "round-2"}, "/c/ck") == "round-2"
    assert model_version_of(None, {"round_id": 5}, "/c/ck") == "round-5"
    assert model_version_of(None, {}, "/c/checkpoints/best/") == "best"


# ---- image URLs -----------------------------------------------------------------------------------------------------


def test_locate_image_urls(tmp_path):
    root = (tmp_path / "root").resolve()
    img = grey_png(root / "imgs" / "a b.png", 8, 8)
    grey_png(tmp_path / "outside.png", 8, 8)
    ls = "http://127.0.0.1:8080"
    assert locate("/data/local-files/?d=imgs/a%20b.png", root, ls) == Location(path=img)
    assert locate(f"{ls}/data/local-files/?d=imgs/a%20b.png", root, ls) == Location(path=img)
    # not below the root (or not there): Label Studio serves it, or refuses
    assert locate("/data/local-files/?d=../outside.png", root, ls) == Location(
        url=f"{ls}/data/local-files/?d=../outside.png")
    assert locate("/data/local-files/?d=imgs/missing.png", root, ls).url == f"{ls}/data/local-files/?d=imgs/missing.png"
    assert locate("/data/upload/3/abc-us.png", root, ls) == Location(url=f"{ls}/data/upload/3/abc-us.png")
    assert locate(f"{ls}/data/upload/3/abc-us.png", root, ls) == Location(url=f"{ls}/data/upload/3/abc-us.png")
    assert locate(str(img), root, ls) == Location(path=img)
    assert locate("imgs/a b.png", root, ls) == Location(path=img)
    for url, why in [("http://example.org/x.png", "not on Label Studio's address"),
                     ("http://127.0.0.1:8081/data/upload/1/x.png", "not on Label Studio's address"),
                     (str(tmp_path / "outside.png"), "outside the allowed folder"),
                     ("../outside.png", "outside the allowed folder"),
                     ("s3://bucket/x.png", "s3:// URLs are not read"),
                     ("/data/local-files/?x=1", "without a ?d= path"),
                     ("imgs/none.png", "no such file"), ("", "empty image URL")]:
        with pytest.raises(TaskImageError, match=re.escape(why)):
            locate(url, root, ls)


# ---- a batch: order kept, unreadable images isolated ---------------------------------------------------------------


def test_predict_batch_with_unreadable_images(tmp_path):
    campaign = tiny_campaign(tmp_path / "c")
    ckpt = make_checkpoint(campaign, tmp_path / "ckpt")
    grey_png(campaign.folder / "imgs" / "a.png", 45, 70)
    Image.fromarray(np.full((30, 20, 3), 90, np.uint8)).save(campaign.folder / "imgs" / "rgb.png")
    (campaign.folder / "imgs" / "cut.png").write_bytes((campaign.folder / "imgs" / "a.png").read_bytes()[:60])
    backend, described = build_backend(campaign, str(ckpt), passes=3)
    assert described.startswith("round-7: checkpoint") and "T = 3" in described
    tasks = [
        {"id": 11, "data": {"image": "/data/local-files/?d=imgs/a.png"}},
        {"id": 12, "data": {"image": "/data/local-files/?d=imgs/cut.png"}},  # truncated file
        {"id": 13, "data": {"image": "/data/upload/1/x.png"}},  # Label Studio at labeling.url does not answer
        {"id": 14, "data": {"$undefined$": "imgs/rgb.png"}},  # an RGB file, imported before the key was known
        {"id": 15, "data": {"text": "no image"}},
    ]
    out = backend.predict({"tasks": tasks, "label_config": label_config(campaign)})
    assert out["model_version"] == "round-7" and len(out["results"]) == 5
    a, cut, upload, rgb, none = out["results"]
    for p, (h, w), key in ((a, (45, 70), 11), (rgb, (30, 20), 14)):
        assert p["model_version"] == "round-7" and p["score"] == pytest.approx(0.9993, abs=1e-4)
        choice, brush = p["result"]
        assert choice["value"]["choices"] == ["malignant"] and choice["id"] == f"c{key}"
        assert rle_to_mask(brush["value"]["rle"], h, w).all()  # a lesion everywhere, at the image's own size
    assert "task 12" in cut["error"] and "unreadable or truncated" in cut["error"] and "result" not in cut
    # no token is configured: the upload cannot be fetched, and the message says where the token comes from
    assert "task 13" in upload["error"] and "/data/upload/1/x.png" in upload["error"]
    assert "MEDLOOP_TEST_NO_TOKEN" in upload["error"]
    assert none["error"] == "task 15: no image URL in data.image"
    assert backend.webhook_counts()["predicted"] == 2 and backend.webhook_counts()["failed"] == 3


def test_predictions_are_the_scoring_pipelines(tmp_path):
    """The backend's prediction of an image file equals score_batch on that image fitted to the model size
    (the pool scoring's MC sampler and measures, same seed), with the mask = the lesion probability resized
    bilinearly to the image's own size, >= 0.5."""
    from medloop.data.imagestore import prob_mask
    from medloop.trainers.checkpoints import load_model, read_meta, save_checkpoint
    from medloop.trainers.dataset import fit_image
    from medloop.trainers.uncertainty import score_batch

    campaign = tiny_campaign(tmp_path / "c")
    ckpt = make_checkpoint(campaign, tmp_path / "ckpt", known=False)
    path = grey_png(campaign.folder / "imgs" / "b.png", 50, 37, seed=3)
    image = np.asarray(Image.open(path).convert("L"))
    x = torch.from_numpy(fit_image(image, 32, 1)[None].copy()).float() / 255.0
    # random weights; the lesion logit's bias is moved so that the lesion covers about half of this image
    model, _ = load_model(ckpt)
    with torch.no_grad():
        logits = model(x).seg_logits
        model.seg_head.bias[1] -= (logits[:, 1] - logits[:, 0]).median()
    save_checkpoint(ckpt, model, read_meta(ckpt))
    backend, _ = build_backend(campaign, str(ckpt), passes=6)
    torch.manual_seed(123)
    got = backend.predict({"tasks": [{"id": 1, "data": {"image": str(path)}}]})["results"][0]

    torch.manual_seed(123)
    s = score_batch(model, x, passes=6, no_lesion_class=0)
    ours = got["medloop"]
    assert ours["class"] == CLASSES[int(s.pred_class[0])]
    for name in ("confidence", "entropy", "mutual_info", "std", "seg_uncertainty"):
        assert ours[name] == pytest.approx(float(getattr(s, name)[0]), abs=1e-4), name
    want = prob_mask(s.fg_prob[0], (50, 37)) if s.pred_mask[0].any() else np.zeros((50, 37), np.uint8)
    brush = [r for r in got["result"] if r["type"] == "brushlabels"]
    mask = rle_to_mask(brush[0]["value"]["rle"], 50, 37) if brush else np.zeros((50, 37), np.uint8)
    np.testing.assert_array_equal(mask, want)
    assert ours["lesion_pixels"] == int(want.sum()) and 0.2 < want.mean() < 0.8


# ---- HTTP routes ----------------------------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path):
    campaign = tiny_campaign(tmp_path / "c")
    backend, _ = build_backend(campaign, str(make_checkpoint(campaign, tmp_path / "ckpt")), passes=2)
    httpd = make_server(backend)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield campaign, backend, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_http_routes(served):
    campaign, backend, url = served
    assert requests.get(f"{url}/health", timeout=10).json() == {"status": "UP", "model_class": "medloop",
                                                                "model_version": "round-7"}
    r = requests.post(f"{url}/setup", json={"project": "1.1", "schema": label_config(campaign),
                                            "access_token": "not-logged"}, timeout=10)
    assert r.status_code == 200 and r.json() == {"model_version": "round-7"}
    r = requests.post(f"{url}/setup", json={"schema": '<View><Text name="t" value="$t"/></View>'}, timeout=10)
    assert r.status_code == 400 and "<Choices>" in r.json()["error"]
    grey_png(campaign.folder / "x.png", 20, 24)
    r = requests.post(f"{url}/predict", json={"tasks": [{"id": 3, "data": {"image": "x.png"}}]}, timeout=60)
    assert r.status_code == 200 and r.json()["results"][0]["result"][1]["original_width"] == 24
    r = requests.post(f"{url}/predict", json={"task": {}}, timeout=10)
    assert r.status_code == 400 and "tasks" in r.json()["error"]
    r = requests.post(f"{url}/predict", data=b"{not json", timeout=10)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    for action in ("START_TRAINING", "ANNOTATION_CREATED", "ANNOTATION_CREATED"):
        r = requests.post(f"{url}/webhook", json={"action": action, "project": {"id": 4}}, timeout=10)
        assert r.status_code == 200 and r.json()["action"] == action and "not started" in r.json()["training"]
    assert requests.post(f"{url}/train", json={"project": "4.1"}, timeout=10).status_code == 200
    counts = requests.get(f"{url}/webhook", timeout=10).json()
    assert counts["events"] == {"START_TRAINING": 1, "ANNOTATION_CREATED": 2, "TRAIN": 1} and counts["predicted"] == 1
    assert requests.get(f"{url}/versions", timeout=10).json()["versions"] == ["round-7"]
    assert requests.post(f"{url}/nothing", json={}, timeout=10).status_code == 404


def test_cli_refuses_a_missing_model(tmp_path):
    from typer.testing import CliRunner

    from medloop.cli import app

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'name = "mlb-cli"\nroot = "{tmp_path / "camp"}"\n')
    out = CliRunner().invoke(app, ["labelstudio", "backend", "-c", str(cfg), "--model", str(tmp_path / "none")])
    assert out.exit_code == 1 and "no such folder" in out.output
    out = CliRunner().invoke(app, ["labelstudio", "backend", "-c", str(cfg)])  # champion: no registry yet
    assert out.exit_code == 1 and "no model registry" in out.output and not (tmp_path / "camp").exists()


# ---- a real Label Studio connected to the backend ------------------------------------------------------------------


def _medloop_cli() -> list[str]:
    exe = Path(sys.executable).parent / "medloop"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from medloop.cli import app; app()"]


def _wait_health(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the backend exited with {proc.returncode}: {log.read_text()}")
        try:
            return requests.get(f"{url}/health", timeout=2).json()
        except requests.RequestException:
            time.sleep(0.5)
    raise AssertionError(f"the backend did not answer {url}/health in {timeout} s")


def _png_bytes(height: int, width: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _predictions(client, task_id: int) -> list[dict]:
    out = client.get("/api/predictions", params={"task": task_id})
    return out.get("results", out) if isinstance(out, dict) else out


@pytest.mark.labelstudio
def test_label_studio_stores_backend_predictions_for_tasks_medloop_did_not_push(labelstudio_server, tmp_path):
    import tomli_w

    from medloop.data.imagestore import ImageStore
    from medloop.labeling import server as ls_server
    from medloop.labeling.client import connect
    from medloop.labeling.ml_backend import connect_backend
    from medloop.labeling.project import ensure_project
    from medloop.ledger import Ledger

    name = f"mlb-ls{next(_names)}-{np.random.default_rng().integers(1 << 30)}"
    campaign = labelstudio_server.campaign(name, model={"width": 4, "depth": 2}, data={"image_size": 32})
    ckpt = make_checkpoint(campaign, tmp_path / "ckpt")
    store = ImageStore(campaign.store)
    client = connect(campaign)
    pid = ensure_project(campaign, Ledger.open(campaign.ledger), client, store_root=store.root)
    cfg = tmp_path / "campaign.toml"
    cfg.write_text(tomli_w.dumps(campaign.model_dump(exclude_none=True)))

    port = ls_server.free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "backend.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*_medloop_cli(), "labelstudio", "backend", "-c", str(cfg), "--model", str(ckpt), "--port", str(port),
             "--mc-passes", "4", "--project", str(pid)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        assert _wait_health(url, proc, log)["model_version"] == "round-7"
        # --project: the command connected the project (Label Studio called /health and /setup)
        deadline = time.monotonic() + 120
        rows: list = []
        while time.monotonic() < deadline and not rows:
            rows = [r for r in client.get("/api/ml", params={"project": pid}) if r["url"].rstrip("/") == url]
            time.sleep(0.5)
        assert len(rows) == 1 and rows[0]["state"] == "CO" and rows[0]["model_version"] == "round-7"
        ml_id = rows[0]["id"]

        # tasks medloop did not push: a file below the document root, twice, and a missing file. Label Studio
        # wants every data key of medloop's config in a task (and refuses a bare file upload: several keys)
        local = grey_png(store.root / "images" / "manual" / "scan-local.png", 52, 38)
        rel = local.resolve().relative_to(labelstudio_server.document_root).as_posix()
        missing = rel.replace("scan-local.png", "gone.png")

        def task(path: str) -> dict:
            return {"data": {"image": f"/data/local-files/?d={path}", "uncertainty_map": f"/data/local-files/?d={path}",
                             "summary": "added by an annotator"}}

        ids = client.post(f"/api/projects/{pid}/import", params={"return_task_ids": "true"},
                          json=[task(rel), task(missing), task(rel)])["task_ids"]
        t_local, t_missing, t_open = ids
        # a team's own project (its own config, one image key) connected to the same backend, with an
        # image uploaded into Label Studio: the backend fetches it from Label Studio with the token
        team = client.post("/api/projects", json={"title": f"team-{name}", "label_config": TEAM_CONFIG})["id"]
        connect_backend(client, team, url)
        up = client.post(f"/api/projects/{team}/import", params={"return_task_ids": "true"},
                         files={"file": ("scan-upload.png", _png_bytes(45, 70), "image/png")})
        (t_up,) = up["task_ids"]
        # (the task list, not GET /api/tasks/<id>: opening a task asks the backend, see below)
        (row,) = client.iter_tasks(team, include="id,data")
        assert row["id"] == t_up and row["data"]["ct"].startswith("/data/upload/")
        assert all(_predictions(client, t) == [] for t in (t_up, t_local, t_missing, t_open))

        # the Data Manager's "Retrieve predictions": stored for the readable images, the missing one skipped
        client.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
                    json={"selectedItems": {"all": False, "included": [t_local, t_missing]}})
        client.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": team},
                    json={"selectedItems": {"all": False, "included": [t_up]}})
        expected = {t_local: ((52, 38), "malignant", campaign.labeling.lesion_label),
                    t_up: ((45, 70), "Malignant", "lesion")}  # the team's Choice / Label values
        for task_id, ((h, w), choice, label) in expected.items():
            (pred,) = _predictions(client, task_id)
            assert pred["model_version"] == "round-7" and pred["score"] == pytest.approx(0.9993, abs=1e-4)
            regions = {r["type"]: r for r in pred["result"]}
            assert regions["choices"]["value"]["choices"] == [choice]
            assert choice.casefold() in campaign.data.classes
            brush = regions["brushlabels"]
            assert (brush["original_height"], brush["original_width"]) == (h, w)
            assert brush["value"]["brushlabels"] == [label]
            assert rle_to_mask(brush["value"]["rle"], h, w).all()  # decodes to the image's own size
        assert _predictions(client, t_missing) == []

        # opening a task (the labeling page reads it) asks the backend for a prediction when it has none
        opened = client.get(f"/api/tasks/{t_open}")
        assert [p["model_version"] for p in opened["predictions"]] == ["round-7"]
        assert len(_predictions(client, t_open)) == 1

        # training events reach /webhook, are acknowledged, and start nothing
        client.post(f"/api/ml/{ml_id}/train", json={})
        counts = requests.get(f"{url}/webhook", timeout=10).json()
        assert counts["events"].get("START_TRAINING") == 1
        assert counts["predicted"] == 3 and counts["failed"] == 1
        assert client.get(f"/api/ml/{ml_id}")["state"] == "CO"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert f"connected to Label Studio project {pid}" in text
    assert "gone.png" in text  # the skipped task is reported with its image
    assert labelstudio_server.token not in text  # the token read for the upload is never logged
