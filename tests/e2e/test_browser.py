"""The pack in a real browser: Debian's headless Chromium driven by Playwright, against a real
ComfyUI server, with the classic canvas (frontend 1.27.10) and Nodes 2.0 (frontend 1.58.1).

Screenshots go to test-artifacts/ (git-ignored). With HC_WRITE_THUMBNAILS=1 the classic-mode
screenshots of the bundled workflows (the graph's 4:3 frame) also become their
workflows/<name>.jpg thumbnails, and the report node's screenshot becomes docs/report_chart.png
(the README's picture).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from .server import PACK_DIR_NAME, REPO_ROOT, ComfyServer
from .test_server import tiny_graph

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("HC_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "test-artifacts"
FRONTEND_158 = os.environ.get("HC_FRONTEND_158", str(Path.home() / "fe-1.58.1"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))
APP = "window.comfyAPI.app.app"
NODES = f"({APP}.graph.nodes ?? {APP}.graph._nodes)"
REPORT = f"{NODES}.find(n => n.type === 'HopfieldCirculation_StabilityReport')"
OUR_URL = f"/extensions/{PACK_DIR_NAME}/"
SERIES_RGB = [(0x4F, 0xA3, 0xFF), (0xFF, 0x7A, 0x59)]  # js/chart_model.js SERIES_COLORS[0:2]


def _frontend_158_static() -> str | None:
    static = Path(FRONTEND_158) / "comfyui_frontend_package" / "static"
    return str(static) if (static / "index.html").is_file() else None


MODES = {
    "classic": {"front_end": None, "settings": {}},
    "nodes2": {"front_end": "1.58.1", "settings": {"Comfy.VueNodes.Enabled": True}},
}
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
            "Comfy.Graph.CanvasInfo": False,
            # below this zoom litegraph stops drawing text; screenshots stay readable
            "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.2}


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
    if mode["front_end"]:
        front_end = _frontend_158_static()
        if front_end is None:
            pytest.skip(f"frontend 1.58.1 not found under {FRONTEND_158} (tests/e2e/setup_e2e.sh)")
    base = tmp_path_factory.mktemp(f"browser_{request.param}")
    server = ComfyServer(comfy_host, base, front_end_root=front_end)
    server.prepare()
    settings = server.user_dir / "default" / "comfy.settings.json"
    settings.write_text(json.dumps({**SETTINGS, **mode["settings"]}))
    server.start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            errors: list[str] = []
            page.on("console", lambda m: m.type == "error" and errors.append(
                f"{m.text} @ {m.location.get('url', '')}"))
            page.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack or ''}"))
            page.goto(server.url, wait_until="domcontentloaded")
            # ready once the node definitions (ours included) are registered
            page.wait_for_function(
                "!!(window.comfyAPI?.app?.app?.graph && window.LiteGraph?.registered_node_types"
                "?.HopfieldCirculation_StabilityReport)", timeout=90_000)
            yield {"mode": request.param, "page": page, "server": server, "errors": errors}
            browser.close()
    finally:
        server.stop()


def our_errors(errors: list[str]) -> list[str]:
    """Console and page errors raised by the pack's files (core noise is filtered out: offline
    404s, the 1.27.10 settings-store TypeError, endpoints 0.3.64 lacks)."""
    return [e for e in errors if OUR_URL in e or "hopfield" in e.lower() or "chart_model" in e]


THUMB_BOX = (1320, 990)  # 4:3, the shape of the template browser's cards


def frame_graph(page, max_scale: float = 0.9, min_scale: float = 0.3) -> dict:
    """Fit the whole graph into a 4:3 box of the canvas clear of the menus (not below
    min_scale, so text stays legible; a larger graph shows from its top left, where the flow
    starts). Returns that box in page pixels, for a screenshot clip."""
    return page.evaluate(f"""() => {{
        const app = {APP}; const LG = window.LiteGraph;
        let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
        const grow = (x, y, w, h) => {{ x0 = Math.min(x0, x); y0 = Math.min(y0, y);
                                        x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h); }};
        for (const n of {NODES}) grow(n.pos[0], n.pos[1] - LG.NODE_TITLE_HEIGHT, n.size[0],
                                      n.size[1] + LG.NODE_TITLE_HEIGHT);
        for (const g of app.graph.groups ?? app.graph._groups ?? []) {{
            const b = g._bounding ?? g.bounding; grow(b[0], b[1], b[2], b[3]); }}
        // 1.27's canvas sits beside the menus; 1.58's fills the window under them
        const c = app.canvas.canvas.getBoundingClientRect();
        const box = {{ x: Math.max(c.x, 64) + 8, y: Math.max(c.y, 80) + 4,
                      width: {THUMB_BOX[0]}, height: {THUMB_BOX[1]} }};
        const pad = 16;
        const scale = Math.max({min_scale}, Math.min({max_scale},
            (box.width - 2 * pad) / (x1 - x0), (box.height - 2 * pad) / (y1 - y0)));
        // centred where it fits, from the top left where it does not
        const dx = Math.max(pad, (box.width - (x1 - x0) * scale) / 2);
        const dy = Math.max(pad, (box.height - (y1 - y0) * scale) / 2);
        app.canvas.ds.scale = scale;
        app.canvas.ds.offset = [(box.x + dx - c.x) / scale - x0, (box.y + dy - c.y) / scale - y0];
        app.graph.setDirtyCanvas(true, true);
        return box;
    }}""")


def test_extension_loads_once(browser_session):
    page = browser_session["page"]
    names = page.evaluate(f"{APP}.extensions.map(e => e.name)")
    assert names.count("hopfield_circulation.align_chart") == 1
    served = page.evaluate("async () => (await fetch('/extensions')).json()")
    ours = sorted(u for u in served if OUR_URL in u)
    # one loading mechanism (WEB_DIRECTORY): every module listed once, nothing but modules
    assert ours == [f"{OUR_URL}chart_model.js", f"{OUR_URL}hopfield_circulation.js"]
    assert not our_errors(browser_session["errors"])


def test_help_page_reaches_the_frontend(browser_session):
    page = browser_session["page"]
    text = page.evaluate(f"""async () => (await fetch(
        '{OUR_URL}docs/HopfieldCirculation_SkewCirculation.md')).text()""")
    assert text.startswith("# Skew Circulation")
    module = page.evaluate("window.LiteGraph.registered_node_types"
                           ".HopfieldCirculation_SkewCirculation.nodeData?.python_module")
    assert module == f"custom_nodes.{PACK_DIR_NAME}"  # the help service derives <pack> from it


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_bundled_workflow_loads_without_missing_nodes(browser_session, path):
    page = browser_session["page"]
    workflow = json.loads(path.read_text())
    missing = page.evaluate(
        """async ([wf, name]) => {
            const app = window.comfyAPI.app.app;
            await app.loadGraphData(wf, true, true, name);
            const LG = window.LiteGraph;
            const nodes = app.graph.nodes ?? app.graph._nodes;
            // Note nodes are frontend-only (1.58 registers them lazily)
            return nodes.filter(n => !(n.type in LG.registered_node_types) && n.type !== "Note")
                        .map(n => n.type);
        }""",
        [workflow, path.stem],
    )
    assert missing == []
    count = page.evaluate(f"{NODES}.length")
    assert count == len(workflow["nodes"])
    if browser_session["mode"] == "nodes2":  # really Nodes 2.0: every node is a DOM (Vue) node
        page.wait_for_function(f"document.querySelectorAll('[data-node-id]').length >= {count}",
                               timeout=15_000)
    page.wait_for_timeout(500)
    box = frame_graph(page)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / f"{browser_session['mode']}_{path.stem}.png"))
    shot = ARTIFACTS / f"{browser_session['mode']}_{path.stem}_graph.png"
    page.screenshot(path=str(shot), clip=box)
    if browser_session["mode"] == "classic" and os.environ.get("HC_WRITE_THUMBNAILS"):
        from PIL import Image

        Image.open(shot).convert("RGB").resize((800, 600), Image.LANCZOS).save(
            path.with_suffix(".jpg"), quality=88)
    assert not our_errors(browser_session["errors"])


def _wait_for_history(server, count: int, timeout: float = 120.0) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        statuses = [h["status"]["status_str"] for h in server.get("/history").values()
                    if h.get("status", {}).get("completed") or
                    h.get("status", {}).get("status_str") == "error"]
        if len(statuses) >= count:
            return statuses
        time.sleep(0.5)
    return statuses


def _chart_pixels(page) -> dict:
    """Pixels of the report's chart canvas that carry each series colour."""
    return page.evaluate(
        f"""(series) => {{
            const node = {REPORT};
            const c = node.__hopfieldChartCanvas;
            if (!c || !c.width) return {{ width: 0, counts: series.map(() => 0), colours: 0 }};
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const counts = series.map(() => 0); const colours = new Set();
            for (let i = 0; i < d.length; i += 4) {{
                colours.add(d[i] << 16 | d[i+1] << 8 | d[i+2]);
                series.forEach(([r, g, b], k) => {{
                    if (Math.abs(d[i]-r) + Math.abs(d[i+1]-g) + Math.abs(d[i+2]-b) < 40)
                        counts[k] += 1; }});
            }}
            return {{ width: c.clientWidth, counts, colours: colours.size }};
        }}""", [list(c) for c in SERIES_RGB])


def _node_rect(page, pad: float = 12) -> dict:
    """The report node's rectangle on screen (its DOM element in Nodes 2.0, else from the
    canvas transform), padded, for a screenshot of just that node."""
    return page.evaluate(f"""() => {{
        const app = {APP}; const node = {REPORT}; const LG = window.LiteGraph;
        const el = document.querySelector(`[data-node-id="${{node.id}}"]`);
        let x, y, w, h;
        if (el) {{ const r = el.getBoundingClientRect();
                   [x, y, w, h] = [r.x, r.y, r.width, r.height]; }}
        else {{ const s = app.canvas.ds.scale, o = app.canvas.ds.offset;
            const c = app.canvas.canvas.getBoundingClientRect();  // 1.27: beside the sidebar
            x = c.x + (node.pos[0] + o[0]) * s;
            y = c.y + (node.pos[1] - LG.NODE_TITLE_HEIGHT + o[1]) * s;
            w = node.size[0] * s; h = (node.size[1] + LG.NODE_TITLE_HEIGHT) * s; }}
        const x0 = Math.max(0, x - {pad}), y0 = Math.max(0, y - {pad});
        return {{ x: x0, y: y0, width: Math.min(window.innerWidth - x0, w + 2 * {pad}),
                 height: Math.min(window.innerHeight - y0, h + 2 * {pad}) }};
    }}""")


def test_real_execution_draws_the_chart(browser_session):
    """A tiny SDXL run (batch of 2: one series per sample) through the whole pack, queued from
    the browser; the chart is drawn, redrawn on re-execution and on resize, never serialised."""
    page, server, mode = browser_session["page"], browser_session["server"], browser_session["mode"]
    page.evaluate(f"async (p) => {{ await {APP}.loadApiJson(p, 'tiny'); }}",
                  tiny_graph("sdxl", batch_size=2))
    before = len(server.get("/history"))
    assert page.evaluate(f"{REPORT}.__hopfieldChart ?? null") is None
    page.evaluate(f"async () => {{ await {APP}.queuePrompt(0, 1); }}")
    statuses = _wait_for_history(server, before + 1)
    assert statuses[-1:] == ["success"], (statuses, server.log())
    page.wait_for_function(f"({REPORT}).__hopfieldChart != null", timeout=30_000, polling=300)
    chart = page.evaluate(f"({REPORT}).__hopfieldChart")
    assert [s["label"] for s in chart["samples"]] == ["sample 0 (cond)", "sample 1 (cond)"]
    assert {layer["group"] for layer in chart["samples"][0]["layers"]} == {"down", "mid", "up"}

    # give the report node room of its own, then look at it
    page.evaluate(f"""() => {{ const app = {APP}; const node = {REPORT};
        let x1 = -Infinity, y0 = Infinity;
        for (const n of {NODES}) if (n !== node) {{
            x1 = Math.max(x1, n.pos[0] + n.size[0]); y0 = Math.min(y0, n.pos[1]); }}
        node.pos = [x1 + 80, y0];
        node.setSize([560, Math.max(node.size[1], 640)]);
        app.canvas.ds.scale = 1.0; app.canvas.centerOnNode(node);
        app.graph.setDirtyCanvas(true, true); }}""")
    page.wait_for_timeout(800)
    first = _chart_pixels(page)
    assert all(n > 30 for n in first["counts"]), f"a series is missing from the chart: {first}"
    assert first["colours"] > 20, "the chart canvas is blank"
    page.screenshot(path=str(ARTIFACTS / f"{mode}_report_chart.png"))
    shot = ARTIFACTS / f"{mode}_report_node.png"
    page.screenshot(path=str(shot), clip=_node_rect(page))
    if mode == "classic" and os.environ.get("HC_WRITE_THUMBNAILS"):
        shutil.copy(shot, REPO_ROOT / "docs" / "report_chart.png")

    # re-execution: the seed is randomised after each queue, so the report (and chart) change
    page.evaluate(f"() => {{ window.__hcOldChart = ({REPORT}).__hopfieldChart; }}")
    page.evaluate(f"async () => {{ await {APP}.queuePrompt(0, 1); }}")
    statuses = _wait_for_history(server, before + 2)
    assert statuses[-1:] == ["success"], (statuses, server.log())
    page.wait_for_function(f"({REPORT}).__hopfieldChart !== window.__hcOldChart",
                           timeout=30_000, polling=300)
    charts = page.evaluate("document.querySelectorAll('.hopfield-circulation-chart').length")
    assert charts == 1, "re-execution must redraw the one chart, not add another"
    page.wait_for_timeout(300)
    assert all(n > 30 for n in _chart_pixels(page)["counts"])

    # resizing the node redraws the chart at the new width
    page.evaluate(f"""() => {{ const node = {REPORT};
        node.setSize([900, node.size[1]]); {APP}.graph.setDirtyCanvas(true, true); }}""")
    page.wait_for_function(f"({REPORT}).__hopfieldChartCanvas.clientWidth > {first['width'] + 200}",
                           timeout=10_000, polling=200)
    page.wait_for_timeout(500)
    resized = _chart_pixels(page)
    assert all(n > 30 for n in resized["counts"]), resized
    assert page.evaluate(f"({REPORT}).__hopfieldChartCanvas.width") >= resized["width"]
    page.screenshot(path=str(ARTIFACTS / f"{mode}_report_chart_resized.png"))

    # display-only: neither in the saved workflow nor in the prompt
    saved = page.evaluate(f"JSON.stringify({APP}.graph.serialize())")
    assert "align_chart" not in saved and "hopfield_chart" not in saved
    report_values = page.evaluate(f"({REPORT}).serialize().widgets_values")
    assert report_values == [True, "hopfield/e2e_sdxl"]
    prompt = page.evaluate(f"async () => (await {APP}.graphToPrompt()).output")
    report_inputs = next(n["inputs"] for n in prompt.values()
                         if n["class_type"] == "HopfieldCirculation_StabilityReport")
    assert set(report_inputs) == {"probe", "latent", "image", "save_file", "filename_prefix"}
    assert not our_errors(browser_session["errors"])
