"""Fixtures for the profiles suite: the real CLI and a pinned rendering environment."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from profiles_testlib import PROFILES, Run


@pytest.fixture()
def gh200(gh200_cli: Callable[..., tuple[int, str, str]]) -> Callable[..., Run]:
    """`gh200 ARGS` in this process (tests/conftest.py's gh200_cli) as a Run, with ENV set and COLUMNS
    unset for the call. The suite still runs the installed script as a subprocess where that is the
    point (profiles_testlib.run_gh200)."""

    def run(args: list[str], env: dict[str, str] | None = None) -> Run:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            patch.delenv("COLUMNS", raising=False)
            return Run(*gh200_cli(args))

    return run


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
