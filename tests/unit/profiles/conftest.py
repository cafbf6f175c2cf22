"""Fixtures for the profiles suite: the real CLI and a pinned rendering environment."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from profiles_testlib import GH200, PROFILES, Run, run_gh200


@pytest.fixture(scope="session")
def gh200() -> Callable[..., Run]:
    """The installed console script, run as a user would (subprocess, real exit code)."""
    if not GH200.exists():
        pytest.fail(f"{GH200} is missing: run `make setup` (uv sync) first")
    return run_gh200


@pytest.fixture()
def pinned_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of profiles/ with empty lock files, GH200_MODELS=/srv/models and a private cache.

    Renders then depend only on the profile YAML, not on whatever `gh200 lock` last wrote.
    """
    bundle = tmp_path / "bundle"
    shutil.copytree(PROFILES, bundle / "profiles", ignore=shutil.ignore_patterns("*.lock"))
    for name, section in (("images.lock", "images"), ("models.lock", "models")):
        (bundle / "profiles" / name).write_text(f"schema: 1\n{section}: {{}}\n")
    cache = tmp_path / "cache"
    monkeypatch.setenv("GH200_HOME", str(bundle))
    monkeypatch.setenv("GH200_MODELS", "/srv/models")
    monkeypatch.setenv("GH200_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield bundle
