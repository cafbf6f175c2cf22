"""`gh200 images build` through the CLI entry point: bad requests refused before any engine is reached.

Connecting may start the Podman service and resolving a base may debootstrap one, so the engine
is a tripwire here: reaching it at all fails the test.
"""

from __future__ import annotations

import sys

import pytest

from gh200 import engine


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    def tripwire(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the engine was reached before the request was checked")

    monkeypatch.setattr(engine, "connect", tripwire)


def _gh200(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    from gh200 import cli

    monkeypatch.setattr(sys, "argv", ["gh200", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as done:
        code = int(done.code or 0)
    out, err = capsys.readouterr()
    assert out == ""
    return code, err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["nope"], "no image recipe 'nope'"),
        (["vllm", "--platform", "linux/arm65"], "unsupported platform 'linux/arm65'"),
        (["vllm", "--platform", "linux/amd64"], "recipe vllm does not build for linux/amd64"),
        (["ik_llama"], "has no archive sha256 pinned"),
        (["llama_cpp", "--build-arg", "SMOKE"], "--build-arg 'SMOKE' is not KEY=VALUE"),
    ],
)
@pytest.mark.usefixtures("bundle", "no_engine")
def test_build_refuses_before_reaching_the_engine(
    args: list[str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = _gh200(["images", "build", *args], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], err
