"""Fixtures for the profiles suite: the real CLI and a pinned rendering environment."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from profiles_testlib import PROFILES, Run


@pytest.fixture()
def gh200(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Run]:
    """`gh200 ARGS` in this process, through the console script's own main(): the same argument
    parsing, error lines and exit codes, without paying the interpreter start-up per call.
    The suite still runs the installed script as a subprocess where that is the point
    (profiles_testlib.run_gh200)."""
    from gh200.cli import main

    def run(args: list[str], env: dict[str, str] | None = None) -> Run:
        with monkeypatch.context() as patch:
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            patch.delenv("COLUMNS", raising=False)
            patch.setattr(sys, "argv", ["gh200", *args])
            capsys.readouterr()
            try:
                main()
                code = 0
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            out, err = capsys.readouterr()
        return Run(code, out, err)

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
