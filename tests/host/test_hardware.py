"""Hardware: the GPUs, the driver and CUDA as the host reports them; GH200-only facts."""

from __future__ import annotations

import json
import re
from typing import Any

import gh200_facts as facts
import pytest


def _gpus(host: Any) -> list[dict[str, str]]:
    out = host.run(facts.GPU_CSV)
    assert out.rc == 0, f"nvidia-smi failed ({out.rc}): {out.stderr.strip() or out.stdout.strip()}"
    return [
        dict(zip(facts.GPU_FIELDS.split(","), (c.strip() for c in line.split(",")), strict=True))
        for line in out.stdout.strip().splitlines()
    ]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


@pytest.mark.gpu
def test_gpu_count(host: Any, expect: dict[str, Any]) -> None:
    """GPU count as expected."""
    gpus = _gpus(host)
    assert len(gpus) == int(expect["gh200_verify_gpu_count"]), [g["name"] for g in gpus]


@pytest.mark.gpu
def test_gpu_memory(host: Any, expect: dict[str, Any]) -> None:
    """Each GPU reports the expected memory."""
    need = int(expect.get("gh200_verify_gpu_memory_min_mib") or 0)
    for gpu in _gpus(host):
        assert int(gpu["memory.total"]) >= need, (
            f"GPU {gpu['index']} has {gpu['memory.total']} MiB, need {need}"
        )


@pytest.mark.gpu
def test_driver_branch_and_version(host: Any, expect: dict[str, Any]) -> None:
    """Driver loaded, of the expected branch and version."""
    versions = {g["driver_version"] for g in _gpus(host)}
    assert len(versions) == 1, versions
    loaded = versions.pop()
    branch = str(expect.get("gh200_nvidia_driver_branch") or "")
    version = str(expect.get("gh200_nvidia_driver_version") or "")
    if not branch and not version:
        pytest.skip(
            f"driver {loaded} loaded; no branch or version expected (gh200_nvidia_driver_branch empty)"
        )
    if branch:
        assert loaded.split(".")[0] == branch, f"driver {loaded}, expected branch {branch}"
    if version:
        assert loaded == version, f"driver {loaded}, expected {version}"


@pytest.mark.gpu
def test_open_kernel_modules(host: Any, expect: Any) -> None:
    """Driver uses NVIDIA's open kernel modules."""
    if not expect.flag("gh200_verify_open_kernel_modules"):
        pytest.skip("open kernel modules not required here (gh200_verify_open_kernel_modules: false)")
    text = host.file("/proc/driver/nvidia/version").content_string
    assert "Open Kernel Module" in text, (
        text.strip().splitlines()[0] if text else "no /proc/driver/nvidia/version"
    )


@pytest.mark.gpu
def test_cuda_version_supported_by_the_driver(host: Any, expect: dict[str, Any]) -> None:
    """Driver supports the expected CUDA version."""
    match = re.search(r"CUDA Version:\s*([0-9.]+)", host.check_output("nvidia-smi"))
    assert match, "nvidia-smi shows no CUDA version"
    need = str(expect.get("gh200_verify_cuda_driver_min") or "0")
    assert _version(match.group(1)) >= _version(need), f"driver supports CUDA {match.group(1)}, need {need}"


@pytest.mark.gpu
def test_persistence_mode(host: Any, expect: Any) -> None:
    """GPUs in persistence mode."""
    if not expect.flag("gh200_verify_persistence_mode"):
        pytest.skip("persistence mode not required here (gh200_verify_persistence_mode: false)")
    off = [g["index"] for g in _gpus(host) if g["persistence_mode"] != "Enabled"]
    assert not off, f"persistence mode off on GPU {off}"


@pytest.mark.gpu
def test_cdi_spec_lists_the_gpus(host: Any, expect: Any) -> None:
    """CDI spec lists the GPUs for containers."""
    if not expect.flag("gh200_verify_provisioned"):
        pytest.skip("host not provisioned by gh200 (gh200_verify_provisioned: false): no CDI spec expected")
    spec = expect["gh200_container_runtime_cdi_spec"]
    assert host.file(spec).exists, f"{spec} is missing (run gh200 provision after the driver loads)"
    devices = host.check_output("nvidia-ctk cdi list")
    assert "nvidia.com/gpu=all" in devices, devices


# Fetch a URL on the host with its own python3 (curl may not be installed); prints the status.
PROBE = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).status)"


@pytest.mark.gpu
def test_deployed_profiles_healthy(host: Any, expect: dict[str, Any]) -> None:
    """Deployed profiles' containers running and answering their health URL."""
    profiles = list(expect.get("gh200_verify_profiles") or [])
    if not profiles:
        pytest.skip("no deployed profile expected (gh200_verify_profiles is empty)")
    for profile in profiles:
        # gh200 deploy labels every container it starts; the health URL is one of the labels.
        ids = host.check_output("docker ps -q --filter label=io.gh200.profile=%s", profile).split()
        assert ids, f"no running container labelled io.gh200.profile={profile}"
        for cid in ids:
            labels = json.loads(
                host.check_output("docker inspect --format '{{json .Config.Labels}}' %s", cid)
            )
            url = labels.get("io.gh200.health-url")
            assert url, f"container {cid} of {profile} carries no io.gh200.health-url label"
            probe = host.run("python3 -c %s %s", PROBE, url)
            assert probe.rc == 0 and probe.stdout.strip() == "200", (
                f"{profile} {url}: {probe.stderr.strip()[-200:]}"
            )


@pytest.mark.gh200
def test_64k_page_kernel(host: Any) -> None:
    """Kernel runs with 64K pages."""
    size = facts.page_size(host)
    assert size == 65536, f"page size is {size}, not 65536: {facts.kernel(host)} is not the -64k kernel"


@pytest.mark.gh200
@pytest.mark.gpu
def test_each_gpu_on_its_own_grace_node(host: Any) -> None:
    """Each GPU attached to its own Grace NUMA node."""
    gpus = facts.query(host)  # nvidia-smi -q: the GPUs, in index order, with their PCI addresses
    rows = facts.topology(host)  # nvidia-smi topo -m: each GPU's CPU and memory NUMA nodes
    nodes = facts.numa_nodes(host)  # /sys/devices/system/node: which nodes have CPUs, memory
    assert len(rows) == len(gpus), f"nvidia-smi topo -m shows {len(rows)} GPUs, nvidia-smi -q {len(gpus)}"
    grace = {n.id for n in nodes.values() if n.cpus}
    owner: dict[int, str] = {}
    for gpu, row in zip(gpus, rows, strict=True):
        # Older drivers print no NUMA Affinity column (or N/A): the kernel's node for the device.
        where = row.numa_affinity or facts.pci_numa_node(host, gpu)
        label = f"{row.name} ({gpu.bus_id})"
        assert len(where) == 1, f"{label} has NUMA affinity {sorted(where) or 'N/A'}, not one node"
        (node,) = where
        assert node in grace, f"{label} is attached to node {node}, which has no CPUs (not a Grace node)"
        assert node not in owner, f"{label} and {owner[node]} share NUMA node {node}"
        owner[node] = row.name
        assert row.cpu_affinity <= nodes[node].cpus, (
            f"{label}: CPU affinity {sorted(row.cpu_affinity)[:3]}... lies outside node {node}'s CPUs"
        )
        # On GH200 the GPU's HBM is a NUMA node of its own: CPU-less, with memory. Drivers that
        # keep GPU memory out of the kernel (CDMM, non-NUMA mode) report N/A: nothing to check.
        for hbm in sorted(row.gpu_numa_id):
            assert hbm in nodes and hbm not in grace, f"{label}: its memory node {hbm} is not a CPU-less node"
            assert nodes[hbm].memory_kib > 0, f"{label}: its memory node {hbm} has no memory online"
