"""The nodes' help pages where the frontend looks for them: docs/<NodeId>/<locale>.md first
(nodeHelpService in frontend 1.27 and 1.58), then docs/<NodeId>.md for other locales."""

from __future__ import annotations

from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "js" / "docs"
NODES = {
    "HopfieldCirculation_SkewCirculation": "Skew Circulation",
    "HopfieldCirculation_AdaptiveCirculation": "Adaptive Circulation",
    "HopfieldCirculation_StabilityProbe": "Stability Probe",
    "HopfieldCirculation_StabilityReport": "Stability Report",
    "HopfieldCirculation_StabilityRank": "Stability Rank",
}


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_english_page_is_where_the_frontend_asks_first(node_id):
    page = DOCS / node_id / "en.md"
    assert page.read_text().startswith(f"# {NODES[node_id]}\n")


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_other_locales_fall_back_to_the_same_page(node_id):
    assert (DOCS / f"{node_id}.md").read_bytes() == (DOCS / node_id / "en.md").read_bytes(), (
        f"js/docs/{node_id}.md must be a copy of js/docs/{node_id}/en.md")


def test_no_stray_pages():
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == {f"{n}/en.md" for n in NODES} | {f"{n}.md" for n in NODES}
