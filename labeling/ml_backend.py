"""A Label Studio ML backend serving a campaign's model (``medloop labelstudio backend``).

Label Studio 1.23 talks to an ML backend over HTTP (its ``ml/api_connector.py``):

* ``GET /health`` -> ``{"status": "UP", "model_version": ...}`` (checked when the backend is connected and
  before every prediction request);
* ``POST /setup`` with the project's labeling config (``schema``) -> ``{"model_version": ...}``; a config the
  model cannot fill (no Image with a Choices or BrushLabels control) is refused with HTTP 400, which Label
  Studio shows as the backend's error;
* ``POST /predict`` with ``tasks`` (and ``label_config``) -> ``{"results": [...]}``, one entry per task in
  the order given: the prediction ``{"result", "score", "model_version"}``, or ``{"error": ...}`` for a
  task whose image cannot be read (Label Studio skips it and stores the others' predictions);
* ``POST /webhook``: the project's events (Label Studio registers ``<backend>/webhook`` for every action
  when the backend is connected, and posts ``START_TRAINING`` when someone presses "Start training"):
  acknowledged and counted (``GET /webhook`` shows the counts). Nothing is trained here: a model is trained
  by a round (``medloop round``), from the ledger's labels, not from Label Studio's events.
  ``POST /train`` (the older training call) is acknowledged the same way.

A prediction has the regions of medloop's own pre-annotations (:func:`medloop.labeling.push.prediction_results`):
the predicted class as a ``choices`` region and the lesion mask as a ``brushlabels`` RLE at the image's own size (a
multi-region model, ``data.regions``: one RLE per region present, each with its region's label, when the project's
BrushLabels has a label for every region), ``score`` = the model's confidence in its class (as for pushed tasks)
and ``model_version`` = ``round-<n>`` of the model's round (the version pushed tasks carry), so Label Studio does
not ask again for tasks that already have this model's prediction. The uncertainty measures ride along under
``medloop`` (Label Studio keeps only ``result``, ``score`` and ``model_version``; a direct caller of ``/predict``
sees them). The image goes through the same steps as ``medloop predict`` (:mod:`medloop.trainers.inference`: the
MC-dropout sampler and measures of the pool scoring, the mask resized to the image's own size).

The server is the standard library's :class:`~http.server.ThreadingHTTPServer`, as the webhook receiver's
(``labeling/webhook.py``): Label Studio's ``label-studio-ml`` package (1.0.9 on PyPI) pins Flask 1.1.2,
Werkzeug 2.0.2, Jinja2 3.0.3 and itsdangerous 2.0.1, which would downgrade the Flask 3 stack MLflow needs,
and four JSON routes need no framework. It binds 127.0.0.1 unless told otherwise; it has no authentication.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from .project import CLASS_FROM, IMAGE_TO, LESION_FROM
from .push import prediction_results
from .task_image import TaskImageError

log = logging.getLogger(__name__)

DEFAULT_PORT = 9090  # Label Studio's documented default for ML backends
DATA_UNDEFINED = "$undefined$"  # Label Studio's data key for an imported file before it knows the config's key
MAX_BODY = 256 * 1024 * 1024


class BackendRequestError(ValueError):
    """A request the backend cannot answer (HTTP 400); the message says what was expected."""


# ---- the labeling config: which controls the model fills --------------------------------------------------


@dataclass(frozen=True)
class Targets:
    """The controls of a labeling config the model fills: the Image (``image_to``, read from
    ``data[image_key]``), the Choices for the class (``class_from`` with its values) and the BrushLabels
    for the lesion (``lesion_from`` with the label used). Either control may be absent (None)."""

    image_to: str = IMAGE_TO
    image_key: str = IMAGE_TO
    class_from: str | None = CLASS_FROM
    class_values: tuple[str, ...] = ()
    lesion_from: str | None = LESION_FROM
    lesion_label: str | None = None
    region_labels: tuple[str, ...] = ()  # a multi-region model's brush label per region (value i -> [i - 1])


def _prefer(items: list[Any], name: str) -> Any:
    for item in items:
        if item.name == name:
            return item
    return items[0] if items else None


def _match(value: str, options: Sequence[str]) -> str | None:
    """``value`` among ``options``: exactly, else ignoring case; None when absent."""
    if value in options:
        return value
    folded = {o.casefold(): o for o in options}
    return folded.get(value.casefold())


def targets_from_config(config: str, lesion_label: str, regions: Sequence[str] = ()) -> Targets:
    """The :class:`Targets` of a labeling config (medloop's names preferred when present). A multi-region
    model (``regions``, the campaign's ``data.regions``) paints one brush label per region when the BrushLabels
    has a label for every region (matched ignoring case); otherwise the whole lesion with one label.

    :class:`BackendRequestError` when the config cannot be parsed or has no Image that a Choices or
    BrushLabels control labels."""
    from label_studio_sdk.label_interface import LabelInterface

    try:
        li = LabelInterface(config)
    except Exception as err:  # noqa: BLE001 - the SDK raises several XML / config errors
        raise BackendRequestError(f"labeling config cannot be parsed: {err}") from None
    images = {o.name: o for o in li.objects if o.tag == "Image"}
    choices = [c for c in li.controls if c.tag == "Choices" and set(c.to_name) & set(images)]
    brushes = [c for c in li.controls if c.tag == "BrushLabels" and set(c.to_name) & set(images)]
    if not choices and not brushes:
        raise BackendRequestError(
            "labeling config: the model fills a class (<Choices>) and a lesion mask (<BrushLabels>) on an <Image>; "
            f"this config has {'no <Image>' if not images else 'neither control on its <Image>'}"
        )
    labelled = [n for c in choices + brushes for n in c.to_name if n in images]
    image = images[IMAGE_TO] if IMAGE_TO in labelled else images[labelled[0]]
    cls = _prefer([c for c in choices if image.name in c.to_name], CLASS_FROM)
    brush = _prefer([c for c in brushes if image.name in c.to_name], LESION_FROM)
    label = None
    region_labels: tuple[str, ...] = ()
    if brush is not None:
        labels = list(brush.labels or [])
        label = _match(lesion_label, labels) or (labels[0] if labels else lesion_label)
        matched = [_match(r, labels) for r in regions]
        if regions and all(m is not None for m in matched):
            region_labels = tuple(m for m in matched if m is not None)
    return Targets(
        image_to=image.name, image_key=image.value_name or image.name,
        class_from=cls.name if cls is not None else None, class_values=tuple(cls.labels or []) if cls else (),
        lesion_from=brush.name if brush is not None else None, lesion_label=label, region_labels=region_labels,
    )


# ---- one task: its image URL, and its prediction ------------------------------------------------------------


def image_url(task: dict[str, Any], targets: Targets) -> str:
    """The image URL of a task (``data[image_key]``, or the key Label Studio gives an imported file before
    it knows the config's)."""
    data = task.get("data")
    if not isinstance(data, dict):
        raise TaskImageError("the task has no data")
    url = data.get(targets.image_key)
    if url is None:
        url = data.get(DATA_UNDEFINED)
    if not isinstance(url, str) or not url:
        raise TaskImageError(f"no image URL in data.{targets.image_key}")
    return url


def _finite(x: float, digits: int = 4) -> float | None:
    v = float(x)
    return round(v, digits) if math.isfinite(v) else None


def prediction_for(
    pred_class: int,
    probs: np.ndarray,
    measures: dict[str, float],
    mask: np.ndarray,
    classes: Sequence[str],
    targets: Targets,
    model_version: str,
    key: int | str,
) -> dict[str, Any]:
    """One task's prediction in Label Studio's format (pure): class choice + native-size brush RLE (the regions
    of :func:`prediction_results`: one per region present with ``targets.region_labels``, else the whole
    lesion), ``score`` = confidence in [0, 1], ``model_version``, and medloop's measures under ``medloop``. A
    class the project's Choices lack gives no choice region; an empty mask (or a config without BrushLabels)
    gives no brush region."""
    name = classes[pred_class] if 0 <= pred_class < len(classes) else None
    choice = None
    if name is not None and targets.class_from is not None:
        choice = _match(name, targets.class_values) if targets.class_values else name
    brush: str | list[str] = list(targets.region_labels) if targets.region_labels else targets.lesion_label or ""
    result = prediction_results(
        choice, mask if targets.lesion_from is not None else None, brush, key,
        class_from=targets.class_from or CLASS_FROM, lesion_from=targets.lesion_from or LESION_FROM,
        image_to=targets.image_to,
    )
    confidence = _finite(measures.get("confidence", float(np.max(probs))))
    out: dict[str, Any] = {"result": result, "model_version": model_version}
    if confidence is not None:
        out["score"] = min(1.0, max(0.0, confidence))
    out["medloop"] = {
        "class": name,
        "probs": {c: _finite(p) for c, p in zip(classes, np.asarray(probs, np.float64))},
        **{k: _finite(v) for k, v in measures.items()},
        "lesion_pixels": int(np.count_nonzero(mask)),
        "height": int(mask.shape[0]), "width": int(mask.shape[1]),
    }
    return out


# ---- the backend: model + image reader, one method per route ----------------------------------------------


class Backend:
    """Answers the routes of the protocol (the HTTP layer is :func:`make_server`).

    ``predict_images`` maps native uint8 images to :class:`medloop.trainers.inference.ImagePrediction`
    (called under a lock, ``batch_size`` images at a time); ``read_image`` maps an image URL to a uint8
    array (:class:`medloop.labeling.task_image.TaskImageReader`)."""

    def __init__(
        self,
        *,
        predict_images: Callable[[list[np.ndarray]], list[Any]],
        read_image: Callable[[str], np.ndarray],
        classes: Sequence[str],
        model_version: str,
        lesion_label: str,
        regions: Sequence[str] | None = (),
        description: str = "",
        batch_size: int = 8,
    ) -> None:
        self._predict_images = predict_images
        self._read_image = read_image
        self.classes = list(classes)
        self.model_version = model_version
        self.lesion_label = lesion_label
        self.regions = tuple(regions or ())
        self.description = description
        self.batch_size = max(1, int(batch_size))
        self._model_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._targets: dict[str, Targets] = {}
        self.events: Counter[str] = Counter()
        self.predicted = 0
        self.failed = 0

    # ---- routes ------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": "medloop", "model_version": self.model_version}

    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        schema = body.get("schema")
        if schema:
            self.targets(str(schema))  # refuse a config the model cannot fill
        return {"model_version": self.model_version}

    def versions(self) -> dict[str, Any]:
        return {"versions": [self.model_version], "model_version": self.model_version}

    def webhook(self, body: dict[str, Any]) -> dict[str, Any]:
        action = str(body.get("action") or "unknown")
        with self._state_lock:
            self.events[action] += 1
        project = (body.get("project") or {}).get("id") if isinstance(body.get("project"), dict) else None
        log.info("webhook %s (project %s): acknowledged, nothing triggered", action, project)
        return {"status": "ok", "action": action,
                "training": "not started: medloop trains in rounds (medloop round), from the ledger's labels"}

    def webhook_counts(self) -> dict[str, Any]:
        with self._state_lock:
            return {"events": dict(self.events), "predicted": self.predicted, "failed": self.failed}

    def targets(self, config: str | None) -> Targets:
        """The targets of ``config`` (cached per config); medloop's own names without one."""
        if not config:
            return Targets(lesion_label=self.lesion_label, region_labels=self.regions)
        with self._state_lock:
            hit = self._targets.get(config)
        if hit is None:
            hit = targets_from_config(config, self.lesion_label, self.regions)
            with self._state_lock:
                self._targets[config] = hit
        return hit

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise BackendRequestError("predict: expected {\"tasks\": [...]} (a list of Label Studio tasks)")
        targets = self.targets(body.get("label_config"))
        results: list[dict[str, Any] | None] = [None] * len(tasks)
        todo: list[tuple[int, Any, np.ndarray]] = []
        for i, task in enumerate(tasks):
            key = task.get("id", i) if isinstance(task, dict) else i
            try:
                if not isinstance(task, dict):
                    raise TaskImageError("not a task object")
                todo.append((i, key, self._read_image(image_url(task, targets))))
            except TaskImageError as err:
                results[i] = self._failure(key, str(err))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            with self._model_lock:
                preds = self._predict_images([img for _, _, img in chunk])
            for (i, key, _), p in zip(chunk, preds):
                results[i] = prediction_for(p.pred_class, p.probs, p.measures, p.mask, self.classes, targets,
                                            self.model_version, key)
        with self._state_lock:
            self.predicted += len(todo)
        return {"results": results, "model_version": self.model_version}

    def _failure(self, key: Any, message: str) -> dict[str, Any]:
        text = f"task {key}: {message}"
        log.warning("no prediction: %s", text)
        with self._state_lock:
            self.failed += 1
        return {"error": text, "model_version": self.model_version}


# ---- HTTP ------------------------------------------------------------------------------------------------


def make_server(backend: Backend, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for ``backend`` on ``host:port`` (port 0: a free one); call ``serve_forever``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise BackendRequestError(f"request body of {length} bytes is over the limit of {MAX_BODY}")
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError as err:
                raise BackendRequestError(f"request body is not JSON ({err})") from None
            if not isinstance(body, dict):
                raise BackendRequestError("request body: expected a JSON object")
            return body

        def _route(self, method: str) -> None:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            try:
                if method == "GET" and path in ("/", "/health"):
                    self._send(200, backend.health())
                elif method == "GET" and path == "/versions":
                    self._send(200, backend.versions())
                elif method == "GET" and path == "/webhook":
                    self._send(200, backend.webhook_counts())
                elif method == "POST" and path == "/setup":
                    self._send(200, backend.setup(self._body()))
                elif method == "POST" and path == "/predict":
                    self._send(200, backend.predict(self._body()))
                elif method == "POST" and path in ("/webhook", "/train"):
                    body = self._body()
                    body.setdefault("action", "TRAIN" if path == "/train" else None)
                    self._send(200, backend.webhook(body))
                else:
                    self._send(404, {"error": f"{method} {path}: no such route (GET /health, POST /setup, "
                                              "POST /predict, POST /webhook)"})
            except BackendRequestError as err:
                self._send(400, {"error": str(err)})
            except Exception as err:  # noqa: BLE001 - answered, logged, the server keeps serving
                log.exception("%s %s failed", method, path)
                self._send(500, {"error": f"{type(err).__name__}: {err}"})

        def do_GET(self) -> None:  # noqa: N802
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

        def log_message(self, fmt: str, *args: Any) -> None:  # request lines at debug level, never bodies
            log.debug(fmt, *args)

    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    return httpd


# ---- connecting a project ------------------------------------------------------------------------------------


def connect_backend(client: Any, project_id: int, url: str, *, title: str = "medloop") -> dict[str, Any]:
    """Connect the backend at ``url`` to a Label Studio project (``POST /api/ml``; Label Studio calls
    ``/health`` and ``/setup`` before it answers), or return the connection that exists. The returned row
    has ``id``, ``state`` (``CO`` = connected) and ``model_version``; an unhealthy connection is an error."""
    from .errors import LabelStudioError

    out = client.get("/api/ml", params={"project": project_id}) or []
    rows = out.get("results", out) if isinstance(out, dict) else out
    row = next((r for r in rows if str(r.get("url", "")).rstrip("/") == url.rstrip("/")), None)
    if row is None:
        row = client.post("/api/ml", json={"url": url, "project": project_id, "title": title,
                                           "is_interactive": False})
    if row.get("state") != "CO":
        raise LabelStudioError(f"Label Studio project {project_id}: the ML backend at {url} is not connected "
                               f"(state {row.get('state')}: {row.get('error_message') or 'no message'})")
    return dict(row)


# ---- the command ----------------------------------------------------------------------------------------------


def model_version_of(round_id: int | None, meta: dict[str, Any], checkpoint: str) -> str:
    """``round-<n>`` of the model's round (the version its pushed pre-annotations carry), else the checkpoint
    meta's ``model_version``, else the checkpoint folder's name."""
    if round_id is not None:
        return f"round-{round_id}"
    if meta.get("model_version"):
        return str(meta["model_version"])
    if meta.get("round_id") is not None:
        return f"round-{int(meta['round_id'])}"
    return checkpoint.rstrip("/").rsplit("/", 1)[-1]


def build_backend(campaign: Any, model: str = "champion", *, passes: int | None = None,
                  batch_size: int = 8) -> tuple[Backend, str]:
    """The campaign's backend for ``model`` (``champion``, a registered version number or a checkpoint
    folder; see :func:`medloop.tracking.resolve.resolve_model`) and a sentence saying which model it is."""
    from medloop.tracking.resolve import resolve_model
    from medloop.trainers.inference import Settings, load_inference_model, pick_device, predict_images

    from . import server
    from .client import read_token
    from .task_image import TaskImageReader

    src = resolve_model(campaign, model)
    im = load_inference_model(
        src.checkpoint, device=pick_device(campaign.compute.use_gpu), classes=campaign.data.classes,
        image_size=campaign.data.image_size, channels=campaign.data.channels,
        no_lesion_class=campaign.data.no_lesion_class,
    )
    settings = Settings(passes=passes or campaign.uncertainty.mc_passes, method=campaign.uncertainty.method,
                        boundary_band=campaign.uncertainty.boundary_band, amp=campaign.compute.amp)
    window = campaign.data.intensity_window
    reader = TaskImageReader(root=server.document_root(campaign), ls_url=campaign.labeling.url,
                             token=lambda: read_token(campaign), channels=im.channels,
                             window=(float(window[0]), float(window[1])) if window else None)
    version = model_version_of(src.round_id, im.meta, src.checkpoint)
    backend = Backend(
        predict_images=lambda images: predict_images(im, images, settings), read_image=reader.read,
        classes=im.classes, model_version=version, lesion_label=campaign.labeling.lesion_label,
        regions=campaign.data.regions, description=src.describe(), batch_size=batch_size,
    )
    return backend, f"{version}: {src.describe()}; T = {settings.passes} passes ({settings.scoring_method()})"
