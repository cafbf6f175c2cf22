"""Fixtures for deploy and smoke against the real llama-server image and the generated tiny model.

One container (`tdep-main`) serves most tests of the module; tests that kill, replace or break a
server get their own. Every test profile is a variant of `local-tiny` with a `tdep-` name and a
free port, so the demo's own container (if one runs) is never touched. Whatever a test leaves
behind is removed by label at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from deploy_testlib import leftovers, variant

from gh200.profiles import load_profile
from gh200.profiles.schema import Profile


@pytest.fixture(scope="module")
def prepared(engine: Any) -> str:
    """The llama.cpp image (built once, cached by recipe hash) and the tiny model on disk."""
    from gh200.deploy.tinymodel import ensure_tiny_model
    from gh200.images.build import ensure_image

    ensure_tiny_model(load_profile("local-tiny"))
    return ensure_image(engine, "llama_cpp", progress=False)


@pytest.fixture(scope="module", autouse=True)
def _sweep_up(engine: Any) -> Iterator[None]:
    from gh200.deploy.deploy import remove_container

    yield
    for container in leftovers(engine):
        remove_container(container)


@pytest.fixture(scope="module")
def tiny_server(engine: Any, prepared: str) -> Iterator[Profile]:
    """One deployed tiny server shared by the module's read-only tests."""
    from gh200.deploy.deploy import deploy, stop

    # One server thread: two on a 2-core machine stall at every step whenever anything else runs (a
    # 32:8 request took over 1.5 s beside a niced job), and the timeout test needs short sets quick.
    profile = variant("main", settings={"threads": 1})
    deploy(engine, profile, progress=False)
    yield profile
    stop(engine, profile.name)


@pytest.fixture()
def deployed(engine: Any, prepared: str) -> Iterator[Callable[..., Profile]]:
    """Deploy a variant for one test; it is stopped afterwards whatever happened."""
    from gh200.deploy.deploy import deploy, stop

    names: list[str] = []

    def make(name: str, **updates: Any) -> Profile:
        profile = variant(name, **updates)
        names.append(profile.name)
        deploy(engine, profile, progress=False, smoke=None)
        return profile

    yield make
    for name in names:
        stop(engine, name)
