"""The topology probe on a real NVIDIA GPU: measured paths are physical and the ruler reads them.

Runs under any python3 that has torch and pytest (PYTHONPATH=tools); skipped elsewhere with the
reason. Sizes are small enough to finish in seconds but far above the 60 MB L2 of a Hopper.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gh200.ruler import ruler as r
from gh200.ruler import topology

pytestmark = pytest.mark.gpu

MIB = 2**20


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    torch = pytest.importorskip("torch", reason="the probe needs PyTorch, which gh200-stack does not ship")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    from gh200.ruler import probe

    return probe.run_probe(size_bytes=256 * MIB, copy_size_bytes=512 * MIB, reps=5, warmup=2)


def test_device_copy_is_physical(doc: dict[str, Any]) -> None:
    copies = [m for m in doc["measurements"] if m["kind"] == "device_copy"]
    assert len(copies) == len(doc["gpus"]) >= 1
    for m in copies:
        assert m["bytes_moved"] == 2 * m["size_bytes"]
        assert len(m["times_s"]) == m["reps"] == 5
        # Any HBM GPU copies faster than 300 GB/s; none exceeds 10 TB/s.
        assert 300 < m["gbps"] < 10_000
    for gpu in doc["gpus"]:
        if gpu["nominal_hbm_gbps"] is not None:
            # Counting read + write, a copy reaches a large share of the datasheet figure and never
            # more than it: a doubled or halved byte count would fall outside.
            assert 0.4 < gpu["device_copy_ratio"] <= 1.02


def test_host_paths_cover_every_node_and_gpu(doc: dict[str, Any]) -> None:
    nodes = [n["id"] for n in doc["numa_nodes"] if n["has_cpus"]] or [None]
    for kind in ("h2d", "d2h"):
        got = {(m["numa_node"], m["gpu"]) for m in doc["measurements"] if m["kind"] == kind}
        assert got == {(n, g["index"]) for n in nodes for g in doc["gpus"]}
    for m in doc["measurements"]:
        if m["kind"] in ("h2d", "d2h"):
            assert m["host_pinned"], "the host buffer must be page-locked for a DMA measurement"
            # PCIe Gen4 x16 gives ~25 GB/s; anything under 3 GB/s means pageable staging.
            assert 3 < m["gbps"] < 1000
            if m["page_nodes"] is not None and m["numa_node"] is not None:
                assert set(m["page_nodes"]) == {str(m["numa_node"])}, "pages landed off the bound node"


def test_gpu_pairs(doc: dict[str, Any]) -> None:
    n = len(doc["gpus"])
    pairs = {(m["src_gpu"], m["dst_gpu"]) for m in doc["measurements"] if m["kind"] == "d2d"}
    assert pairs == {(a, b) for a in range(n) for b in range(n) if a != b}
    if n > 1:
        assert "staged" in doc["paths"]
    by_method: dict[tuple[int, int], dict[str, float]] = {}
    for m in doc["measurements"]:
        if m["kind"] == "d2d":
            assert m["gbps"] > 1
            by_method.setdefault((m["src_gpu"], m["dst_gpu"]), {})[m["method"]] = m["gbps"]
    for pair, methods in by_method.items():
        assert {"host_staged", "host_pipelined"} <= set(methods), pair
        # Overlapping the down and up legs must beat doing them one after the other.
        assert methods["host_pipelined"] > 1.3 * methods["host_staged"], (pair, methods)


def test_topology_roundtrip_feeds_the_ruler(doc: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    topology.write_topology(path, doc)
    back = topology.read_topology(path)
    assert back == json.loads(json.dumps(doc))
    assert {"hbm", "local"} <= set(back["paths"])
    from gh200.ruler.inputs import resolve_bandwidths

    bandwidths, used = resolve_bandwidths([], path)
    assert used == path
    assert bandwidths["local"].source.startswith("probe topology")
    local = back["paths"]["local"]
    assert (bandwidths["local"].low_gbps, bandwidths["local"].high_gbps) == (
        local["low_gbps"],
        local["high_gbps"],
    )
    model = r.ModelBytes(684 * r.GIB, 256, 8, None, "test")
    rows = r.compute_rows(model, bandwidths)
    serial = rows[0]
    assert serial.tok_s_exact[1] == pytest.approx(local["high_gbps"] * r.GB / model.active_expert_bytes)
    report = topology.format_report(back)
    assert "Local HBM" in report and "Copy / nominal" in report
