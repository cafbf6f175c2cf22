"""containers/vllm/smoke_test.py fails the image build when numactl is missing (--numa-bind needs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gh200.paths import containers_dir


def _smoke(tmp_path: Path, path_dirs: list[Path]) -> subprocess.CompletedProcess[str]:
    vllm = containers_dir() / "vllm"
    root = tmp_path / "site"  # no vllm here: no carried patch applies, only the tool check runs
    root.mkdir(exist_ok=True)
    args = [sys.executable, str(vllm / "smoke_test.py"), "--series", str(vllm / "patches" / "series.yaml")]
    args += ["--root", str(root), "--mode", "compile"]
    env = {"PATH": ":".join(str(d) for d in path_dirs)}
    return subprocess.run(args, capture_output=True, text=True, env=env, check=False)


def test_missing_numactl_fails_the_smoke_and_present_passes(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    missing = _smoke(tmp_path, [empty])
    assert missing.returncode == 1 and "numactl is not on PATH" in missing.stderr
    tools = tmp_path / "bin"
    tools.mkdir()
    numactl = tools / "numactl"
    numactl.write_text("#!/bin/sh\nexit 0\n")
    numactl.chmod(0o755)
    present = _smoke(tmp_path, [tools])
    assert present.returncode == 0, present.stderr
    assert f"numactl at {numactl}" in present.stdout
