"""Golden files: `gh200 profiles render` for every profile, byte for byte.

Regenerate after an intended change with `GH200_UPDATE_GOLDEN=1 pytest tests/unit/profiles`,
then review the diff of tests/unit/profiles/golden/ like any other code change. An update run never
passes: a rewritten file fails and an unchanged one is skipped, so only a run without the variable
(comparing against files a person reviewed) can turn the golden test green.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from profiles_testlib import GOLDEN, PROFILES, REFERENCE_PROFILES
from typer.testing import CliRunner

from gh200.cli import app
from gh200.fsutil import atomic_write_text
from gh200.profiles import loader
from gh200.profiles.schema import Stack

UPDATE = os.environ.get("GH200_UPDATE_GOLDEN") == "1"
CACHE_TOKEN = "$GH200_CACHE"


def _profile_names() -> list[str]:
    return loader.list_names(PROFILES)


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name in _profile_names():
        stack = isinstance(loader.load_any(name, PROFILES), Stack)
        formats = ("container", "compose") if stack else ("argv", "env", "container")
        cases += [(name, fmt) for fmt in formats]
    return cases


def _golden_path(name: str, fmt: str) -> Path:
    suffix = {"argv": "argv.txt", "env": "env.txt", "container": "container.json", "compose": "compose.yaml"}
    return GOLDEN / f"{name}.{suffix[fmt]}"


def _render(name: str, fmt: str) -> str:
    result = CliRunner().invoke(app, ["profiles", "render", name, "--as", fmt])
    assert result.exception is None, f"render {name} --as {fmt}: {result.exception!r}"
    assert result.exit_code == 0
    # Paths under the cache differ per run; everything else must be identical.
    return result.stdout.replace(os.environ["GH200_CACHE"], CACHE_TOKEN)


@pytest.mark.parametrize(("name", "fmt"), _cases())
def test_render_matches_golden(pinned_bundle: Path, name: str, fmt: str) -> None:
    text = _render(name, fmt)
    golden = _golden_path(name, fmt)
    if UPDATE:
        if golden.exists() and golden.read_text() == text:
            pytest.skip(f"GH200_UPDATE_GOLDEN=1: {golden.name} unchanged; rerun without it to test")
        atomic_write_text(golden, text)
        pytest.fail(f"GH200_UPDATE_GOLDEN=1: rewrote {golden.name}; review the diff, rerun without it")
    assert golden.exists(), f"no golden file {golden.name}: run with GH200_UPDATE_GOLDEN=1 and review it"
    assert text == golden.read_text(), f"{name} --as {fmt} differs from {golden.name}"


def test_render_is_deterministic(pinned_bundle: Path) -> None:
    for name, fmt in [("glm52-awq-mtp3", "container"), ("fast-slow", "compose")]:
        assert _render(name, fmt) == _render(name, fmt)


def test_every_golden_has_a_profile() -> None:
    """A golden file whose profile was renamed or removed is stale and must go."""
    wanted = {_golden_path(name, fmt).name for name, fmt in _cases()}
    stale = sorted(p.name for p in GOLDEN.iterdir() if p.name not in wanted)
    assert not stale, f"stale golden files: {stale}"


def test_every_reference_profile_is_golden_tested() -> None:
    covered = {name for name, _ in _cases()}
    assert set(REFERENCE_PROFILES) <= covered
