"""`gh200 upgrade vllm VERSION` through the real CLI, on real vLLM sdists from PyPI.

This machine cannot build the arm64 vLLM image, so the upgrade stops after the series check: the
path tested here end to end. Build and roll-out run on the workstation only (their logic is unit
tested with fakes in tests/unit/orchestrate/test_upgrade_loop.py); no engine is needed.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from gh200.paths import bundle_root

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        platform.machine().lower() in {"aarch64", "arm64"},
        reason="needs a host without an arm64 build (here the upgrade would build and roll out)",
    ),
]


def _pypi_reachable() -> bool:
    try:
        return (
            httpx.head("https://pypi.org/simple/vllm/", timeout=10, follow_redirects=True).status_code < 500
        )
    except httpx.HTTPError:
        return False


needs_pypi = pytest.mark.skipif(not _pypi_reachable(), reason="needs PyPI (https://pypi.org) reachable")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A copy of the bundle (containers/, profiles/); the sdist cache stays the shared one."""
    copy = tmp_path / "bundle"
    for part in ("containers", "profiles"):
        shutil.copytree(bundle_root() / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _gh200(home: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GH200_HOME": str(home), "GH200_STATE": str(state), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "gh200.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pin_back_to_0_32(home: Path) -> None:
    """Make the copy's recipe build vLLM 0.32.0, so that 0.33.0 (every patch applies) is an upgrade."""
    recipe = home / "containers/vllm/recipe.yaml"
    text = recipe.read_text()
    recipe.write_text(
        text.replace("v0.33.0-aarch64", "v0.32.0-aarch64").replace("openai-0.33.0", "openai-0.32.0")
    )


def test_stops_after_the_series_with_the_workstation_command(home: Path, tmp_path: Path) -> None:
    _pin_back_to_0_32(home)
    before = _files(home / "containers")
    state = tmp_path / "state"
    done = _gh200(home, state, "upgrade", "vllm", "0.33.0", "--accept", "--json")
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    assert out["outcome"] == "stopped_after_series"
    assert (out["from"], out["to"], out["component"]) == ("0.32.0", "0.33.0", "vllm")
    assert [(r["patch"], r["status"]) for r in out["series"]] == [
        ("glm52-mtp-quant", "applies"),
        ("dsv4-draft-hf-config-path", "applies"),
    ]
    assert out["next_command"] == "gh200 upgrade vllm 0.33.0 --accept"
    assert out["image"] is None and out["rollouts"] == []
    assert json.loads(Path(out["report"]).read_text()) == out
    assert Path(out["report"]).parent == state / "upgrades"
    assert _files(home / "containers") == before  # nothing pinned by a stop

    human = _gh200(home, state, "upgrade", "vllm", "0.33.0")
    assert human.returncode == 0
    assert "on the workstation: gh200 upgrade vllm 0.33.0" in human.stderr
    assert "stopped_after_series" in human.stderr


@needs_pypi
def test_vllm_0_34_0_conflicts_and_patches_check_says_the_same(home: Path, tmp_path: Path) -> None:
    """The real next release on PyPI (0.34.0 at the time of writing): neither carried patch applies."""
    before = _files(home / "containers")
    done = _gh200(home, tmp_path / "state", "upgrade", "vllm", "0.34.0", "--json")
    assert done.returncode == 1, done.stderr
    out = json.loads(done.stdout)
    assert out["outcome"] == "series_conflict"
    assert len(out["sdist_sha256"]) == 64  # from PyPI's index, not pinned
    statuses = {r["patch"]: r["status"] for r in out["series"]}
    assert statuses == {"glm52-mtp-quant": "conflicts", "dsv4-draft-hf-config-path": "conflicts"}
    details = {r["patch"]: r["detail"] for r in out["series"]}
    assert details["glm52-mtp-quant"].startswith("vllm/models/deepseek_v32/nvidia/mtp.py: hunk 9 ")
    assert details["dsv4-draft-hf-config-path"].startswith("vllm/config/speculative.py: hunk 1 ")
    assert "patch glm52-mtp-quant conflicts" in out["detail"]
    assert _files(home / "containers") == before

    check = _gh200(home, tmp_path / "state", "patches", "check", "--vllm", "0.34.0", "--no-runtime", "--json")
    assert check.returncode == 1
    report = json.loads(check.stdout)
    assert report["classification"] == out["series"]  # one classifier for both commands
    assert report["sdist_pinned"] is False and report["sdist_sha256"] == out["sdist_sha256"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("vllm", "latest"), "is not a release"),
        (("vllm", "0.33.0"), "already the pinned version"),
        (("vllm", "not-a-version"), "not a PEP 440 version"),
        (("sglang", "0.34.0"), "cannot upgrade 'sglang'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    home: Path, tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    done = _gh200(home, tmp_path / "state", "upgrade", *args, "--json")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert not (tmp_path / "state" / "upgrades").exists()


@needs_pypi
def test_a_version_pypi_does_not_have_is_bad_input(home: Path, tmp_path: Path) -> None:
    done = _gh200(home, tmp_path / "state", "upgrade", "vllm", "99.0.0", "--json")
    assert done.returncode == 2 and "PyPI has no vllm version 99.0.0" in done.stderr
    assert not (tmp_path / "state" / "upgrades").exists()
