"""The `gh200` entry point as a user meets it: version, help, exit codes, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gh200 import __version__, engine

GH200 = Path(sys.executable).parent / "gh200"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    if not GH200.exists():
        pytest.fail(f"{GH200} is missing: run `make setup` (uv sync) first")
    return subprocess.run([str(GH200), *args], capture_output=True, text=True, timeout=60, check=False)


def test_version() -> None:
    run = _run("--version")
    assert run.returncode == 0
    assert run.stdout.strip() == f"gh200 {__version__}"


def test_help_lists_the_profile_commands() -> None:
    run = _run("--help")
    assert run.returncode == 0
    assert "profiles" in run.stdout and "lock" in run.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["no-such-command"],
        ["profiles", "render", "local-tiny", "--as", "nonsense"],
        ["profiles", "show"],
        ["--no-such-option"],
    ],
)
def test_usage_errors_exit_2_without_traceback(args: list[str]) -> None:
    run = _run(*args)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert "Error" in run.stderr


@pytest.mark.parametrize("args", [[], ["images"]])
def test_no_command_shows_help_and_is_a_usage_error(args: list[str]) -> None:
    """No command given is a usage error (exit 2, like any other), and the help says what to type."""
    run = _run(*args)
    assert "Traceback" not in run.stderr
    assert "Usage" in run.stdout + run.stderr
    assert run.returncode == 2


def test_exit_code_of_a_command_reaches_the_shell(tmp_path: Path) -> None:
    """A command that ends with typer.Exit(2) (validate on a bad profile) must exit 2, not 0."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("- not a mapping\n")
    run = _run("profiles", "validate", str(bad))
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr


def test_expected_failure_is_one_line() -> None:
    run = _run("profiles", "show", "no-such-profile")
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: no profile named 'no-such-profile'")
    assert "(fix: use one of: " in lines[0]


def test_in_process_runner_agrees_with_the_script_and_its_engine_guard_trips(
    gh200_cli: Callable[..., tuple[int, str, str]],
) -> None:
    """tests/conftest.py's gh200_cli, which the unit suites use in place of the script: the same exit
    codes and output, and no_engine=True stops a command at its first engine contact (the suites'
    "refused before any engine is reached" rests on it) for that call only."""
    assert gh200_cli(["--version"]) == (0, f"gh200 {__version__}\n", "")
    code, out, err = gh200_cli(["profiles", "show", "no-such-profile"])
    assert code == 2 and out == "" and err.startswith("error: no profile named 'no-such-profile'")
    original = engine.connect
    with pytest.raises(AssertionError, match="the container engine was contacted"):
        gh200_cli(["status", "--json"], no_engine=True)
    assert engine.connect is original
