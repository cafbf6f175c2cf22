"""Helpers shared by the checkpoint tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

GH200 = str(Path(sys.executable).with_name("gh200"))


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real `gh200` entry point in a subprocess (exit codes and the one-line error as users see them)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["COLUMNS"] = "200"
    return subprocess.run(
        [GH200, *args], capture_output=True, text=True, env=full_env, timeout=timeout, check=False
    )
