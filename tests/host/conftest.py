"""Host-tier fixtures: the pack's circulation and probe nodes and tiny models (built once per
module)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def nodes(comfy_host):
    from hopfield_circulation.nodes import circulation_nodes

    return circulation_nodes


@pytest.fixture(scope="module")
def probe_nodes(comfy_host, tmp_path_factory):
    """The probe nodes, their reports saved under a temporary output folder."""
    import folder_paths
    from hopfield_circulation.nodes import probe_nodes

    folder_paths.set_output_directory(str(tmp_path_factory.mktemp("output")))
    return probe_nodes


@pytest.fixture(scope="module")
def sdxl(comfy_host):
    from host.tiny_models import tiny_sdxl

    return tiny_sdxl()


@pytest.fixture(scope="module")
def sd3(comfy_host):
    from host.tiny_models import tiny_sd3

    return tiny_sd3()


@pytest.fixture(scope="module")
def sampling(comfy_host):
    from host import tiny_models

    return {"sdxl": tiny_models.sample_sdxl, "sd3": tiny_models.sample_sd3,
            "sd15": tiny_models.sample_sd15}
