"""The client package's own tests run in its light venvs against a live server whose
address the main suite passes in SUPERTONIC_TEST_ADDRESS (see tests/test_client_venvs.py)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def address() -> str:
    addr = os.environ.get("SUPERTONIC_TEST_ADDRESS")
    if not addr:
        pytest.skip("SUPERTONIC_TEST_ADDRESS is not set: run via tests/test_client_venvs.py")
    return addr
