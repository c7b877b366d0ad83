"""Shared fixtures: the tiny models (built once per test session, fixed seeds, real on-disk formats)."""

from __future__ import annotations

import os

import pytest
import torch

# Built-in models are built into a per-session folder, never the user's ~/.cache.
_SESSION_HOME = None


def pytest_configure(config):
    global _SESSION_HOME
    import tempfile

    _SESSION_HOME = tempfile.mkdtemp(prefix="sdflow-tests-")
    os.environ["SDFLOW_HOME"] = _SESSION_HOME
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_sd():
    from sdflow.models.tiny import builtin_model

    return builtin_model("tiny")


@pytest.fixture(scope="session")
def tiny_upscaler():
    from sdflow.models.tiny import builtin_model

    return builtin_model("tiny-x4")


@pytest.fixture
def fresh_cache():
    from sdflow.engine import ComponentCache

    return ComponentCache()
