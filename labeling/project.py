"""The Label Studio project of a campaign: labeling config, create-or-find, Local Storage.

The project id is kept in the ledger (``Meta`` key ``ls_project_id``); a project is found again
by that id, else by its title (``labeling.project_title``, default ``medloop-<campaign>``).
Images are served from the image store without copying: a Local Storage is registered on the
store's ``images/`` folder (a sub-folder of the server's ``LOCAL_FILES_DOCUMENT_ROOT``) and
tasks point at ``/data/local-files/?d=<path relative to the document root>``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from xml.sax.saxutils import quoteattr

from medloop.config import Campaign
from medloop.ledger import Ledger

from .client import LSClient
from .errors import LabelStudioError

META_KEY = "ls_project_id"
CLASS_FROM = "class"
LESION_FROM = "lesion"
IMAGE_TO = "image"
UNCERTAINTY_TO = "uncertainty_map"  # the second, read-only image: the model's pixel uncertainty
CONTEXT_TO = "context"  # volumes: read-only pages to scroll through: the slices around the task's, every sequence
VIEW_TITLE = "medloop: most informative first"

# the typed task fields (labeling.push.task_fields) and their Data Manager column types
NUMBER_FIELDS = ("acquisition_score", "confidence", "entropy", "mutual_info", "lesion_uncertainty", "round")
BOOLEAN_FIELDS = ("audit",)
# Label Studio's own task columns that the medloop tab hides (the task list opens on medloop's fields)
HIDDEN_SYSTEM_COLUMNS = (
    "inner_id", "cancelled_annotations", "total_predictions", "annotators", "annotations_results", "annotations_ids",
    "predictions_model_versions", "predictions_results", "file_upload", "storage_filename", "created_at",
    "updated_at", "updated_by", "avg_lead_time", "draft_exists",
)

INSTRUCTIONS = (
    "<p><b>medloop annotation.</b> The model was uncertain about these images; they come pre-annotated "
    "with its class and lesion mask, drawn on the original image at its own size.</p><ul>"
    "<li>Choose exactly <b>one</b> class (the buttons above the image; the model's class is pre-selected).</li>"
    "<li>Correct the lesion mask with the brush and the eraser; erase it completely when there is no lesion.</li>"
    "<li>Skip a task only when the image cannot be judged (it then never becomes a label).</li>"
    "<li>Tasks marked AUDIT check an automatic pseudo-label: annotate them like any other.</li></ul>"
    "<p><b>What you see.</b> The sentence above the image says what the model predicts, how confident it is "
    "and whether it is unsure where the lesion ends, e.g. <i>model: malignant, 62 % confident; lesion "
    "boundary uncertain</i>. The image on the right is the model's pixel uncertainty (read-only): bright "
    "where the model is unsure, often along the lesion boundary; look there first. \"Prediction score\" is "
    "the model's confidence in its class.</p>"
    "<p><b>Task list columns</b> (sortable and filterable in the Data Manager; the medloop tab is sorted by "
    "acquisition score, most informative first): <b>acquisition_score</b> how much the model expects to learn "
    "from your answer (higher first); <b>confidence</b> the probability of the predicted class (0-1); "
    "<b>entropy</b> how spread the class probabilities are (0 = sure); <b>mutual_info</b> how much the "
    "model's passes disagree about the class (0 = agree); <b>lesion_uncertainty</b> the model's mean "
    "pixel uncertainty over the possible lesion (0 = sure); <b>round</b> the round that queued the task; "
    "<b>audit</b> true for an audit of an automatic label; <b>predicted_class</b>, <b>summary</b>, "
    "<b>sample_uid</b>.</p>"
)


def _holds_volumes(ledger: Ledger) -> bool:
    from medloop.ledger.queries import holds_volumes

    with ledger.reading() as s:
        return holds_volumes(s)


def project_title(campaign: Campaign) -> str:
    return campaign.labeling.project_title or f"medloop-{campaign.name}"


#: brush colours: the lesion red, then one per further region
BRUSH_COLOURS = ("#ff3b30", "#34c759", "#ffcc00", "#007aff", "#af52de", "#ff9500")


def brush_labels(campaign: Campaign) -> list[str]:
    """The BrushLabels labels, in label-id order (label ``i`` paints mask value ``i + 1``): one per region of
    ``data.regions``, else the one lesion label ``labeling.lesion_label``."""
    return list(campaign.data.regions) if campaign.data.regions else [campaign.labeling.lesion_label]


def label_config(campaign: Campaign, volumes: bool = False) -> str:
    """The labeling interface: the model's sentence, the class choices, the lesion brush (above the
    images, seen without scrolling), then the image (zoom) and the read-only uncertainty image beside it;
    for a volume campaign (``volumes``), below, the slices around the task's slice as read-only pages to
    scroll through (:func:`context_view`)."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in campaign.data.classes)
    brushes = "\n".join(f"    <Label value={quoteattr(name)} background=\"{BRUSH_COLOURS[i % len(BRUSH_COLOURS)]}\"/>"
                         for i, name in enumerate(brush_labels(campaign)))
    image_controls = 'zoom="true" zoomControl="true" brightnessControl="true" contrastControl="true"'
    return f"""<View>
  <Text name="summary" value="$summary"/>
  <Choices name="{CLASS_FROM}" toName="{IMAGE_TO}" choice="single" required="true" showInline="true">
{choices}
  </Choices>
  <BrushLabels name="{LESION_FROM}" toName="{IMAGE_TO}">
{brushes}
  </BrushLabels>
  <View style="display: flex; gap: 12px; align-items: flex-start">
    <View style="flex: 3; min-width: 0">
      <Image name="{IMAGE_TO}" value="$image" {image_controls}/>
    </View>
    <View style="flex: 2; min-width: 0">
      <Header value="Model's pixel uncertainty (read-only): bright = unsure" size="6"/>
      <Image name="{UNCERTAINTY_TO}" value="${UNCERTAINTY_TO}"/>
    </View>
  </View>{context_view(campaign.labeling.context_slices) if volumes else ""}
</View>
"""


def context_view(radius: int) -> str:
    """The volume campaigns' scrollable context (read-only): Label Studio's multi-image viewer (``valueList``,
    a page per slice, arrows or Ctrl+Left / Ctrl+Right to turn) over the slices ``k - radius`` .. ``k + radius``
    around the task's slice ``k``, every sequence side by side. No control is bound to it: nothing drawn there
    becomes a label."""
    header = (f"Scroll through the volume (read-only): slices k-{radius} to k+{radius} around the one you "
              "annotate, every sequence side by side; the sentence above names slice k's page")
    return f"""
  <Header value={quoteattr(header)} size="6"/>
  <Image name="{CONTEXT_TO}" valueList="${CONTEXT_TO}" zoom="true" zoomControl="true"/>"""


def view_data() -> dict:
    """The Data Manager tab medloop creates: numeric and boolean columns typed (so they sort as
    numbers on every database), sorted by acquisition score, most informative first."""
    display = {f"tasks:data.{k}": "Number" for k in NUMBER_FIELDS}
    display.update({f"tasks:data.{k}": "Boolean" for k in BOOLEAN_FIELDS})
    return {
        "title": VIEW_TITLE,
        "type": "list",
        "target": "tasks",
        "ordering": ["-tasks:data.acquisition_score"],
        "columnsDisplayType": display,
        "hiddenColumns": {"explore": [f"tasks:data.{UNCERTAINTY_TO}", f"tasks:data.{CONTEXT_TO}",
                                      "tasks:data.model_version"]
                          + [f"tasks:{c}" for c in HIDDEN_SYSTEM_COLUMNS], "labeling": []},
        "filters": {"conjunction": "and", "items": []},
    }


def ensure_view(client: LSClient, project_id: int) -> int:
    """Create (once) the medloop tab of the project's Data Manager."""
    rows = client.get("/api/dm/views/", params={"project": project_id}) or []
    for row in rows if isinstance(rows, list) else rows.get("results", []):
        if (row.get("data") or {}).get("title") == VIEW_TITLE:
            return int(row["id"])
    row = client.post("/api/dm/views/", json={"project": project_id, "data": view_data()})
    return int(row["id"])


def images_folder(campaign: Campaign, store_root: str | Path | None = None) -> Path:
    return (Path(store_root) if store_root is not None else campaign.store).resolve() / "images"


def _project_exists(client: LSClient, pid: int) -> bool:
    return client.send("GET", f"/api/projects/{pid}", ok=(200, 404)).status_code == 200


def find_project(client: LSClient, title: str) -> int | None:
    page = 1
    while True:
        out = client.get("/api/projects", params={"page": page, "page_size": 100, "title": title})
        rows = out.get("results", []) if isinstance(out, dict) else out
        for row in rows:
            if row.get("title") == title:
                return int(row["id"])
        if not isinstance(out, dict) or not out.get("next"):
            return None
        page += 1


def ensure_local_storage(client: LSClient, project_id: int, folder: Path) -> int:
    """Register (once) a Local Storage on ``folder`` so its files are served; it is never synced."""
    out = client.get("/api/storages/localfiles", params={"project": project_id})
    rows = out.get("results", out) if isinstance(out, dict) else out
    for row in rows or []:
        if Path(row.get("path", "")).resolve() == folder:
            return int(row["id"])
    folder.mkdir(parents=True, exist_ok=True)
    row = client.post(
        "/api/storages/localfiles",
        json={"project": project_id, "path": str(folder), "title": "medloop image store",
              "use_blob_urls": False, "regex_filter": ""},
    )
    return int(row["id"])


def _refresh_interface(campaign: Campaign, ledger: Ledger, client: LSClient, pid: int) -> None:
    """A project made by an older medloop gets the current labeling interface and instructions (new
    tasks carry the fields it shows). Label Studio refuses a config that existing annotations
    contradict; the project then keeps its interface, with a warning."""
    wanted = label_config(campaign, volumes=_holds_volumes(ledger))
    row = client.get(f"/api/projects/{pid}") or {}
    if (row.get("label_config") or "").strip() == wanted.strip() and row.get("expert_instruction") == INSTRUCTIONS:
        return
    try:
        client.patch(f"/api/projects/{pid}", json={"label_config": wanted, "expert_instruction": INSTRUCTIONS})
    except LabelStudioError as err:
        warnings.warn(f"Label Studio project {pid} keeps its labeling interface: {err}", stacklevel=2)


def ensure_project(
    campaign: Campaign,
    ledger: Ledger,
    client: LSClient,
    *,
    store_root: str | Path | None = None,
) -> int:
    """Create or find the campaign's project, register the Local Storage, keep the id in the ledger."""
    title = project_title(campaign)
    pid: int | None = None
    known = ledger.get_meta(META_KEY)
    if known is not None and _project_exists(client, int(known)):
        pid = int(known)
    if pid is None:
        pid = find_project(client, title)
    if pid is not None:
        _refresh_interface(campaign, ledger, client, pid)
    if pid is None:
        row = client.post(
            "/api/projects",
            json={
                "title": title,
                "description": f"medloop campaign {campaign.name}: uncertain cases, pre-annotated by the model",
                "label_config": label_config(campaign, volumes=_holds_volumes(ledger)),
                "expert_instruction": INSTRUCTIONS,
                "show_instruction": True,
                "show_skip_button": True,
                "enable_empty_annotation": False,
                "maximum_annotations": 1,
                "model_version": "",
            },
        )
        pid = int(row["id"])
    ensure_local_storage(client, pid, images_folder(campaign, store_root))
    ensure_view(client, pid)
    if known != str(pid):
        ledger.set_meta(META_KEY, str(pid))
    return pid
