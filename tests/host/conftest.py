"""Host-tier fixtures: the pack's circulation nodes and tiny models (built once per module)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def nodes(comfy_host):
    from hopfield_circulation.nodes import circulation_nodes

    return circulation_nodes


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
