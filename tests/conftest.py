"""Shared test isolation: users' models registered by one test (directly or through bench.run in this process)
are undone afterwards, so every other test sees the built-in zoo only."""
from __future__ import annotations

import os
import sys

import pytest

import models.registry as registry
import models.user as user


@pytest.fixture(autouse=True)
def restore_registry(monkeypatch):
    """Every test's models and loaded sources are undone afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(user, "_LOADED", dict(user._LOADED))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("densebench_user_"):
            del sys.modules[name]


# The suite runs processes side by side on purpose (a killed run's leftovers, busy loops, two runs at once), so the
# runs it starts do not wait for a quiet machine unless a test asks (--wait-quiet / wait_quiet=...).
os.environ.setdefault("DENSEBENCH_WAIT_QUIET", "0")
