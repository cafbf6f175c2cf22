"""Shared test harness: skip markers with reasons, the CLI in-process, a real container engine, base image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Protocol

import pytest

REQUIRE_ENGINE = os.environ.get("GH200_REQUIRE_ENGINE") == "1"


def _has_nvidia_gpu() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    try:
        probe = subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True, timeout=30)
        return probe.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = _has_nvidia_gpu()
    on_gh200 = os.environ.get("GH200_WORKSTATION") == "1"
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU (nvidia-smi -L failed or absent)"))
        if "gh200" in item.keywords and not on_gh200:
            item.add_marker(
                pytest.mark.skip(reason="needs the dual-GH200 workstation (set GH200_WORKSTATION=1 there)")
            )


class Gh200Cli(Protocol):
    def __call__(self, args: list[str], *, no_engine: bool = False) -> tuple[int, str, str]: ...


def _engine_contacted(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the container engine was contacted")


@pytest.fixture()
def gh200_cli(capsys: pytest.CaptureFixture[str]) -> Gh200Cli:
    """`gh200 ARGS` through the console script's main() in this process: (exit code, stdout, stderr)."""
    from gh200 import engine as engine_mod
    from gh200.cli import main

    def run(args: list[str], *, no_engine: bool = False) -> tuple[int, str, str]:
        # Patched for this call only. no_engine: connecting (which may start the Podman service) raises
        # AssertionError, for commands that must refuse or finish before any engine is reached.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", ["gh200", *args])
            if no_engine:
                patch.setattr(engine_mod, "connect", _engine_contacted)
            capsys.readouterr()
            try:
                main()
                code = 0
            except SystemExit as done:
                # As the interpreter maps it: None is success, a message is failure.
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def engine() -> Iterator[object]:
    """A Docker SDK client on a real engine: Docker, or Podman started by the harness."""
    from gh200 import engine as engine_mod
    from gh200.errors import EngineUnavailable

    try:
        client = engine_mod.connect()
    except EngineUnavailable as err:
        if REQUIRE_ENGINE:
            pytest.fail(f"container engine required (GH200_REQUIRE_ENGINE=1): {err.one_line()}")
        pytest.skip(f"needs a container engine: {err.one_line()}")
    yield client


@pytest.fixture(scope="session")
def base_image(engine: object) -> str:
    """Debian 12 base image (pulled where a registry answers, else debootstrap + import), cached."""
    from gh200 import engine as engine_mod

    return engine_mod.ensure_base_image(engine)  # type: ignore[arg-type]
