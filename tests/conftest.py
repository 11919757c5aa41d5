"""Shared test fixtures. Every test gets its own empty model cache (MEDDIFF_HOME) so nothing leaks between tests."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Point the model cache at a fresh temp folder for each test."""
    home = tmp_path_factory.mktemp("meddiff_home")
    monkeypatch.setenv("MEDDIFF_HOME", str(home))
    return home


def pytest_collection_modifyitems(config, items):
    """Skip @pytest.mark.gpu tests when no CUDA device is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
