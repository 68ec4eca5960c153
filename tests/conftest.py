"""Shared pytest fixtures (kept small on purpose)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where pyproject.toml, _config.yml and _toc.yml live)."""
    return REPO_ROOT
