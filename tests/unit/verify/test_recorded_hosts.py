"""The GH200-only host checks, run in CI against recorded hosts (recorded/, see its README).

The checks are tests/host/test_hardware.py's own functions reading facts through
tests/host/gh200_facts.py; here a RecordedHost feeds them where testinfra's host does on a real
machine. They must pass on the dual GH200 and fail, for the right reason, on 4K-page hosts and on
a host whose GPUs share a NUMA node; and a check that always passes, or reads the wrong
`nvidia-smi topo -m` column, must fail these tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import yaml

from gh200.paths import bundle_root
from gh200.verify.suite import _read_report, build_command, suite_dir

HOST_SUITE = bundle_root() / "tests" / "host"
RECORDED = Path(__file__).parent / "recorded"

PAGE = "test_64k_page_kernel"
NODE = "test_each_gpu_on_its_own_grace_node"

# fixture -> what each check must say there: "passed", or a piece of its failure message.
EXPECTED: dict[str, dict[str, str]] = {
    "gh200-2x": {PAGE: "passed", NODE: "passed"},
    "gh200-generic-4k": {
        PAGE: "page size is 4096, not 65536: 6.8.0-88-generic",
        NODE: "couldn't communicate with the NVIDIA driver",
    },
    "x86-ci-4k": {PAGE: "page size is 4096, not 65536", NODE: "`nvidia-smi -q` failed (127)"},
    "altra-2x-h100-shared-node": {PAGE: "passed", NODE: "GPU1 (00000005:01:00.0) and GPU0 share NUMA node 0"},
    # Recorded on the lent H200 machine (gh200_facts.py record): real nvidia-smi output, ANSI header
    # included. One GPU on the one node with CPUs is placed right; the 4K kernel is not a GH200's.
    "h200-1x": {PAGE: "page size is 4096, not 65536", NODE: "passed"},
}


@pytest.fixture(scope="module")
def suite() -> Iterator[SimpleNamespace]:
    """tests/host's modules, imported as the suite imports them (its directory on sys.path)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(HOST_SUITE))
        facts = importlib.import_module("gh200_facts")
        spec = importlib.util.spec_from_file_location(
            "gh200_host_test_hardware", HOST_SUITE / "test_hardware.py"
        )
        assert spec and spec.loader
        hardware: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(hardware)
        yield SimpleNamespace(facts=facts, hardware=hardware)


def verdict(suite: SimpleNamespace, check: Callable[[Any], None], where: Path) -> str:
    try:
        check(suite.facts.RecordedHost(where))
    except AssertionError as err:  # FactError is one too: a fact the host did not give fails the check
        return f"failed: {' '.join(str(err).split())}"
    return "passed"


def assert_discriminates(suite: SimpleNamespace, checks: dict[str, Callable[[Any], None]]) -> None:
    for fixture, wanted in EXPECTED.items():
        for name, want in wanted.items():
            got = verdict(suite, checks[name], RECORDED / fixture)
            if want == "passed":
                assert got == "passed", f"{name} on {fixture}: {got}"
            else:
                assert got.startswith("failed: ") and want in got, f"{name} on {fixture}: {got}"


def real_checks(suite: SimpleNamespace) -> dict[str, Callable[[Any], None]]:
    return {PAGE: getattr(suite.hardware, PAGE), NODE: getattr(suite.hardware, NODE)}


def test_the_checks_pass_on_the_gh200_and_fail_on_4k_and_shared_node_hosts(suite: SimpleNamespace) -> None:
    assert_discriminates(suite, real_checks(suite))


# --- tests that bite: wrong versions of the checks must fail the test above ---------------------


def test_a_check_that_always_passes_is_caught(suite: SimpleNamespace) -> None:
    def always(host: Any) -> None:
        return None

    for name in (PAGE, NODE):
        with pytest.raises(
            AssertionError, match=r"on (gh200-generic-4k|x86-ci-4k|altra-2x-h100-shared-node)"
        ):
            assert_discriminates(suite, {**real_checks(suite), name: always})


def test_a_page_check_that_accepts_any_page_size_is_caught(suite: SimpleNamespace) -> None:
    def lenient(host: Any) -> None:
        assert suite.facts.page_size(host) >= 4096

    with pytest.raises(AssertionError, match=f"{PAGE} on gh200-generic-4k: passed"):
        assert_discriminates(suite, {**real_checks(suite), PAGE: lenient})


@pytest.mark.parametrize(
    ("constant", "wrong"),
    [
        ("NUMA_AFFINITY", "CPU Affinity"),  # the CPU list: 72 "nodes"
        ("NUMA_AFFINITY", "GPU NUMA ID"),  # the HBM node: CPU-less
        ("GPU_NUMA_ID", "NUMA Affinity"),  # the Grace node taken for the GPU's memory
    ],
)
def test_reading_the_wrong_topo_column_is_caught(
    suite: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, constant: str, wrong: str
) -> None:
    monkeypatch.setattr(suite.facts, constant, wrong)
    with pytest.raises(AssertionError, match=f"{NODE} on gh200-2x: failed"):
        assert_discriminates(suite, real_checks(suite))


def test_reading_a_column_by_position_is_caught(
    suite: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parser that takes the last cell as the NUMA affinity reads GPU NUMA ID on a 580 driver."""
    real = suite.facts.parse_topology

    def positional(text: str) -> list[Any]:
        rows = real(text)
        last = {
            r.name: line.split("\t")[-1]
            for line in text.splitlines()
            for r in rows
            if line.startswith(r.name)
        }
        return [
            r.__class__(**{**r.__dict__, "numa_affinity": suite.facts.parse_cpulist(last[r.name])})
            for r in rows
        ]

    monkeypatch.setattr(suite.facts, "parse_topology", positional)
    with pytest.raises(AssertionError, match=f"{NODE} on gh200-2x: failed: .*no CPUs"):
        assert_discriminates(suite, real_checks(suite))


# --- the GPU-node check on edited copies of the GH200 recording -------------------------------


@pytest.fixture
def gh200(tmp_path: Path) -> Path:
    copy = tmp_path / "gh200"
    shutil.copytree(RECORDED / "gh200-2x", copy)
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


TOPO = "cmd/nvidia-smi-topo-m.out"


def test_gpu_attached_to_its_hbm_node_fails(suite: SimpleNamespace, gh200: Path) -> None:
    _edit(gh200 / TOPO, "0-71\t0\t\t2", "0-71\t2\t\t2")
    got = verdict(suite, suite.hardware.test_each_gpu_on_its_own_grace_node, gh200)
    assert (
        got == "failed: GPU0 (00000009:01:00.0) is attached to node 2, which has no CPUs (not a Grace node)"
    )


def test_affinity_not_reported_falls_back_to_the_kernels_pci_node(
    suite: SimpleNamespace, gh200: Path
) -> None:
    check = suite.hardware.test_each_gpu_on_its_own_grace_node
    _edit(gh200 / TOPO, "0-71\t0\t\t2", "0-71\tN/A\t\t2")
    _edit(gh200 / TOPO, "72-143\t1\t\t10", "72-143\tN/A\t\t10")
    assert verdict(suite, check, gh200) == "passed"  # from /sys/bus/pci/devices/*/numa_node
    (gh200 / "root/sys/bus/pci/devices/0019:01:00.0/numa_node").write_text("0\n")
    assert "GPU1 (00000019:01:00.0) and GPU0 share NUMA node 0" in verdict(suite, check, gh200)
    (gh200 / "root/sys/bus/pci/devices/0019:01:00.0/numa_node").write_text("-1\n")
    assert "GPU1 (00000019:01:00.0) has NUMA affinity N/A, not one node" in verdict(suite, check, gh200)


def test_gpu_memory_node_must_be_cpu_less_and_online(suite: SimpleNamespace, gh200: Path) -> None:
    check = suite.hardware.test_each_gpu_on_its_own_grace_node
    _edit(gh200 / "root/sys/devices/system/node/node10/meminfo", "MemTotal:       100139008", "MemTotal: 0")
    assert "GPU1 (00000019:01:00.0): its memory node 10 has no memory online" in verdict(suite, check, gh200)
    _edit(gh200 / TOPO, "72-143\t1\t\t10", "72-143\t1\t\tN/A")  # CDMM / non-NUMA mode: not reported
    assert verdict(suite, check, gh200) == "passed"


def test_cpu_affinity_outside_the_node_fails(suite: SimpleNamespace, gh200: Path) -> None:
    _edit(gh200 / TOPO, "72-143\t1", "0-71\t1")
    got = verdict(suite, suite.hardware.test_each_gpu_on_its_own_grace_node, gh200)
    assert "GPU1 (00000019:01:00.0): CPU affinity [0, 1, 2]... lies outside node 1's CPUs" in got


def test_a_topology_row_that_does_not_fit_its_header_is_refused(suite: SimpleNamespace, gh200: Path) -> None:
    _edit(gh200 / TOPO, "0-71\t0\t\t2", "0-71\t0")
    got = verdict(suite, suite.hardware.test_each_gpu_on_its_own_grace_node, gh200)
    assert got == "failed: nvidia-smi topo -m: row GPU0 has 4 cells for 5 columns"


def test_an_unrecorded_fact_fails_instead_of_passing(suite: SimpleNamespace, gh200: Path) -> None:
    shutil.rmtree(gh200 / "root/sys/devices/system/node")
    got = verdict(suite, suite.hardware.test_each_gpu_on_its_own_grace_node, gh200)
    assert got == "failed: /sys/devices/system/node is missing (a kernel without NUMA support?)"


# --- the parsers on the layouts nvidia-smi prints ---------------------------------------------


def test_topology_parser_reads_columns_by_name_on_other_layouts(suite: SimpleNamespace) -> None:
    facts = suite.facts
    shared = facts.parse_topology((RECORDED / "altra-2x-h100-shared-node" / TOPO).read_text())
    assert [(r.name, sorted(r.numa_affinity), sorted(r.gpu_numa_id)) for r in shared] == [
        ("GPU0", [0], []),
        ("GPU1", [0], []),
    ]  # the NIC row and the NIC legend are not GPUs
    assert shared[1].links == {"GPU0": "NODE", "GPU1": "X", "NIC0": "PHB"}
    # A terminal copy (spaces, no tabs) from a driver without the GPU NUMA ID column.
    pasted = (
        "        GPU0    GPU1    CPU Affinity    NUMA Affinity\n"
        "GPU0     X      SYS     0-15,32-47      0\n"
        "GPU1    SYS      X      16-31,48-63     1\n\nLegend:\n"
    )
    rows = facts.parse_topology(pasted)
    assert [sorted(r.numa_affinity) for r in rows] == [[0], [1]]
    assert rows[1].cpu_affinity == frozenset([*range(16, 32), *range(48, 64)])
    assert rows[0].gpu_numa_id == frozenset()
    # Very old drivers: CPU Affinity only.
    assert facts.parse_topology("\tGPU0\tCPU Affinity\nGPU0\t X \t0-7\n")[0].numa_affinity == frozenset()
    for bad in ("", "Legend:\n", "\tGPU0\tCPU Affinity\tNUMA Affinity\nGPU0\t X \t0-7\t0-x\n"):
        with pytest.raises(facts.FactError):
            facts.parse_topology(bad)


def test_query_parser_and_cpulists(suite: SimpleNamespace) -> None:
    facts = suite.facts
    gpus = facts.parse_query((RECORDED / "gh200-2x/cmd/nvidia-smi-q.out").read_text())
    assert [
        (g.index, g.bus_id, g.sysfs_address, g.product, g.addressing_mode, g.memory_total_mib) for g in gpus
    ] == [
        (0, "00000009:01:00.0", "0009:01:00.0", "NVIDIA GH200 480GB", "ATS", 97871),
        (1, "00000019:01:00.0", "0019:01:00.0", "NVIDIA GH200 480GB", "ATS", 97871),
    ]
    text = (RECORDED / "gh200-2x/cmd/nvidia-smi-q.out").read_text()
    with pytest.raises(facts.FactError, match="2 GPUs attached, 1 described"):
        facts.parse_query(text[: text.index("GPU 00000019")])
    assert facts.parse_cpulist("0-2,8,10-11\n") == frozenset({0, 1, 2, 8, 10, 11})
    assert facts.parse_cpulist("\n") == frozenset()
    for bad in ("zero", "0-", "1,,x", "0-7 8"):
        with pytest.raises(facts.FactError):
            facts.parse_cpulist(bad)


def test_recorded_gh200_layout(suite: SimpleNamespace) -> None:
    """The recording is what the issue describes: two Grace nodes, HBM as CPU-less nodes."""
    nodes = suite.facts.numa_nodes(suite.facts.RecordedHost(RECORDED / "gh200-2x"))
    assert sorted(nodes) == list(range(18))
    assert {n.id: (min(n.cpus), max(n.cpus)) for n in nodes.values() if n.cpus} == {0: (0, 71), 1: (72, 143)}
    assert sorted(n.id for n in nodes.values() if not n.cpus and n.memory_kib) == [2, 10]


# --- through the shipped suite: pytest, its conftest, markers and report, as `gh200 verify` runs it


def test_the_suite_runs_the_gh200_checks_on_recorded_hosts_without_skipping(tmp_path: Path) -> None:
    expect = tmp_path / "gh200.yml"
    expect.write_text(
        yaml.safe_dump(
            {"gh200_verify_gh200": True, "gh200_verify_gpu_count": 2, "gh200_verify_provisioned": False}
        )
    )
    report = tmp_path / "report.jsonl"
    extra = [arg for name in EXPECTED for arg in ("--gh200-recorded", str(RECORDED / name))]
    cmd = build_command(
        inventory=None, local=True, limit=None, expect=[expect], only="gh200", report=report, extra=extra
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        cmd, cwd=suite_dir(), env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 1, done.stdout[-3000:]  # 1: some checks failed, as they must
    collected, checks = _read_report(report)
    got = {(c["host"], c["test"].rsplit("::", 1)[-1]): c for c in checks}
    assert collected == len(checks) == 2 * len(EXPECTED)
    for fixture, wanted in EXPECTED.items():
        for name, want in wanted.items():
            row = got[(f"recorded://{fixture}", name)]
            assert row["markers"] and "gh200" in row["markers"]
            if want == "passed":
                assert row["outcome"] == "passed", row
            else:
                assert row["outcome"] == "failed" and want in row["detail"], row
