"""Measure a GPU host's memory paths with PyTorch and describe them as a topology document.

Standard library plus torch (imported lazily), so that it runs under a GPU host's own python3:
`PYTHONPATH=tools python3 -m gh200.ruler.probe_main`. torch is not one of our dependencies.

What it measures, each as the median of several CUDA-event-timed repetitions after warm-up:
* device copy on each GPU (dst.copy_(src) in HBM); bytes moved are counted as 2 x the buffer
  size, since a copy reads and writes every byte, and that is compared with the datasheet figure;
* pinned host-to-device and device-to-host between each NUMA node with CPUs and each GPU. The
  host buffer is placed on the node by binding this thread (sched_setaffinity to the node's CPUs,
  set_mempolicy(MPOL_BIND) through the libc syscall wrapper), touching every page from this thread,
  then pinning it with cudaHostRegister; move_pages() then reads back where sampled pages landed;
* GPU to GPU for every ordered pair: a peer copy where can_device_access_peer allows it, otherwise
  a copy staged through a pinned host buffer (and the CUDA runtime's own device-to-device copy,
  which the driver stages itself). These are timed on the wall clock with both GPUs synchronised.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import os
import platform
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gh200.errors import BadInput, OperationFailed
from gh200.ruler import topology

GIB = 2**30
# Chunk of the pipelined host staging: large enough for full-speed DMA, small enough to overlap.
STAGING_CHUNK = 64 * 2**20
NODE_ROOT = Path("/sys/devices/system/node")
PCI_ROOT = Path("/sys/bus/pci/devices")

MPOL_DEFAULT = 0
MPOL_BIND = 2
# Syscall numbers (x86-64 from arch/x86/entry/syscalls/syscall_64.tbl; arm64 from asm-generic).
_SYSCALLS = {
    "x86_64": {"set_mempolicy": 238, "move_pages": 279},
    "aarch64": {"set_mempolicy": 237, "move_pages": 239},
}

Step = Callable[[str], None]


class ProbeUnavailable(OperationFailed):
    """No PyTorch or no CUDA device where the probe was asked to run."""


class ProbeInputError(BadInput):
    """A probe option that cannot be used (a node or GPU that is not there, a bad size)."""


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def list_nodes(root: Path = NODE_ROOT) -> list[dict[str, Any]]:
    """NUMA nodes from sysfs: id, CPUs, memory. Empty when the kernel exposes none."""
    nodes = []
    for path in sorted(root.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        try:
            cpus = parse_cpulist((path / "cpulist").read_text())
        except OSError:
            cpus = []
        mem = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in (path / "meminfo").read_text().splitlines():
                if "MemTotal:" in line:
                    mem = int(line.split()[-2]) * 1024
        nodes.append({"id": int(path.name[4:]), "cpus": cpus, "mem_total_bytes": mem, "has_cpus": bool(cpus)})
    return nodes


def pci_numa_node(bus_id: str | None, root: Path = PCI_ROOT) -> int | None:
    """The NUMA node sysfs reports for a PCI device ('00000000:19:00.0' or '0000:19:00.0')."""
    if not bus_id:
        return None
    parts = bus_id.lower().split(":")
    if len(parts) != 3:
        return None
    # NVML writes an 8-digit domain; sysfs uses 4.
    parts[0] = parts[0][-4:].rjust(4, "0")
    try:
        value = int((root / ":".join(parts) / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if value < 0 else value


class MemPolicy:
    """set_mempolicy and move_pages through libc's syscall(), no libnuma needed."""

    def __init__(self) -> None:
        self.numbers = _SYSCALLS.get(platform.machine())
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long

    @property
    def available(self) -> bool:
        return self.numbers is not None

    def bind(self, node: int) -> None:
        assert self.numbers is not None
        words = node // 64 + 1
        mask = (ctypes.c_ulong * words)()
        mask[node // 64] = 1 << (node % 64)
        rc = self.libc.syscall(
            ctypes.c_long(self.numbers["set_mempolicy"]),
            ctypes.c_int(MPOL_BIND),
            mask,
            ctypes.c_ulong(words * 64 + 1),
        )
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"set_mempolicy(MPOL_BIND, node {node}): {os.strerror(err)}")

    def reset(self) -> None:
        if self.numbers is not None:
            self.libc.syscall(
                ctypes.c_long(self.numbers["set_mempolicy"]),
                ctypes.c_int(MPOL_DEFAULT),
                None,
                ctypes.c_ulong(0),
            )

    def page_nodes(self, address: int, nbytes: int, samples: int = 64) -> dict[int, int] | None:
        """Node -> count for `samples` pages spread over the buffer; None if the kernel will not say."""
        if self.numbers is None:
            return None
        page = os.sysconf("SC_PAGE_SIZE")
        first = address - address % page
        count = max(1, min(samples, nbytes // page))
        step = max(1, (nbytes // page) // count)
        pages = (ctypes.c_void_p * count)(*[first + i * step * page for i in range(count)])
        status = (ctypes.c_int * count)()
        rc = self.libc.syscall(
            ctypes.c_long(self.numbers["move_pages"]),
            ctypes.c_int(0),
            ctypes.c_ulong(count),
            pages,
            None,
            status,
            ctypes.c_int(0),
        )
        if rc != 0:
            return None
        tally: dict[int, int] = {}
        for value in status:
            tally[value] = tally.get(value, 0) + 1
        return tally


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ProbeUnavailable(
            "PyTorch (torch) is not importable here; the probe needs it and gh200-stack does not ship it",
            "run the probe on the GPU host with a python that has torch: "
            "PYTHONPATH=tools python3 -m gh200.ruler.probe_main",
        ) from None
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise ProbeUnavailable("torch sees no CUDA device", "run the probe on a host with an NVIDIA GPU")
    return torch


def _stats(times: list[float], bytes_moved: int) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "times_s": [round(t, 9) for t in times],
        "median_s": median,
        "gbps": bytes_moved / median / 1e9,
        "gbps_best": bytes_moved / min(times) / 1e9,
    }


def _time_events(torch: Any, device: int, op: Callable[[], None], reps: int, warmup: int) -> list[float]:
    """Seconds per repetition from CUDA events on `device`'s current stream."""
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device)
        for _ in range(warmup):
            op()
        torch.cuda.synchronize(device)
        pairs = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            op()
            end.record(stream)
            pairs.append((start, end))
        torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / 1000.0 for start, end in pairs]


def _time_wall(torch: Any, devices: list[int], op: Callable[[], None], reps: int, warmup: int) -> list[float]:
    """Seconds per repetition on the wall clock, every involved GPU synchronised around each."""

    def sync() -> None:
        for d in devices:
            torch.cuda.synchronize(d)

    for _ in range(warmup):
        op()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        op()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _copier(dst: Any, src: Any, non_blocking: bool = False) -> Callable[[], None]:
    def op() -> None:
        dst.copy_(src, non_blocking=non_blocking)

    return op


def _pipelined_stager(
    torch: Any, src: Any, dst: Any, buffers: tuple[Any, Any], *, src_gpu: int, dst_gpu: int
) -> Callable[[], None]:
    """GPU to GPU through two pinned chunk buffers: chunk k goes down while chunk k-1 goes up."""
    down = torch.cuda.Stream(device=src_gpu)
    up = torch.cuda.Stream(device=dst_gpu)
    chunk = buffers[0].numel()
    total = src.numel()
    # Per buffer, the event of its last upload: a buffer is refilled only once that has finished,
    # across calls too (warm-up calls follow each other without a synchronisation).
    freed: list[Any] = [None, None]

    def op() -> None:
        down.wait_stream(torch.cuda.current_stream(src_gpu))
        up.wait_stream(torch.cuda.current_stream(dst_gpu))
        for k, offset in enumerate(range(0, total, chunk)):
            n = min(chunk, total - offset)
            host = buffers[k % 2][:n]
            with torch.cuda.stream(down):
                if freed[k % 2] is not None:
                    down.wait_event(freed[k % 2])
                host.copy_(src[offset : offset + n], non_blocking=True)
                landed = torch.cuda.Event()
                landed.record(down)
            with torch.cuda.stream(up):
                up.wait_event(landed)
                dst[offset : offset + n].copy_(host, non_blocking=True)
                done = torch.cuda.Event()
                done.record(up)
                freed[k % 2] = done

    return op


def _cuda_ok(rc: Any) -> bool:
    try:
        return int(rc) == 0
    except (TypeError, ValueError):
        return str(rc).rsplit(".", 1)[-1].lower() == "success"


@contextlib.contextmanager
def bound_to(node: dict[str, Any] | None, policy: MemPolicy) -> Iterator[str]:
    """Run this thread on `node`'s CPUs with memory bound to it; yields how it was bound."""
    if node is None:
        yield "unbound"
        return
    original = os.sched_getaffinity(0)
    how = []
    try:
        if node["cpus"]:
            os.sched_setaffinity(0, node["cpus"])
            how.append("sched_setaffinity")
        if policy.available:
            policy.bind(node["id"])
            how.append("set_mempolicy(MPOL_BIND)")
        yield " + ".join(how) or "unbound"
    finally:
        policy.reset()
        os.sched_setaffinity(0, original)


@contextlib.contextmanager
def pinned_host_buffer(torch: Any, nbytes: int) -> Iterator[tuple[Any, str]]:
    """A page-locked host tensor whose pages were first touched by this (bound) thread."""
    buf = torch.empty(nbytes, dtype=torch.uint8)
    # memset from this thread: torch's own fill may run on pool threads that are not bound.
    ctypes.memset(buf.data_ptr(), 1, nbytes)
    cudart = torch.cuda.cudart()
    registered = _cuda_ok(cudart.cudaHostRegister(buf.data_ptr(), nbytes, 0))
    if registered:
        try:
            yield buf, "cudaHostRegister"
        finally:
            cudart.cudaHostUnregister(buf.data_ptr())
            del buf
    else:
        del buf
        # Fallback: the caching pinned allocator; its pages are touched by this thread too.
        fallback = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        fallback.fill_(1)
        yield fallback, "pin_memory"


def _bus_id(torch: Any, index: int, props: Any) -> str | None:
    domain = getattr(props, "pci_domain_id", None)
    bus = getattr(props, "pci_bus_id", None)
    dev = getattr(props, "pci_device_id", None)
    if isinstance(bus, int) and isinstance(dev, int):
        return f"{int(domain or 0):04x}:{bus:02x}:{dev:02x}.0"
    return None


def _run_text(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def check_options(*, size_bytes: int, copy_size_bytes: int, reps: int, warmup: int) -> None:
    """The probe's own options, checked before anything is imported, allocated or drawn."""
    for flag, value in (("--size", size_bytes), ("--copy-size", copy_size_bytes)):
        if value < 1 << 20:
            raise ProbeInputError(
                f"{flag} {value} bytes is below 1 MiB, which measures latency, not bandwidth",
                f"use {flag} 256MiB or more",
            )
    if reps < 1:
        raise ProbeInputError(f"--reps {reps}: need at least one timed repetition", "pass --reps 1 or more")
    if warmup < 0:
        raise ProbeInputError(f"--warmup {warmup} is negative", "pass --warmup 0 or more")


def check_nodes(nodes: list[int], all_nodes: list[dict[str, Any]] | None = None) -> None:
    """--nodes names NUMA nodes this host has (read from sysfs; nothing is touched)."""
    known = {n["id"] for n in (list_nodes() if all_nodes is None else all_nodes)}
    missing = [n for n in nodes if n not in known]
    if missing:
        raise ProbeInputError(
            f"--nodes: NUMA node(s) {missing} not in /sys/devices/system/node (have {sorted(known)})",
            "pass --nodes with existing node ids",
        )


def run_probe(
    *,
    size_bytes: int = GIB,
    copy_size_bytes: int = 2 * GIB,
    reps: int = 10,
    warmup: int = 3,
    nodes: list[int] | None = None,
    gpus: list[int] | None = None,
    step: Step | None = None,
) -> dict[str, Any]:
    """Measure every path and return the topology document (see gh200.ruler.topology)."""
    check_options(size_bytes=size_bytes, copy_size_bytes=copy_size_bytes, reps=reps, warmup=warmup)
    torch = _import_torch()
    say = step or (lambda _msg: None)
    policy = MemPolicy()

    all_nodes = list_nodes()
    if nodes is not None:
        check_nodes(nodes, all_nodes)
        probe_nodes: list[dict[str, Any] | None] = [n for n in all_nodes if n["id"] in nodes]
    else:
        # Nodes with CPUs hold host memory; on a GH200 the CPU-less nodes are the GPUs' own HBM.
        probe_nodes = [n for n in all_nodes if n["has_cpus"]] or [None]
    count = torch.cuda.device_count()
    gpu_ids = list(range(count)) if gpus is None else gpus
    if any(g < 0 or g >= count for g in gpu_ids):
        raise ProbeInputError(
            f"GPU index out of range in {gpu_ids} (torch sees {count})", "pass --gpus 0..N-1"
        )

    memory_nodes = [n for n in all_nodes if n["has_cpus"]]
    gpu_docs = []
    for index in gpu_ids:
        props = torch.cuda.get_device_properties(index)
        bus = _bus_id(torch, index, props)
        numa = pci_numa_node(bus)
        numa_source = "sysfs" if numa is not None else None
        if numa is None and len(memory_nodes) == 1:
            numa, numa_source = memory_nodes[0]["id"], "only node with CPUs"
        nominal = topology.nominal_hbm_gbps(props.name, props.total_memory)
        gpu_docs.append(
            {
                "index": index,
                "name": props.name,
                "memory_bytes": props.total_memory,
                "pci_bus_id": bus,
                "numa_node": numa,
                "numa_node_source": numa_source,
                "nominal_hbm_part": None if nominal is None else nominal[0],
                "nominal_hbm_gbps": None if nominal is None else nominal[1],
                "device_copy_ratio": None,
            }
        )

    measurements: list[dict[str, Any]] = []

    def record(entry: dict[str, Any], times: list[float], bytes_moved: int) -> dict[str, Any]:
        entry.update(
            {"reps": reps, "warmup": warmup, "bytes_moved": bytes_moved, **_stats(times, bytes_moved)}
        )
        measurements.append(entry)
        return entry

    # 1. Device copy per GPU.
    for gpu in gpu_docs:
        index = gpu["index"]
        say(f"device copy on GPU {index}")
        n = copy_size_bytes
        src = torch.empty(n, dtype=torch.uint8, device=f"cuda:{index}").fill_(1)
        dst = torch.empty_like(src)
        times = _time_events(torch, index, _copier(dst, src), reps, warmup)
        entry = record(
            {"kind": "device_copy", "gpu": index, "size_bytes": n, "method": "copy_"}, times, 2 * n
        )
        if gpu["nominal_hbm_gbps"]:
            gpu["device_copy_ratio"] = entry["gbps"] / gpu["nominal_hbm_gbps"]
        del src, dst
        torch.cuda.empty_cache()

    # 2. Pinned host <-> device per NUMA node and GPU.
    device_bufs = {
        g["index"]: torch.empty(size_bytes, dtype=torch.uint8, device=f"cuda:{g['index']}") for g in gpu_docs
    }
    for node in probe_nodes:
        node_id = None if node is None else node["id"]
        with bound_to(node, policy) as how, pinned_host_buffer(torch, size_bytes) as (host, pin_how):
            placement = policy.page_nodes(host.data_ptr(), size_bytes)
            for gpu in gpu_docs:
                index = gpu["index"]
                local = None if node_id is None or gpu["numa_node"] is None else node_id == gpu["numa_node"]
                dev = device_bufs[index]
                common = {
                    "gpu": index,
                    "numa_node": node_id,
                    "local": local,
                    "size_bytes": size_bytes,
                    "binding": how,
                    "pinning": pin_how,
                    "host_pinned": bool(host.is_pinned()),
                    "page_nodes": None if placement is None else {str(k): v for k, v in placement.items()},
                }
                say(f"host node {node_id} -> GPU {index}")
                times = _time_events(torch, index, _copier(dev, host, non_blocking=True), reps, warmup)
                record({"kind": "h2d", "method": "copy_", **common}, times, size_bytes)
                say(f"GPU {index} -> host node {node_id}")
                times = _time_events(torch, index, _copier(host, dev, non_blocking=True), reps, warmup)
                record({"kind": "d2h", "method": "copy_", **common}, times, size_bytes)

    # 3. GPU to GPU, every ordered pair.
    peer_matrix = [[i == j or torch.cuda.can_device_access_peer(i, j) for j in gpu_ids] for i in gpu_ids]
    for a, src_gpu in enumerate(gpu_ids):
        for b, dst_gpu in enumerate(gpu_ids):
            if src_gpu == dst_gpu:
                continue
            src, dst = device_bufs[src_gpu], device_bufs[dst_gpu]
            pair = {"src_gpu": src_gpu, "dst_gpu": dst_gpu, "size_bytes": size_bytes}
            if peer_matrix[a][b]:
                say(f"GPU {src_gpu} -> GPU {dst_gpu} (peer)")
                times = _time_wall(torch, [src_gpu, dst_gpu], _copier(dst, src), reps, warmup)
                record({"kind": "d2d", "method": "peer", **pair}, times, size_bytes)
            # Always also stage through pinned memory on the source GPU's node: that is the post's
            # Hopper-to-Hopper path, and what traffic takes when peer access is off (NCCL_P2P_DISABLE).
            # Two ways: the whole buffer down then up (serial), and in chunks through two buffers so
            # that the device-to-host and host-to-device legs overlap (pipelined, as NCCL does).
            src_node = next((n for n in probe_nodes if n and n["id"] == gpu_docs[a]["numa_node"]), None)
            chunk = min(size_bytes, STAGING_CHUNK)
            with (
                bound_to(src_node, policy),
                pinned_host_buffer(torch, size_bytes) as (host, _how),
                pinned_host_buffer(torch, chunk) as (ping, _ping_how),
                pinned_host_buffer(torch, chunk) as (pong, _pong_how),
            ):

                def serial(s: Any = src, d: Any = dst, h: Any = host, sg: int = src_gpu) -> None:
                    h.copy_(s, non_blocking=True)
                    torch.cuda.synchronize(sg)
                    d.copy_(h, non_blocking=True)

                say(f"GPU {src_gpu} -> GPU {dst_gpu} (staged through host, serial)")
                times = _time_wall(torch, [src_gpu, dst_gpu], serial, reps, warmup)
                record({"kind": "d2d", "method": "host_staged", **pair}, times, size_bytes)
                say(f"GPU {src_gpu} -> GPU {dst_gpu} (staged through host, pipelined)")
                pipelined = _pipelined_stager(torch, src, dst, (ping, pong), src_gpu=src_gpu, dst_gpu=dst_gpu)
                times = _time_wall(torch, [src_gpu, dst_gpu], pipelined, reps, warmup)
                record(
                    {"kind": "d2d", "method": "host_pipelined", "chunk_bytes": chunk, **pair},
                    times,
                    size_bytes,
                )
            if peer_matrix[a][b]:
                continue
            # Without peer access the runtime's own device-to-device copy is staged by the driver.
            say(f"GPU {src_gpu} -> GPU {dst_gpu} (runtime copy, no peer access)")
            try:
                times = _time_wall(torch, [src_gpu, dst_gpu], _copier(dst, src), reps, warmup)
            except RuntimeError as err:
                measurements.append(
                    {"kind": "d2d_failed", "method": "runtime", **pair, "note": str(err)[:200]}
                )
            else:
                record({"kind": "d2d", "method": "runtime", **pair}, times, size_bytes)
    del device_bufs
    torch.cuda.empty_cache()

    driver = _run_text(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    good = [m for m in measurements if "gbps" in m]
    doc: dict[str, Any] = {
        "schema": topology.SCHEMA,
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": socket.gethostname(),
        "machine": platform.machine(),
        "software": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "driver": driver.strip().splitlines()[0] if driver else None,
        },
        "conventions": {
            "gb": "10^9 bytes",
            "device_copy": topology.DEVICE_COPY_CONVENTION,
            "statistic": "median of the timed repetitions (gbps); gbps_best from the fastest",
            "timing": (
                "CUDA events for device copy, H2D and D2H; "
                "wall clock with both GPUs synchronised for GPU to GPU"
            ),
        },
        "parameters": {
            "size_bytes": size_bytes,
            "copy_size_bytes": copy_size_bytes,
            "reps": reps,
            "warmup": warmup,
        },
        "numa_nodes": all_nodes,
        "gpus": gpu_docs,
        "peer_access": peer_matrix,
        "nvidia_smi_topo": _run_text(["nvidia-smi", "topo", "-m"]),
        "measurements": measurements,
        "paths": topology.summarise_paths(gpu_docs, good),
    }
    return doc
