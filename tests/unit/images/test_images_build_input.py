"""`gh200 images build` through the CLI entry point: bad requests refused before any engine is reached.

Connecting may start the Podman service and resolving a base may debootstrap one, so the engine
is a tripwire here: reaching it at all fails the test.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest


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
@pytest.mark.usefixtures("bundle")
def test_build_refuses_before_reaching_the_engine(
    args: list[str], named: str, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, out, err = gh200_cli(["images", "build", *args], no_engine=True)
    assert out == ""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], err
