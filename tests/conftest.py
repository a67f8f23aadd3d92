"""Shared fixtures: the smoke-profile parameters, a pico model config and a smoke micro-world.

Area-specific fixtures live in ``tests/<area>/conftest.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vlmerge_core.config import Params, profile_params


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests run on 2 shared cores: keep torch to one thread for stable, comparable timings."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def smoke_params() -> Params:
    return profile_params("smoke")


@pytest.fixture
def pico_cfg(smoke_params):
    """A modality-agnostic pico model config (width 16, 2 blocks, fusion from block 1)."""
    return dataclasses.replace(smoke_params.model)


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory, smoke_params):
    """The smoke micro-world, generated once per test session into a temporary folder."""
    from vlmerge_core.data import generate_world, load_world

    root = tmp_path_factory.mktemp("smoke_world")
    generate_world(smoke_params.data, root)
    return load_world(root)
