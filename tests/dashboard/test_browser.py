"""Start `medloop dashboard` on a free port, open it in headless Chromium (driven over the DevTools
protocol), wait until the charts are drawn, check them, and save screenshots under test-output/."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from chromium import CHROMIUM, SKIP_REASON, Tab, chromium_tab
from processes import free_port, stop_process_group, wait_http

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "test-output" / "dashboard"
WAIT_S = 180  # upper bound for the app to render on a busy machine (a wait, not a timing assert)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON),
]


STATE_JS = """(() => {
  const running = !!document.querySelector('[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"]')
      || /Running/.test((document.querySelector('[data-testid="stStatusWidget"]')||{}).innerText||'');
  const charts = [...document.querySelectorAll('.vega-embed')];
  const drawn = charts.filter(e => { const c = e.querySelector('canvas, svg');
      return c && c.getBoundingClientRect().width > 50 && c.getBoundingClientRect().height > 50; }).length;
  const headers = [...document.querySelectorAll('h2')].map(h => h.innerText.trim());
  // Streamlit's "Deploy" button (the developer toolbar); the viewer toolbar has none
  const deploy = !!document.querySelector('[data-testid="stAppDeployButton"]')
      || [...document.querySelectorAll('[data-testid="stToolbar"] button')].some(b => /Deploy/.test(b.innerText));
  return {running, charts: charts.length, drawn, deploy,
          toolbar: !!document.querySelector('[data-testid="stToolbar"]'),
          exceptions: document.querySelectorAll('[data-testid="stException"]').length,
          headers, text: document.body.innerText.slice(0, 5000)};
})()"""


def wait_rendered(tab: Tab, header: str, min_charts: int, deadline: float) -> dict:
    state: dict = {}
    stable = 0
    while time.monotonic() < deadline:
        state = tab.js(STATE_JS) or {}
        ok = header in state.get("headers", []) and not state.get("running") and state.get("drawn", 0) >= min_charts
        stable = stable + 1 if ok else 0
        if stable >= 3 or state.get("exceptions"):
            return state
        time.sleep(1.0)
    return state


CHART_RECTS_JS = """[...document.querySelectorAll('.vega-embed')].map(e => { const r = e.getBoundingClientRect();
    return [Math.round(r.left), Math.round(r.top + window.scrollY), Math.round(r.width), Math.round(r.height)]; })"""


def painted_charts(png: bytes, rects: list) -> int:
    """Charts whose area in the screenshot holds many colours (axes, marks), i.e. not blank."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    painted = 0
    for left, top, width, height in rects:
        if width < 50 or height < 50:
            continue
        crop = img.crop((left, top, min(left + width, img.width), min(top + height, img.height)))
        # marks are coloured; axes, grid and text are grey: a chart with marks has saturated pixels
        arr = np.asarray(crop, dtype=np.int16)
        if ((arr.max(axis=-1) - arr.min(axis=-1)) > 60).sum() > 50:
            painted += 1
    return painted


def screenshot(tab: Tab, path: Path) -> bytes:
    h = int(tab.js("document.querySelector('[data-testid=\"stMain\"]')?.scrollHeight || 1600") or 1600)
    tab.call("Emulation.setDeviceMetricsOverride", width=1400, height=min(max(h, 900), 6000), deviceScaleFactor=1,
             mobile=False)
    time.sleep(1.0)
    return tab.screenshot(path)


@pytest.fixture()
def served(campaign_config: Path, tmp_path: Path):  # noqa: ANN201
    port = free_port()
    env = dict(os.environ, MEDLOOP_CONFIG="")
    medloop = Path(sys.executable).with_name("medloop")
    cmd = [str(medloop), "dashboard", "--config", str(campaign_config), "--port", str(port)]
    log = open(tmp_path / "dashboard.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", time.monotonic() + 120)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)
        log.close()


@pytest.fixture()
def browser(tmp_path: Path):  # noqa: ANN201
    with chromium_tab(tmp_path / "chromium-profile") as tab:
        yield tab


# Overview: label-efficiency curve, trained-on bars, round steps, pool composition (+ MLflow epochs)
PAGES = [("Overview", 4), ("Calibration", 3), ("Selection", 3), ("Annotation", 1)]


def test_dashboard_in_chromium(served: str, browser: Tab) -> None:
    for page, min_charts in PAGES:
        browser.call("Page.navigate", url=f"{served}/?page={page}")
        state = wait_rendered(browser, page, min_charts, time.monotonic() + WAIT_S)
        shot = screenshot(browser, OUT / f"{page.lower()}.png")
        rects = browser.js(CHART_RECTS_JS) or []
        assert not state.get("exceptions"), state.get("text")
        assert page in state.get("headers", []), state
        assert state.get("drawn", 0) >= min_charts, state
        assert painted_charts(shot, rects) >= min_charts, f"{page}: chart areas are blank in the screenshot"
        if page == "Overview":  # the label-efficiency curve and the trained-on bars open the page, both drawn
            assert painted_charts(shot, rects[:2]) == 2, "Overview: the label-efficiency charts are blank"
        assert "Traceback" not in state.get("text", "")
        assert state.get("toolbar") and not state.get("deploy"), f"{page}: Streamlit's Deploy button is shown"
    assert "medloop" in state["text"]


def test_sample_explorer_images_in_chromium(served: str, browser: Tab) -> None:
    browser.call("Page.navigate", url=f"{served}/?page=Sample%20explorer")
    deadline = time.monotonic() + WAIT_S
    loaded = 0
    while time.monotonic() < deadline:
        loaded = int(browser.js("[...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
                                ".filter(i => i.complete && i.naturalWidth > 0).length") or 0)
        if loaded >= 2:
            break
        time.sleep(1.0)
    screenshot(browser, OUT / "sample-explorer.png")
    assert loaded >= 2, "no sample images were rendered"
    assert "Sample explorer" in (browser.js(STATE_JS) or {}).get("headers", [])
