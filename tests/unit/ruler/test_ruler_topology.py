"""Topology documents: path summaries, validation, files, tables; the probe's torch-free helpers."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import mmap
import platform
from pathlib import Path
from typing import Any

import pytest

from gh200.ruler import probe, topology

DATA = Path(__file__).parent / "data"


def meas(kind: str, gbps: float, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "gbps": gbps, "gbps_best": gbps * 1.01, "size_bytes": 2**30, **fields}


def gh200_like() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Two GPUs, each local to one of two nodes, no peer access: the posts' machine in miniature."""
    gpus = [{"index": 0, "numa_node": 0}, {"index": 1, "numa_node": 1}]
    ms = [
        meas("device_copy", 3700.0, gpu=0),
        meas("device_copy", 3710.0, gpu=1),
        meas("h2d", 377.0, gpu=0, numa_node=0, local=True),
        meas("h2d", 133.0, gpu=0, numa_node=1, local=False),
        meas("h2d", 380.0, gpu=1, numa_node=1, local=True),
        meas("h2d", 131.0, gpu=1, numa_node=0, local=False),
        meas("d2h", 300.0, gpu=0, numa_node=0, local=True),
        meas("d2h", 120.0, gpu=0, numa_node=1, local=False),
        meas("d2d", 28.0, src_gpu=0, dst_gpu=1, method="host_staged"),
        meas("d2d", 57.0, src_gpu=0, dst_gpu=1, method="runtime"),
        meas("d2d", 58.0, src_gpu=1, dst_gpu=0, method="runtime"),
    ]
    return gpus, ms


def test_summary_recreates_the_posts_part1_table() -> None:
    gpus, ms = gh200_like()
    paths = topology.summarise_paths(gpus, ms)
    assert (paths["hbm"]["low_gbps"], paths["hbm"]["high_gbps"]) == (3700.0, 3710.0)
    assert (paths["local"]["low_gbps"], paths["local"]["high_gbps"], paths["local"]["count"]) == (
        377.0,
        380.0,
        2,
    )
    assert (paths["remote"]["low_gbps"], paths["remote"]["high_gbps"]) == (131.0, 133.0)
    assert (paths["local_d2h"]["low_gbps"], paths["remote_d2h"]["low_gbps"]) == (300.0, 120.0)
    # Per pair the best non-peer method: runtime (57, 58), not the serial host staging (28).
    assert (paths["staged"]["low_gbps"], paths["staged"]["high_gbps"]) == (57.0, 58.0)
    assert "peer" not in paths
    doc = {"paths": paths}
    assert topology.post_table_rows(doc) == [
        ("Local HBM", "about 3,700-3,710 GB/s"),
        ("Local host memory to local GPU", "about 377-380 GB/s"),
        ("Remote host memory to GPU", "about 131-133 GB/s"),
        ("GPU to GPU copy staged through host", "about 57-58 GB/s"),
        ("GPU to GPU peer copy", "not measured here"),
    ]


def test_peer_and_staged_are_separate_paths() -> None:
    gpus = [{"index": 0, "numa_node": 0}, {"index": 1, "numa_node": 0}]
    ms = [
        meas("d2d", 390.0, src_gpu=0, dst_gpu=1, method="peer"),
        meas("d2d", 25.0, src_gpu=0, dst_gpu=1, method="host_staged"),
        meas("d2d", 392.0, src_gpu=1, dst_gpu=0, method="peer"),
        meas("d2d", 26.0, src_gpu=1, dst_gpu=0, method="host_staged"),
    ]
    paths = topology.summarise_paths(gpus, ms)
    assert (paths["peer"]["low_gbps"], paths["peer"]["high_gbps"]) == (390.0, 392.0)
    assert (paths["staged"]["low_gbps"], paths["staged"]["high_gbps"]) == (25.0, 26.0)


def test_unknown_gpu_node_takes_the_fastest_as_local() -> None:
    gpus = [{"index": 0, "numa_node": None}]
    ms = [
        meas("h2d", 50.0, gpu=0, numa_node=0, local=None),
        meas("h2d", 40.0, gpu=0, numa_node=1, local=None),
    ]
    paths = topology.summarise_paths(gpus, ms)
    assert paths["local"]["low_gbps"] == 50.0 and paths["remote"]["low_gbps"] == 40.0
    assert "fastest node taken as local" in paths["local"]["note"]


def test_recorded_h200_probe_reads_back() -> None:
    # A real probe result from a one-GPU H200 machine (see the closing note).
    doc = topology.read_topology(DATA / "topology-h200x1.json")
    assert doc["gpus"][0]["name"] == "NVIDIA H200"
    recomputed = topology.summarise_paths(doc["gpus"], [m for m in doc["measurements"] if "gbps" in m])
    assert recomputed == doc["paths"]
    assert {"hbm", "local"} <= set(doc["paths"]) and "remote" not in doc["paths"]
    report = topology.format_report(doc)
    assert "| Local HBM | about 4,290 GB/s |" in report
    assert "| 0 | NVIDIA H200 | 139.8 GiB | 0 | 4,800 | 0.894 |" in report


def test_recorded_two_gpu_probe_reads_back() -> None:
    # Two H200s joined by NVLink (NV18) on one NUMA node: peer and host-staged paths both measured.
    doc = topology.read_topology(DATA / "topology-h200x2.json")
    recomputed = topology.summarise_paths(doc["gpus"], [m for m in doc["measurements"] if "gbps" in m])
    assert recomputed == doc["paths"]
    assert doc["peer_access"] == [[True, True], [True, True]]
    methods = {m["method"] for m in doc["measurements"] if m["kind"] == "d2d"}
    assert methods == {"peer", "host_staged", "host_pipelined"}
    # staged = best non-peer method per pair: the pipelined staging, not the serial one.
    assert "host_pipelined" in doc["paths"]["staged"]["note"]
    assert doc["paths"]["staged"]["low_gbps"] > 40 and doc["paths"]["peer"]["low_gbps"] > 300
    rows = dict(topology.post_table_rows(doc))
    assert rows["GPU to GPU copy staged through host"] == "about 49-50 GB/s"


def good_doc() -> dict[str, Any]:
    gpus, ms = gh200_like()
    return {
        "schema": topology.SCHEMA,
        "gpus": gpus,
        "measurements": ms,
        "paths": topology.summarise_paths(gpus, ms),
    }


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema="gh200-topology/0"), "schema"),
        (lambda d: d.pop("paths"), "'paths'"),
        (lambda d: d["paths"]["local"].update(low_gbps=-1), "positive"),
        (lambda d: d["paths"]["local"].update(low_gbps=999), "low_gbps <= high_gbps"),
        (lambda d: d["paths"]["local"].update(high_gbps="fast"), "positive"),
        (lambda d: d["paths"]["local"].update(high_gbps=True), "positive"),
        (lambda d: d.update(gpus={}), "lists"),
    ],
)
def test_validate_rejects(mutate: Any, message: str) -> None:
    doc = good_doc()
    mutate(doc)
    with pytest.raises(topology.TopologyError, match=message) as err:
        topology.validate(doc, "t.json")
    assert err.value.exit_code == 2 and "gh200 probe" in (err.value.fix or "")


def test_write_is_atomic_and_roundtrips(tmp_path: Path) -> None:
    path = tmp_path / "state" / "topology.json"
    topology.write_topology(path, good_doc())
    assert topology.read_topology(path) == json.loads(json.dumps(good_doc()))
    bad = good_doc()
    bad["schema"] = "nope"
    with pytest.raises(topology.TopologyError):
        topology.write_topology(path, bad)
    # Nothing half-written: the old file stays, no temporaries beside it.
    assert topology.read_topology(path)["schema"] == topology.SCHEMA
    assert [p.name for p in path.parent.iterdir()] == ["topology.json"]


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(topology.TopologyError, match="does not exist"):
        topology.read_topology(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(topology.TopologyError, match="not JSON"):
        topology.read_topology(broken)
    listy = tmp_path / "list.json"
    listy.write_text("[]")
    with pytest.raises(topology.TopologyError, match="not a JSON object"):
        topology.read_topology(listy)


@pytest.mark.parametrize(
    ("name", "memory_gib", "expected"),
    [
        ("NVIDIA H200", 140, 4800.0),
        ("NVIDIA H200 NVL", 140, 4800.0),
        ("NVIDIA GH200 480GB", 95, 4000.0),  # the 96 GB HBM3 GH200 names its Grace memory
        ("NVIDIA GH200 144G HBM3e", 143, None),
        ("NVIDIA H100 80GB HBM3", 80, 3350.0),
        ("NVIDIA H100 PCIe", 80, 2000.0),
        ("NVIDIA H100 NVL", 94, None),
        ("NVIDIA A100-SXM4-80GB", 80, None),
    ],
)
def test_nominal_hbm(name: str, memory_gib: int, expected: float | None) -> None:
    got = topology.nominal_hbm_gbps(name, memory_gib * 2**30)
    assert (None if got is None else got[1]) == expected


def test_parse_cpulist() -> None:
    assert probe.parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert probe.parse_cpulist("") == []


def test_list_nodes_from_sysfs(tmp_path: Path) -> None:
    for node, cpus, kb in ((0, "0-71", 491520000), (1, "72-143", 491520000), (2, "", 99614720)):
        d = tmp_path / f"node{node}"
        d.mkdir()
        (d / "cpulist").write_text(cpus + "\n")
        (d / "meminfo").write_text(f"Node {node} MemTotal:       {kb} kB\nNode {node} MemFree: 1 kB\n")
    (tmp_path / "possible").write_text("0-2\n")
    nodes = probe.list_nodes(tmp_path)
    assert [n["id"] for n in nodes] == [0, 1, 2]
    assert nodes[1]["cpus"][0] == 72 and len(nodes[1]["cpus"]) == 72
    assert nodes[2]["has_cpus"] is False  # a GH200 HBM node: memory, no CPUs
    assert nodes[0]["mem_total_bytes"] == 491520000 * 1024


def test_pci_numa_node(tmp_path: Path) -> None:
    dev = tmp_path / "0009:01:00.0"
    dev.mkdir()
    (dev / "numa_node").write_text("1\n")
    vm = tmp_path / "0000:00:06.0"
    vm.mkdir()
    (vm / "numa_node").write_text("-1\n")
    assert probe.pci_numa_node("00000009:01:00.0", tmp_path) == 1  # NVML's 8-digit domain
    assert probe.pci_numa_node("0009:01:00.0", tmp_path) == 1
    assert probe.pci_numa_node("0000:00:06.0", tmp_path) is None  # the kernel does not know
    assert probe.pci_numa_node("0000:00:07.0", tmp_path) is None
    assert probe.pci_numa_node(None, tmp_path) is None


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "aarch64") or not Path("/sys/devices/system/node/node0").exists(),
    reason="needs Linux on x86-64 or arm64 with NUMA information in sysfs",
)
def test_binding_places_pages_on_the_node() -> None:
    """The real kernel: bind this thread to node 0, first-touch a buffer, read where its pages are."""
    policy = probe.MemPolicy()
    node = next(n for n in probe.list_nodes() if n["id"] == 0)
    size = 16 * 2**20
    with probe.bound_to(node, policy) as how:
        region = mmap.mmap(-1, size)
        buf = (ctypes.c_char * size).from_buffer(region)
        address = ctypes.addressof(buf)
        ctypes.memset(address, 1, size)
        placed = policy.page_nodes(address, size)
    assert how == "sched_setaffinity + set_mempolicy(MPOL_BIND)"
    assert placed == {0: 64}
    del buf
    region.close()


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is importable here")
def test_probe_without_torch_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(probe.ProbeUnavailable, match=r"PyTorch \(torch\)"):
        probe.run_probe()
    from gh200.ruler import probe_main

    assert probe_main.main(["--out", str(tmp_path / "t.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: PyTorch (torch) is not importable")
    assert not (tmp_path / "t.json").exists()


def test_probe_rejects_tiny_sizes() -> None:
    with pytest.raises(probe.ProbeInputError, match="1 MiB"):
        probe.run_probe(size_bytes=4096)
    with pytest.raises(probe.ProbeInputError, match="repetition"):
        probe.run_probe(reps=0)
