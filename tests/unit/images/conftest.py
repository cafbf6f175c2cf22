"""Unit-test helpers for gh200.images: a throw-away bundle and cache, a fake engine's image store."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from docker.errors import ImageNotFound

from gh200.paths import bundle_root


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the bundle's containers/ and an empty profiles/, as GH200_HOME; a private cache."""
    home = tmp_path / "bundle"
    shutil.copytree(
        bundle_root() / "containers", home / "containers", ignore=shutil.ignore_patterns("__pycache__")
    )
    (home / "profiles").mkdir()
    monkeypatch.setenv("GH200_HOME", str(home))
    monkeypatch.setenv("GH200_CACHE", str(tmp_path / "cache"))
    return home


class FakeImages:
    """Only what plan_build asks of the engine: an image's id by reference."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known

    def get(self, ref: str) -> Any:
        if ref not in self.known:
            raise ImageNotFound(ref)
        return SimpleNamespace(id=self.known[ref], labels={}, attrs={})


@pytest.fixture
def fake_client() -> Any:
    return SimpleNamespace(images=FakeImages({"localhost/gh200-base:bookworm": "sha256:" + "b" * 64}))
