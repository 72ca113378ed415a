"""The circulation nodes as ComfyUI describes them to the frontend (V3 schema -> node info)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.host

SHARED = {"alpha": ("FLOAT", -4.0, 4.0, 0.01), "beta": ("FLOAT", -10.0, 20.0, 0.1),
          "start_percent": ("FLOAT", 0.0, 1.0, None), "end_percent": ("FLOAT", 0.0, 1.0, None)}


@pytest.mark.parametrize("node_id, title, alpha, beta, extra", [
    ("HopfieldCirculation_SkewCirculation", "Skew Circulation", 1.05, 3.0, []),
    ("HopfieldCirculation_AdaptiveCirculation", "Adaptive Circulation", 1.2, 5.0,
     ["eta_aggregation"]),
])
def test_node_info_matches_the_contract(nodes, node_id, title, alpha, beta, extra):
    node = {n.GET_SCHEMA().node_id: n for n in nodes.CIRCULATION_NODES}[node_id]
    info = node.GET_NODE_INFO_V1()
    assert info["display_name"] == title
    assert info["category"] == "Hopfield Circulation/circulation"
    assert info["description"]
    required = info["input"]["required"]
    assert list(required) == ["model", "alpha", "beta", "start_percent", "end_percent",
                              "layers", "branch", "space", *extra]
    for name, (kind, low, high, step) in SHARED.items():
        options = required[name][1]
        assert required[name][0] == kind and (options["min"], options["max"]) == (low, high)
        assert step is None or options["step"] == step
    assert required["alpha"][1]["default"] == alpha and required["beta"][1]["default"] == beta
    assert (required["start_percent"][1]["default"], required["end_percent"][1]["default"]) == (
        0.0, 1.0)
    assert required["layers"][1]["default"] == "all"
    combos = {"branch": ["both", "cond", "uncond"], "space": ["value", "input"]}
    if extra:
        combos["eta_aggregation"] = ["per sample", "per call"]
    for name, choices in combos.items():
        kind, options = required[name]
        assert kind == "COMBO" and options["options"] == choices
        assert options["default"] == choices[0]
    assert all(spec[1].get("tooltip") for spec in required.values())
    # added at the end, optional: prompts from before it keep validating (and mean "custom")
    optional = info["input"]["optional"]
    assert list(optional) == ["operating_point"]
    kind, options = optional["operating_point"]
    assert kind == "COMBO" and options["options"] == ["paper point for this model",
                                                      "custom α, β"]
    assert options["default"] == "paper point for this model" and options["tooltip"]
    assert info["output"] == ["MODEL"] and all(info["output_tooltips"])


def test_probe_widgets_say_what_they_mean(comfy_host):
    from hopfield_circulation.nodes.probe_nodes import StabilityProbe, StabilityReport

    info = StabilityProbe.GET_NODE_INFO_V1()
    required = info["input"]["required"]
    assert list(required) == ["model", "basis", "channels", "start_percent", "end_percent",
                              "branch", "layers"]
    assert required["basis"][1]["options"] == ["value", "input"]  # saved values unchanged
    assert "attention output" in required["basis"][1]["display_name"]
    assert "input basis only" in required["channels"][1]["display_name"]
    assert "ignored with value" in required["channels"][1]["tooltip"]
    report = StabilityReport.GET_NODE_INFO_V1()
    assert report["output_name"] == ["heatmaps", "overlay", "align_down", "align_mid",
                                     "align_up", "align_all", "report"]
