"""The harness's engine really runs containers through the Docker SDK."""

from __future__ import annotations

import pytest

from gh200.engine import run_output

pytestmark = pytest.mark.engine


def test_base_image_runs_a_container(engine: object, base_image: str) -> None:
    out = run_output(engine, base_image, ["cat", "/etc/debian_version"])  # type: ignore[arg-type]
    assert out.strip().startswith("12.")


def test_container_labels_round_trip(engine: object, base_image: str) -> None:
    labels = {"io.gh200.test": "labels", "io.gh200.profile": "none"}
    box = engine.containers.run(base_image, ["sleep", "30"], labels=labels, detach=True)  # type: ignore[attr-defined]
    try:
        found = engine.containers.list(filters={"label": "io.gh200.test=labels"})  # type: ignore[attr-defined]
        assert [c.id for c in found] == [box.id]
        assert found[0].labels["io.gh200.profile"] == "none"
    finally:
        box.remove(force=True)
