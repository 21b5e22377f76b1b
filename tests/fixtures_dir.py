"""Where the shared fixture data is: the one resolver for tests, fuzzing and benchmarks.

The real-world data (logs, quotes, certificates; see MANIFEST.md beside it) is never copied
into the repository.  ``TSMR_FIXTURES`` names its directory; without it the default is
``../shared/fixtures`` relative to the repository root.

This module does not import pytest, so benchmarks and the fuzz runner use it as they are.
Tests go through the ``fixtures`` fixture and the helpers of tests/conftest.py, which apply
the rule for missing data: a skip with the reason, or under ``CI=true`` a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "TSMR_FIXTURES"
REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO.parent / "shared" / "fixtures"


class FixtureMissing(FileNotFoundError):
    """Fixture data that is not where ``TSMR_FIXTURES`` (or its default) says it is."""


def fixtures_root() -> Path:
    """The directory of the shared fixtures: ``$TSMR_FIXTURES``, else ``../shared/fixtures``."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT


def in_ci() -> bool:
    """True when the environment says this is a CI run (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes", "on")


def missing_message(path: Path) -> str:
    """What to say about a missing fixture: the path and how to point ``TSMR_FIXTURES`` at the data."""
    env = os.environ.get(ENV_VAR)
    where = f"{ENV_VAR}={env}" if env else f"{ENV_VAR} is not set, default {DEFAULT}"
    return f"fixture data not found: {path} ({where}; set {ENV_VAR} to the shared fixtures directory)"


def fixture_file(rel: str = "") -> Path:
    """The path of ``rel`` (a file or directory) under the fixtures root; :class:`FixtureMissing` if absent."""
    path = fixtures_root() / rel if rel else fixtures_root()
    if not path.exists():
        raise FixtureMissing(missing_message(path))
    return path
