"""What a new user gets from the circulation nodes' defaults, their queue-time checks and their
messages, in real ComfyUI with the tiny SDXL and SD3 models."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.host


def _skew(nodes, model, *, alpha=1.05, beta=3.0, start=0.0, end=1.0, layers="all",
          point="paper point for this model"):
    return nodes.SkewCirculation.execute(model, alpha, beta, start, end, layers, "both",
                                         "value", point)


def _adaptive(nodes, model, *, alpha=1.2, beta=5.0, point="paper point for this model"):
    return nodes.AdaptiveCirculation.execute(model, alpha, beta, 0.0, 1.0, "all", "both",
                                             "value", "per sample", point)


def _steering_alphas(patched, sample):
    """The α each steered self-attention call applied, over one sampling run."""
    from hopfield_circulation.hook.override import add_observer

    seen = []

    def observe(call, out, steering):
        if steering is not None:
            seen.append(float(torch.as_tensor(steering.alpha).float().mean()))

    m = patched.clone()
    add_observer(m, observe)
    sample(m)
    return seen


def test_the_schema_default_is_the_paper_point_for_the_model(nodes):
    for node in nodes.CIRCULATION_NODES:
        info = node.GET_NODE_INFO_V1()
        spec = info["input"]["optional"]["operating_point"]
        assert spec[0] == "COMBO"
        assert spec[1]["options"] == ["paper point for this model", "custom α, β"]
        assert spec[1]["default"] == "paper point for this model"
        assert "0.95" in spec[1]["tooltip"] and "1.05" in spec[1]["tooltip"] or \
            "1.2" in spec[1]["tooltip"]


def test_sd3_default_steers_with_alpha_below_one(nodes, sd3, sampling):
    out = _skew(nodes, sd3)  # the widgets still hold the SDXL-looking 1.05
    alphas = _steering_alphas(out.result[0], sampling["sd3"])
    assert alphas and all(a == pytest.approx(0.95) for a in alphas)
    used = out.ui["hopfield_operating_point"][0]
    assert (used["alpha"], used["beta"]) == (0.95, 3.0)
    assert "SD3" in used["text"] and "α 0.95, β 3" in used["text"]
    # the same image as the explicit point, not the SDXL direction
    explicit = _skew(nodes, sd3, alpha=0.95, beta=3.0, point="custom α, β").result[0]
    sdxl_way = _skew(nodes, sd3, alpha=1.05, beta=3.0, point="custom α, β").result[0]
    image = sampling["sd3"](out.result[0])
    assert torch.equal(image, sampling["sd3"](explicit))
    assert not torch.equal(image, sampling["sd3"](sdxl_way))


def test_sdxl_default_steers_with_the_sdxl_point(nodes, sdxl, sampling):
    out = _skew(nodes, sdxl, alpha=0.5, beta=9.0)  # widgets ignored by the paper point
    alphas = _steering_alphas(out.result[0], sampling["sdxl"])
    assert alphas and all(a == pytest.approx(1.05) for a in alphas)
    assert out.ui["hopfield_operating_point"][0]["beta"] == 3.0


def test_adaptive_default_follows_the_model(nodes, sdxl, sd3):
    assert _adaptive(nodes, sdxl).ui["hopfield_operating_point"][0]["alpha"] == 1.2
    sd3_point = _adaptive(nodes, sd3).ui["hopfield_operating_point"][0]
    assert sd3_point["alpha"] < 1 and "no adaptive SD3 result" in sd3_point["text"]


def test_custom_and_absent_use_the_widgets(nodes, sd3, sampling):
    custom = _skew(nodes, sd3, alpha=1.3, beta=2.0, point="custom α, β")
    assert custom.ui["hopfield_operating_point"][0]["alpha"] == 1.3
    assert "custom" in custom.ui["hopfield_operating_point"][0]["text"]
    # an API prompt written before operating_point existed: α, β as given
    absent = nodes.SkewCirculation.execute(sd3, 1.3, 2.0, 0.0, 1.0, "all", "both", "value")
    assert absent.ui["hopfield_operating_point"][0]["alpha"] == 1.3
    assert _steering_alphas(absent.result[0], sampling["sd3"])[0] == pytest.approx(1.3)


@pytest.mark.parametrize("node_name", ["SkewCirculation", "AdaptiveCirculation"])
def test_queue_time_check_refuses_what_needs_no_model(nodes, node_name):
    node = getattr(nodes, node_name)
    assert node.validate_inputs("all", 0.0, 1.0) is True
    assert node.validate_inputs("0-47, 68-139", 0.2, 0.8) is True
    assert node.validate_inputs("early, late", 0.0, 1.0) is True  # SD3 names: model unknown
    assert node.validate_inputs(None, None, None) is True  # linked inputs: run time
    assert "cannot read 'foo'" in node.validate_inputs("foo", 0.0, 1.0)
    assert "runs backwards" in node.validate_inputs("9-4", 0.0, 1.0)
    assert "layers is empty" in node.validate_inputs(" , ", 0.0, 1.0)
    message = node.validate_inputs("all", 0.8, 0.2)
    assert message == ("start_percent (0.8) is after end_percent (0.2): no step would be "
                       "steered")
    assert "between 0 and 1" in node.validate_inputs("all", -0.1, 1.0)


def test_probe_queue_time_check(comfy_host):
    from hopfield_circulation.nodes.probe_nodes import StabilityProbe

    assert StabilityProbe.validate_inputs("down", 0.0, 1.0) is True
    assert "cannot read" in StabilityProbe.validate_inputs("downn", 0.0, 1.0)
    assert "no step would be recorded" in StabilityProbe.validate_inputs("all", 1.0, 0.5)


def test_the_queue_time_messages_are_the_run_time_ones(nodes, sdxl):
    """Word for word, except that at queue time the names of every family are offered (the
    model is not known yet), at run time those of the connected model."""
    for layers, start, end in (("foo", 0.0, 1.0), ("all", 0.8, 0.2)):
        queued = nodes.SkewCirculation.validate_inputs(layers, start, end)
        with pytest.raises(ValueError) as run_time:
            _skew(nodes, sdxl, layers=layers, start=start, end=end, point="custom α, β")
        at_run = str(run_time.value)
        assert at_run.startswith("Skew Circulation: ")
        if layers == "foo":
            common = "layers: cannot read 'foo'; use all, down, mid, up, "
            assert queued.startswith(common) and at_run.startswith(f"Skew Circulation: {common}")
            assert queued.endswith("an index or a range like 4-9") and at_run.endswith(
                "an index or a range like 4-9")
        else:
            assert at_run == f"Skew Circulation: {queued}"


def test_model_dependent_errors_name_the_node(nodes, sd3, sdxl, comfy_host):
    from hopfield_circulation.nodes.probe_nodes import StabilityProbe

    with pytest.raises(ValueError, match=r"^Skew Circulation: layers: '2-30' is past the last"):
        _skew(nodes, sd3, layers="2-30")
    with pytest.raises(ValueError, match=r"^Adaptive Circulation: .*input"):
        nodes.AdaptiveCirculation.execute(sd3, 1.2, 5.0, 0.0, 1.0, "all", "both", "input",
                                          "per sample")
    with pytest.raises(ValueError, match=r"^Stability Probe: layers .*selects no"):
        StabilityProbe.execute(sdxl, "value", 64, 0.0, 1.0, "cond", "1")
    with pytest.raises(ValueError, match=r"^Skew Circulation: layers: cannot read 'early'"):
        _skew(nodes, sdxl, layers="early")  # an SD3 name on an SDXL model
    # an empty selection on SD3 explains SD3's indices, not SDXL's
    with pytest.raises(ValueError) as empty:
        _skew(nodes, sd3, layers="late")  # no third block on the two-block model
    assert str(empty.value).startswith("Skew Circulation: layers 'late' selects no")
    assert "SD3" in str(empty.value) and "SDXL" not in str(empty.value)


def test_report_text_names_the_circulation_of_the_run(nodes, sd3, sampling, comfy_host,
                                                      tmp_path):
    import folder_paths
    from hopfield_circulation.nodes.probe_nodes import StabilityProbe, StabilityReport

    folder_paths.set_output_directory(str(tmp_path))
    for probe_first in (True, False):
        if probe_first:
            probed, handle = StabilityProbe.execute(sd3, "value", 64, 0.0, 1.0, "cond",
                                                    "all").result
            model = _skew(nodes, probed).result[0]
        else:
            steered = _skew(nodes, sd3).result[0]
            model, handle = StabilityProbe.execute(steered, "value", 64, 0.0, 1.0, "cond",
                                                   "all").result
        latent = sampling["sd3"](model)
        out = StabilityReport.execute(handle, {"samples": latent}, False, "hopfield/t")
        text = out.result[6]
        assert "Circulation in this run: Skew Circulation α 0.95, β 3" in text, text
        assert "run 1 of this Stability Probe" in text
        table = out.ui["hopfield_report_table"][0]
        assert table["notes"][0].startswith("Circulation in this run")
