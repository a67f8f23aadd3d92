"""Fixtures of the merge tests (helpers in ``_merge_helpers.py``)."""

from __future__ import annotations

import pytest
from _merge_helpers import make_ms_sd


@pytest.fixture
def ms_and_central():
    return make_ms_sd()
