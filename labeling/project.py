"""The Label Studio project of a campaign: labeling config, create-or-find, Local Storage.

The project id is kept in the ledger (``Meta`` key ``ls_project_id``); a project is found again
by that id, else by its title (``labeling.project_title``, default ``medloop-<campaign>``).
Images are served from the image store without copying: a Local Storage is registered on the
store's ``images/`` folder (a sub-folder of the server's ``LOCAL_FILES_DOCUMENT_ROOT``) and
tasks point at ``/data/local-files/?d=<path relative to the document root>``.
"""

from __future__ import annotations

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

INSTRUCTIONS = (
    "<p><b>medloop annotation.</b> The model was uncertain about these images; they come pre-annotated "
    "with its class and lesion mask.</p><ul>"
    "<li>Choose exactly <b>one</b> class.</li>"
    "<li>Correct the lesion mask with the brush and the eraser; erase it completely when there is no lesion.</li>"
    "<li>Skip a task only when the image cannot be judged (it then never becomes a label).</li>"
    "<li>Tasks marked AUDIT check an automatic pseudo-label: annotate them like any other.</li></ul>"
)


def project_title(campaign: Campaign) -> str:
    return campaign.labeling.project_title or f"medloop-{campaign.name}"


def label_config(campaign: Campaign) -> str:
    """The labeling interface: image with zoom, one required class, lesion brush, uncertainty text."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in campaign.data.classes)
    lesion = quoteattr(campaign.labeling.lesion_label)
    image_controls = 'zoom="true" zoomControl="true" brightnessControl="true" contrastControl="true"'
    return f"""<View>
  <Header value="Choose one class and correct the lesion mask (see the instructions)"/>
  <Text name="info" value="$info"/>
  <Image name="{IMAGE_TO}" value="$image" {image_controls}/>
  <Choices name="{CLASS_FROM}" toName="{IMAGE_TO}" choice="single" required="true" showInline="true">
{choices}
  </Choices>
  <BrushLabels name="{LESION_FROM}" toName="{IMAGE_TO}">
    <Label value={lesion} background="#ff3b30"/>
  </BrushLabels>
</View>
"""


def images_folder(campaign: Campaign, store_root: str | Path | None = None) -> Path:
    return (Path(store_root) if store_root is not None else campaign.store).resolve() / "images"


def _project_exists(client: LSClient, pid: int) -> bool:
    try:
        client.get(f"/api/projects/{pid}")
        return True
    except LabelStudioError as err:
        if "HTTP 404" in str(err):
            return False
        raise


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
    if pid is None:
        row = client.post(
            "/api/projects",
            json={
                "title": title,
                "description": f"medloop campaign {campaign.name}: uncertain cases, pre-annotated by the model",
                "label_config": label_config(campaign),
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
    if known != str(pid):
        ledger.set_meta(META_KEY, str(pid))
    return pid
