"""The pack in a real browser: Debian's headless Chromium driven by Playwright, against a real
ComfyUI server, with the classic canvas (frontend 1.27.10) and Nodes 2.0 (frontend 1.58.1).

Screenshots go to test-artifacts/ (git-ignored). With HC_WRITE_THUMBNAILS=1 the screenshots of
the bundled workflows are also written as their workflows/<name>.jpg thumbnails.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from .server import REPO_ROOT, ComfyServer
from .test_server import tiny_graph

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("HC_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "test-artifacts"
FRONTEND_158 = os.environ.get("HC_FRONTEND_158", str(Path.home() / "fe-1.58.1"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))
APP = "window.comfyAPI?.app?.app"


def _frontend_158_static() -> str | None:
    static = Path(FRONTEND_158) / "comfyui_frontend_package" / "static"
    return str(static) if (static / "index.html").is_file() else None


MODES = {
    "classic": {"front_end_root": None, "settings": {}},
    "nodes2": {"front_end_root": "1.58.1", "settings": {"Comfy.VueNodes.Enabled": True}},
}


@pytest.fixture(scope="module", params=list(MODES))
def browser_session(request, comfy_host, tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; tests/e2e/setup_e2e.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; never 'playwright "
                    "install': Debian's Chromium is used)")
    mode = MODES[request.param]
    front_end = None
    if mode["front_end_root"]:
        front_end = _frontend_158_static()
        if front_end is None:
            pytest.skip(f"frontend 1.58.1 not found under {FRONTEND_158} (tests/e2e/setup_e2e.sh)")
    base = tmp_path_factory.mktemp(f"browser_{request.param}")
    server = ComfyServer(comfy_host, base, front_end_root=front_end)
    server.prepare()
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, **mode["settings"]}))
    server.start()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        errors = []
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url, wait_until="domcontentloaded")
        # ready once the node definitions (ours included) are registered
        page.wait_for_function(
            f"!!({APP}?.graph && window.LiteGraph?.registered_node_types"
            "?.HopfieldCirculation_StabilityReport)", timeout=90_000)
        yield {"mode": request.param, "page": page, "server": server, "errors": errors}
        browser.close()
    server.stop()


def our_errors(errors: list[str]) -> list[str]:
    return [e for e in errors if "hopfield" in e.lower() or "chart_model" in e]


def test_extension_loads(browser_session):
    page = browser_session["page"]
    names = page.evaluate(f"{APP}.extensions.map(e => e.name)")
    assert "hopfield_circulation.align_chart" in names
    assert not our_errors(browser_session["errors"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_bundled_workflow_loads_without_missing_nodes(browser_session, path):
    page = browser_session["page"]
    workflow = json.loads(path.read_text())
    missing = page.evaluate(
        """async (wf) => {
            const app = window.comfyAPI.app.app;
            await app.loadGraphData(wf, true, true, null);
            const LG = window.LiteGraph;
            const nodes = app.graph.nodes ?? app.graph._nodes;
            // Note nodes are frontend-only (1.58 registers them lazily)
            return nodes.filter(n => !(n.type in LG.registered_node_types) && n.type !== "Note")
                        .map(n => n.type);
        }""",
        workflow,
    )
    assert missing == []
    page.wait_for_timeout(600)
    page.evaluate("""async () => { const app = window.comfyAPI.app.app;
        // below ~0.6 litegraph drops text (low-quality mode); keep it readable
        try { await app.extensionManager.setting.set(
            "LiteGraph.Canvas.LowQualityRenderingZoomThreshold", 0.2); } catch (e) {}
        app.canvas.ds.scale = 0.7; app.canvas.ds.offset = [40, 90];
        app.graph.setDirtyCanvas(true, true); }""")
    page.wait_for_timeout(400)
    shot = ARTIFACTS / f"{browser_session['mode']}_{path.stem}.png"
    page.screenshot(path=str(shot))
    if browser_session["mode"] == "classic" and os.environ.get("HC_WRITE_THUMBNAILS"):
        from PIL import Image

        Image.open(shot).convert("RGB").resize((960, 540)).save(path.with_suffix(".jpg"),
                                                                quality=85)
    assert not our_errors(browser_session["errors"])


def test_real_execution_draws_the_chart(browser_session):
    page = browser_session["page"]
    page.evaluate("async (p) => { await window.comfyAPI.app.app.loadApiJson(p, 'tiny'); }",
                  tiny_graph())
    report = (f"({APP}.graph.nodes ?? {APP}.graph._nodes)"
              ".find(n => n.type === 'HopfieldCirculation_StabilityReport')")
    queued = page.evaluate(f"async () => String(await {APP}.queuePrompt(0, 1))")
    server = browser_session["server"]
    deadline = time.time() + 120
    while time.time() < deadline:
        statuses = [h["status"]["status_str"] for h in server.get("/history").values()]
        if statuses:
            break
        time.sleep(0.5)
    assert statuses == ["success"], (queued, statuses, server.log())
    page.wait_for_function(f"({report} || {{}}).__hopfieldChart != null", timeout=30_000,
                           polling=500)
    page.evaluate(f"""() => {{ const app = {APP}; const node = {report};
        app.canvas.ds.scale = 1.0; app.canvas.centerOnNode(node);
        app.graph.setDirtyCanvas(true, true); }}""")
    page.wait_for_timeout(800)
    painted = page.evaluate(
        """() => {
            const c = document.querySelector('.hopfield-circulation-chart canvas');
            if (!c || !c.width) return 0;
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const colours = new Set();
            for (let i = 0; i < d.length; i += 16) colours.add(d[i] << 16 | d[i+1] << 8 | d[i+2]);
            return colours.size;
        }""")
    assert painted > 10, "the chart canvas is blank"
    shot = ARTIFACTS / f"{browser_session['mode']}_report_chart.png"
    page.screenshot(path=str(shot))
    if browser_session["mode"] == "classic" and os.environ.get("HC_WRITE_THUMBNAILS"):
        shutil.copy(shot, REPO_ROOT / "docs" / "report_chart.png")
    # the display-only chart is never serialised into the workflow
    saved = page.evaluate(f"JSON.stringify({APP}.graph.serialize())")
    assert "align_chart" not in saved and "hopfield_chart" not in saved
    assert not our_errors(browser_session["errors"])
