"""The annotator's view in headless Chromium (driven over the DevTools protocol, as
tests/dashboard/test_browser.py): log in, open the project's task list, sort it by acquisition score,
open the first task; the image is shown at its native size (500x380, its aspect kept), the model's
class is pre-selected, the brush region exists, the uncertainty image sits beside it. Screenshots go
to test-output/labeling/ (docs/labeling.md shows them)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from chromium import CHROMIUM, SKIP_REASON, Tab, chromium_tab
from PIL import Image
from scipy.ndimage import gaussian_filter

from medloop.data.imagestore import ImageStore, content_hash, prob_map_path
from medloop.data.synthetic import phantom
from medloop.labeling import server
from medloop.labeling.push import push_queue
from medloop.ledger import AnnotationTask, Ledger, Prediction, Sample

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "test-output" / "labeling"
WAIT_S = 240  # upper bound for Label Studio's pages on a busy machine (a wait, not a timing assert)
H, W, MODEL = 380, 500, 128

pytestmark = [
    pytest.mark.browser,
    pytest.mark.labelstudio,
    pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON),
]


@pytest.fixture()
def browser(tmp_path: Path):  # noqa: ANN201
    with chromium_tab(tmp_path / "chromium-profile") as tab:
        tab.failure_png = OUT / "failed.png"
        yield tab


# (class, acquisition score, confidence): the highest score is the second task, so the ID order
# differs from the acquisition order
CASES = [("benign", 0.41, 0.81), ("malignant", 1.73, 0.62), ("benign", 0.93, 0.55)]


def queue_native_cases(campaign) -> tuple[Ledger, ImageStore, list[str]]:
    """Three 500x380 ultrasound-like phantoms, scored at 128 px (probability, mask, uncertainty), queued."""
    ledger, store = Ledger.open(campaign.ledger), ImageStore(campaign.store)
    uids = []
    with ledger.transaction() as s:
        for i, (cls, score, conf) in enumerate(CASES):
            img, mask = phantom(11, i, cls, size=W, difficulty=0.2)
            img, mask = np.ascontiguousarray(img[60:60 + H]), np.ascontiguousarray(mask[60:60 + H])
            uid = f"{campaign.name}-b{i}"
            smp = Sample(uid=uid, content_hash=content_hash(img), image_path=store.put_image(uid, img),
                         source="generic", split="pool", height=H, width=W, channels=1)
            s.add(smp)
            s.flush()
            # what scoring at 128 px would store: the model sees the image squashed to 128x128
            small = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((MODEL, MODEL),
                                                                                Image.Resampling.BILINEAR))
            prob = np.clip(gaussian_filter(small, 1.5), 0, 1).astype(np.float32)
            umap_rel = store.put_array(f"umap/round-2/{uid}", 0.5 * np.sqrt(prob * (1 - prob)))
            store.put_array(prob_map_path(f"umap/round-2/{uid}"), prob.astype(np.float16))
            probs = [0.05, (1 - conf - 0.05), conf] if cls == "malignant" else [0.05, conf, 1 - conf - 0.05]
            s.add(Prediction(round_id=2, sample_id=smp.id, model_version="round-2", probs=probs,
                             pred_class=campaign.data.classes.index(cls), confidence=conf, std=0.1,
                             entropy=float(-(np.array(probs) * np.log(probs)).sum()), mutual_info=0.02 * (i + 1),
                             seg_uncertainty=0.04 + 0.05 * i, umap_path=umap_rel,
                             mask_path=store.put_mask(f"pred/round-2/{uid}", prob >= 0.5)))
            s.add(AnnotationTask(sample_id=smp.id, round_id=2, state="intent", is_audit=False, score=score))
            uids.append(uid)
    return ledger, store, uids


def log_in(browser: Tab, labelstudio_server) -> None:  # noqa: ANN001
    """Log in as an annotator would, through the login form."""
    browser.call("Page.navigate", url=f"{labelstudio_server.url}/user/login/")
    browser.wait("!!document.querySelector('input[name=email]')", "the login form")
    password = server.files(labelstudio_server.server_campaign).password.read_text().strip()
    browser.js(f"""(() => {{ document.querySelector('input[name=email]').value = {json.dumps(server.ADMIN_USER)};
        document.querySelector('input[name=password]').value = {json.dumps(password)};
        document.querySelector('form').submit(); return true; }})()""")
    browser.wait("!location.pathname.startsWith('/user/login')", "the login")


ROWS_JS = "[...document.querySelectorAll('.lsf-table__row-wrapper')].map(r => parseInt(r.innerText.split(/\\s+/)[0]))"
TOGGLE = ("[...document.querySelectorAll('button')].find(b => "
          "/^Sort (ascending|descending)$/.test(b.getAttribute('aria-label') || ''))")


def test_annotator_view_in_chromium(labelstudio_server, browser: Tab) -> None:
    name = f"annot-{np.random.default_rng().integers(1 << 30)}"
    campaign = labelstudio_server.campaign(name)
    ledger, store, uids = queue_native_cases(campaign)
    push = push_queue(campaign, ledger, store)
    assert push.pushed == 3
    top = uids[int(np.argmax([c[1] for c in CASES]))]
    top_id = push.task_ids[top]
    url = labelstudio_server.url

    log_in(browser, labelstudio_server)

    # the project's task list (the medloop tab), sorted by acquisition score in the browser
    browser.call("Page.navigate", url=f"{url}/projects/{push.project_id}/data")
    browser.wait("document.querySelectorAll('.lsf-table__row-wrapper').length >= 3", "the task list")
    assert browser.js("[...document.querySelectorAll('.lsf-table-head__column-extra')].some(e => "
                      "/bool/.test(e.innerText))"), "the audit column is not typed Boolean"
    by_score = [push.task_ids[u] for u, _ in sorted(zip(uids, CASES), key=lambda x: -x[1][1])]
    by_id = sorted(by_score)
    assert by_score != by_id and by_score != by_id[::-1]  # the orders tell sorting apart

    def rows_are(*orders: list[int]) -> str:
        wanted = json.dumps([json.dumps(o, separators=(",", ":")) for o in orders])
        return f"{wanted}.includes(JSON.stringify({ROWS_JS}))"

    def order_by(label: str, expect: list[int]) -> None:
        """Choose ``label`` in the task list's "order by" menu (the button left of the direction toggle),
        then set the direction with the toggle until the rows are in the ``expect`` order."""
        browser.wait(f"!!{TOGGLE}", "the order-by control")
        menu = "document.querySelector('.lsf-dropdown.lsf-visible .lsf-menu-dm__item')"
        order_button = f"{TOGGLE}.parentElement.querySelector('button')"
        for _ in range(5):  # open the menu (it stays open after a choice, and closes with an animation)
            if browser.js(f"!!{menu}"):
                break
            browser.js(f"{order_button}.click()")
            time.sleep(1.5)
        item = (f"[...document.querySelectorAll('.lsf-dropdown.lsf-visible .lsf-menu-dm__item')].find("
                f"i => i.innerText.trim() === {json.dumps(label)})")
        browser.wait(f"!!{item}", f"{label} in the order-by menu")
        browser.js(f"{item}.click()")
        browser.wait(rows_are(expect, expect[::-1]), f"the task list ordered by {label}")
        if not browser.js(rows_are(expect)):
            browser.js(f"{TOGGLE}.click()")
            browser.wait(rows_are(expect), f"the task list ordered by {label}, the other way")
        if browser.js(f"!!{menu}"):
            browser.js(f"{order_button}.click()")  # close the menu
            browser.wait(f"!{menu}", "the order-by menu to close", 30)

    order_by("ID", by_id)  # from the plain ID order to acquisition score, highest first
    order_by("acquisition_score", by_score)
    assert "acquisition_score" in str(browser.js(f"{TOGGLE}.parentElement.innerText"))
    browser.call("Emulation.setDeviceMetricsOverride", width=2200, height=700, deviceScaleFactor=1, mobile=False)
    time.sleep(2.0)  # wide enough for every medloop column
    browser.screenshot(OUT / "task-list.png")
    browser.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)

    # open the first task
    browser.js("document.querySelector('.lsf-table__row-wrapper').click()")
    browser.wait(f"location.search.includes('task={top_id}')", "the labeling view of the first task")
    images_js = """[...document.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0
        && i.getBoundingClientRect().width > 150).map(i => { const r = i.getBoundingClientRect();
        return {nw: i.naturalWidth, nh: i.naturalHeight, w: r.width, h: r.height, x: r.left}; })"""
    shown = browser.wait(f"(() => {{ const a = {images_js}; return a.length >= 2 ? a : null; }})()",
                         "the image and the uncertainty image")
    image, umap = sorted(shown, key=lambda i: i["x"])[:2]  # the image left, the uncertainty image beside it
    assert (image["nw"], image["nh"]) == (W, H), image  # the original pixels, not the model's 128x128 copy
    assert abs(image["w"] / image["h"] - W / H) < 0.02, image  # its aspect kept on screen
    assert (umap["nw"], umap["nh"]) == (W, H) and abs(umap["w"] / umap["h"] - W / H) < 0.02, umap
    checked = browser.wait("""(() => { const c = [...document.querySelectorAll('input.ant-checkbox-input')]
        .filter(i => i.checked).map(i => i.name); return c.length ? c : null; })()""", "a pre-selected class")
    assert checked == ["malignant"]
    regions = browser.wait("""(() => { const r = [...document.querySelectorAll('.lsf-outliner-item')]
        .map(e => e.innerText.trim()).filter(t => /Lesion/.test(t)); return r.length ? r : null; })()""",
                           "the brush region")
    assert len(regions) == 1
    text = browser.js("document.body.innerText")
    assert "model: malignant, 62 % confident; lesion boundary uncertain" in str(text)
    time.sleep(2.0)  # let the brush mask paint
    shot = browser.screenshot(OUT / "labeling.png")
    # the pre-annotated lesion is painted in its label colour (#ff3b30, blended) over the image
    arr = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=np.int16)
    x0, y0 = int(image["x"]), int(browser.js(f"[...document.querySelectorAll('img')].find(i => i.naturalWidth === {W} "
                                               "&& i.getBoundingClientRect().width > 150).getBoundingClientRect().top"))
    crop = arr[y0:y0 + int(image["h"]), x0:x0 + int(image["w"])]
    reddish = (crop[..., 0] - np.maximum(crop[..., 1], crop[..., 2])) > 60
    assert reddish.sum() > 200, "the brush pre-annotation is not painted over the image"

    browser.js("[...document.querySelectorAll('button')].find(b => /Instructions/.test(b.innerText))?.click()")
    browser.wait("/acquisition_score/.test(document.body.innerText)", "the instructions")
    time.sleep(1.0)
    browser.screenshot(OUT / "instructions.png")
    ledger.close()


# the grey levels of the image shown on the context viewer's current page, read back from the page itself
CONTEXT_PIXELS_JS = """(() => { const img = document.querySelector('.lsf-object .lsf-pagination')
    ?.closest('.lsf-object')?.querySelector('.lsf-image img');
  if (!img || !img.complete || !img.naturalWidth) return null;
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  const grey = []; for (let i = 0; i < d.length; i += 4) grey.push(d[i]);
  return {w: c.width, h: c.height, grey}; })()"""
PAGE_JS = "document.querySelector('.lsf-pagination__page-indicator')?.innerText.replace(/\\s+/g, ' ').trim()"
NEXT_JS = ("document.querySelector('.lsf-pagination__btn_arrow-right:not(.lsf-pagination__btn_arrow-right-double)')"
           ".click()")


def test_scrolling_through_a_volume_in_chromium(labelstudio_server, browser: Tab, tmp_path: Path) -> None:
    """A volume campaign's task: below the slice to annotate, Label Studio's multi-image viewer pages through
    the slices around it; each page shows its slice (the pixels read back from the page), and the sentence
    names the annotated slice's page."""
    from volume_files import lidc_like, queue_scored_volume

    from medloop.data.ingest import ingest
    from medloop.labeling.volume_slices import context_page

    name = f"scroll-{np.random.default_rng().integers(1 << 30)}"
    lidc_like(tmp_path / "nodules", n=8, shape=(40, 48, 12))  # stored (D, H, W) = (12, 48, 40)
    campaign = labelstudio_server.campaign(name, data={
        "source": "generic", "classes": ["benign", "malignant"], "volume_size": [8, 16, 16],
        "unlabeled_fraction": 0.5, "split": [0.5, 0.25, 0.25]})
    ingest(campaign, "generic", tmp_path / "nodules")
    ledger, store, smp = queue_scored_volume(campaign, np.s_[4:6, 6:10, 6:10])
    push = push_queue(campaign, ledger, store)
    tid = push.task_ids[smp.uid]
    from medloop.labeling.client import connect

    data = connect(campaign).get(f"/api/tasks/{tid}")["data"]
    k, first, n = data["slice_index"], data["context_first_slice"], len(data["context"])
    assert (first, n) == (max(0, k - 5), min(12, k + 6) - max(0, k - 5))  # labeling.context_slices = 5
    volume = store.load_volume(smp.image_path)

    def shows(expected: np.ndarray) -> bool:
        """Whether the context viewer shows ``expected`` (waiting for the page's image to load)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            out = browser.js(CONTEXT_PIXELS_JS)
            if isinstance(out, dict) and (out["h"], out["w"]) == expected.shape and np.array_equal(
                    np.asarray(out["grey"], np.uint8).reshape(expected.shape), expected):
                return True
            time.sleep(0.3)
        return False

    log_in(browser, labelstudio_server)
    browser.call("Page.navigate", url=f"{labelstudio_server.url}/projects/{push.project_id}/data?task={tid}")
    browser.wait(f"{PAGE_JS} === '1 of {n}'", "the context viewer on its first page")
    sentence = f"axial slice {k + 1} of 12 (page {k - first + 1} of {n} below)"
    assert sentence in str(browser.js("document.body.innerText"))
    assert shows(context_page(volume, first))
    for page in range(2, k - first + 2):  # turn the pages up to the annotated slice, one at a time
        browser.js(NEXT_JS)
        browser.wait(f"{PAGE_JS} === '{page} of {n}'", f"page {page}")
        assert shows(context_page(volume, first + page - 1)), f"page {page} does not show slice {first + page - 1}"
    browser.call("Emulation.setDeviceMetricsOverride", width=1400, height=1500, deviceScaleFactor=1, mobile=False)
    time.sleep(1.5)
    browser.screenshot(OUT / "volume-context.png")
    ledger.close()
