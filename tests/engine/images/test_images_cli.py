"""`gh200 images build/list` on a real engine: content-derived tags, no rebuild, stale detection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gh200.engine import run_output
from gh200.images.build import LABEL, build_image, list_images

pytestmark = pytest.mark.engine

TINY = """ARG BASE
FROM ${BASE}
ARG GREETING
RUN printf '%s\\n' "${GREETING}" > /greeting
"""


@pytest.fixture
def tiny_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_image: str) -> Path:
    home = tmp_path / "bundle"
    recipe = home / "containers" / "tiny"
    recipe.mkdir(parents=True)
    (recipe / "Containerfile").write_text(TINY)
    (recipe / "recipe.yaml").write_text(
        "name: tiny\nimage: localhost/gh200-test-tiny\n"
        f"base: {{arg: BASE, local: {base_image}}}\nbuild_args: {{GREETING: hello}}\n"
    )
    (home / "profiles").mkdir()
    monkeypatch.setenv("GH200_HOME", str(home))
    return home


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gh200.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        check=False,
    )


def _cat(engine: Any, tag: str) -> str:
    return run_output(engine, tag, ["cat", "/greeting"]).strip()


def test_build_then_unchanged_then_changed(engine: Any, tiny_bundle: Path) -> None:
    first = _cli("images", "build", "tiny", "--json")
    assert first.returncode == 0, first.stderr
    one = json.loads(first.stdout)
    again = json.loads(_cli("images", "build", "tiny", "--json").stdout)
    assert again["tag"] == one["tag"] and again["changed"] is False
    assert engine.images.get(one["tag"]).labels[f"{LABEL}.recipe-hash"] == one["recipe_hash"]
    assert _cat(engine, one["tag"]) == "hello"

    recipe = tiny_bundle / "containers" / "tiny" / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("GREETING: hello", "GREETING: changed"))
    two = build_image(engine, "tiny", progress=False)
    assert two.built and two.tag != one["tag"]
    assert _cat(engine, two.tag) == "changed"

    rows = {row["name"]: row for row in list_images(engine)}
    built = {tuple(b["tags"]): b["matches_recipe"] for b in rows["tiny"]["built"]}
    assert built[(two.tag,)] is True and built[(one["tag"],)] is False
    assert rows["tiny"]["up_to_date"] is True
    listed = json.loads(_cli("images", "list", "--json").stdout)["images"]
    assert [r["current_tag"] for r in listed if r["name"] == "tiny"] == [two.tag]
    for tag in (one["tag"], two.tag):
        engine.images.remove(tag)


def test_failed_build_is_one_line_exit_1(engine: Any, tiny_bundle: Path) -> None:
    containerfile = tiny_bundle / "containers" / "tiny" / "Containerfile"
    containerfile.write_text(TINY + "RUN echo 'error: this step fails on purpose' && false\n")
    done = _cli("images", "build", "tiny")
    assert done.returncode == 1
    assert "error: building tiny failed: error: this step fails on purpose" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_input_exit_2(engine: Any, tiny_bundle: Path) -> None:
    done = _cli("images", "build", "missing-recipe")
    assert done.returncode == 2
    assert "no image recipe 'missing-recipe' (fix: use one of: tiny)" in done.stderr
