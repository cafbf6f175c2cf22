"""Shared constants and the subprocess runner for the profiles suite (imported by its tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PROFILES = REPO / "profiles"
HERE = Path(__file__).resolve().parent
BROKEN = HERE / "broken"
GOLDEN = HERE / "golden"
GH200 = Path(sys.executable).parent / "gh200"

# Every reference profile the issue names; variants may exist beside them.
REFERENCE_PROFILES = (
    "glm52-awq-mtp3",
    "glm52-awq",
    "glm52-fp8-offload270",
    "glm52-fp8-mtp3",
    "glm52-iq2xxs-cpu",
    "dsv4-flash-canada-mtp3",
    "dsv4-flash-official-mtp3",
    "local-tiny",
    "fast-slow",
)


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


def run_gh200(args: list[str], env: dict[str, str] | None = None) -> Run:
    """The installed console script, run as a user would (subprocess, real exit code)."""
    merged = {**os.environ, **(env or {})}
    # A wide terminal would hide wrapping problems; pin what a pipe gets.
    merged.pop("COLUMNS", None)
    proc = subprocess.run(
        [str(GH200), *args], capture_output=True, text=True, env=merged, timeout=60, check=False
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)
