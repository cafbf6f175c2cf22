"""The topology file that `gh200 probe` writes and `gh200 ruler` (and `gh200 verify`) read.

Standard library only: the probe runs under a GPU host's own python3, without our environment.

Schema `gh200-topology/1` (JSON object):
  schema        "gh200-topology/1"
  created       ISO 8601 UTC time of the probe
  host          host name; machine (uname -m); software {python, torch, cuda, driver}
  conventions   {"gb": "10^9 bytes", "device_copy": "bytes moved = 2 x buffer size (read + write)",
                 "statistic": "median of the timed repetitions"}
  numa_nodes    [{id, cpus (list), mem_total_bytes, has_cpus}]
  gpus          [{index, name, memory_bytes, pci_bus_id, numa_node (int or null),
                  nominal_hbm_gbps (float or null), device_copy_ratio (float or null)}]
  measurements  [{kind, gpu, src_gpu, dst_gpu, numa_node, local, method, size_bytes, bytes_moved,
                  reps, warmup, times_s (list), median_s, gbps, gbps_best, note}]
                kind: device_copy | h2d | d2h | d2d ; gbps = bytes_moved / median_s / 1e9
  paths         {hbm|local|local_d2h|remote|remote_d2h|staged|peer: {low_gbps, high_gbps, count, note}}
                the ranges `ruler` reads (summarise_paths below derives them from measurements)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gh200.errors import BadInput
from gh200.fsutil import atomic_write_text

SCHEMA = "gh200-topology/1"
DEVICE_COPY_CONVENTION = "bytes moved = 2 x buffer size (a copy reads and writes every byte)"

# Vendor datasheet HBM bandwidths, decimal GB/s. Matched on the CUDA device name; the GH200 96 GB
# part reports itself as "NVIDIA GH200 480GB" (the 480 GB is its Grace memory), so GH200 is
# matched before H200 (the string "GH200" contains "H200") and by HBM size.
NOMINAL_HBM_GBPS: tuple[tuple[str, float], ...] = (
    ("GH200 96GB (HBM3)", 4000.0),
    ("H200", 4800.0),
    ("H100 SXM", 3350.0),
    ("H100 PCIe", 2000.0),
)


class TopologyError(BadInput):
    """A topology file that cannot be read."""


def nominal_hbm_gbps(name: str, memory_bytes: int | None = None) -> tuple[str, float] | None:
    """(table entry, GB/s) for a CUDA device name, or None when the part is not in the table."""
    upper = name.upper()
    gib = (memory_bytes or 0) / 2**30
    if "GH200" in upper:
        # Only the 96 GB HBM3 GH200 is in the table; the 144 GB HBM3e part is not.
        return ("GH200 96GB (HBM3)", 4000.0) if 0 < gib <= 100 else None
    if "H200" in upper:
        return ("H200", 4800.0)
    if "H100" in upper:
        if "PCIE" in upper:
            return ("H100 PCIe", 2000.0)
        if "NVL" in upper:
            return None
        return ("H100 SXM", 3350.0)
    return None


def _range(values: list[float]) -> dict[str, Any] | None:
    good = [v for v in values if math.isfinite(v) and v > 0]
    if not good:
        return None
    return {"low_gbps": round(min(good), 2), "high_gbps": round(max(good), 2), "count": len(good)}


def summarise_paths(gpus: list[dict[str, Any]], measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """The path ranges `ruler` reads: hbm, local, local_d2h, remote, remote_d2h, staged, peer.

    local: host-to-device from each GPU's own NUMA node; remote: from every other node that has
    memory. When a GPU's node is unknown (the kernel reports -1, common in VMs) and the host has a
    single memory node, that node is local; with several nodes and no answer the GPU's fastest node
    is taken as local and the note says so.
    """
    paths: dict[str, Any] = {}
    copies = [m["gbps"] for m in measurements if m["kind"] == "device_copy"]
    hbm = _range(copies)
    if hbm:
        paths["hbm"] = {**hbm, "note": f"device copy, {DEVICE_COPY_CONVENTION}"}
    notes: dict[str, str] = {}
    buckets: dict[str, list[float]] = {"local": [], "local_d2h": [], "remote": [], "remote_d2h": []}
    for gpu in gpus:
        index = gpu["index"]
        for kind in ("h2d", "d2h"):
            rows = [m for m in measurements if m["kind"] == kind and m.get("gpu") == index]
            if not rows:
                continue
            local_flags = [m.get("local") for m in rows]
            if any(flag is True for flag in local_flags):
                local_rows = [m for m in rows if m.get("local") is True]
                remote_rows = [m for m in rows if m.get("local") is False]
            else:
                fastest = max(rows, key=lambda m: m["gbps"])
                local_rows = [fastest]
                remote_rows = [m for m in rows if m is not fastest]
                if len(rows) > 1:
                    notes["local"] = "GPU NUMA node unknown: fastest node taken as local"
            suffix = "" if kind == "h2d" else "_d2h"
            buckets["local" + suffix] += [m["gbps"] for m in local_rows]
            buckets["remote" + suffix] += [m["gbps"] for m in remote_rows]
    labels = {
        "local": "pinned host-to-device from the GPU's own NUMA node",
        "local_d2h": "pinned device-to-host to the GPU's own NUMA node",
        "remote": "pinned host-to-device from another NUMA node",
        "remote_d2h": "pinned device-to-host to another NUMA node",
    }
    for name, values in buckets.items():
        summary = _range(values)
        if summary:
            note = labels[name]
            if name.startswith("local") and "local" in notes:
                note += f" ({notes['local']})"
            paths[name] = {**summary, "note": note}
    # GPU to GPU: "staged" is the best non-peer method per ordered pair (the post's staged
    # Hopper-to-Hopper path, also what traffic takes with peer access off); "peer" the direct copy.
    for name, want_peer, label in (
        ("staged", False, "GPU to GPU staged through host memory"),
        ("peer", True, "GPU to GPU peer copy"),
    ):
        per_pair: dict[tuple[int, int], dict[str, Any]] = {}
        for m in measurements:
            if m["kind"] != "d2d" or (m["method"] == "peer") != want_peer:
                continue
            pair = (m["src_gpu"], m["dst_gpu"])
            if pair not in per_pair or m["gbps"] > per_pair[pair]["gbps"]:
                per_pair[pair] = m
        summary = _range([m["gbps"] for m in per_pair.values()])
        if summary:
            methods = ", ".join(sorted({m["method"] for m in per_pair.values()}))
            paths[name] = {**summary, "note": f"{label}, best method per pair: {methods}"}
    return paths


def validate(doc: Any, where: str) -> dict[str, Any]:
    """Check the parts `ruler` relies on; raise TopologyError naming the file otherwise."""
    fix = "re-run `gh200 probe` to write a fresh topology file, or pass --bandwidth NAME=GBPS"
    if not isinstance(doc, dict):
        raise TopologyError(f"{where} is not a JSON object", fix)
    if doc.get("schema") != SCHEMA:
        raise TopologyError(f"{where} has schema {doc.get('schema')!r}, expected {SCHEMA!r}", fix)
    paths = doc.get("paths")
    if not isinstance(paths, dict):
        raise TopologyError(f"{where} has no 'paths' object", fix)
    for name, value in paths.items():
        ok = isinstance(value, dict) and all(
            isinstance(value.get(k), int | float) and not isinstance(value.get(k), bool) and value[k] > 0
            for k in ("low_gbps", "high_gbps")
        )
        if not ok or value["low_gbps"] > value["high_gbps"]:
            raise TopologyError(f"{where}: path {name!r} needs positive low_gbps <= high_gbps", fix)
    if not isinstance(doc.get("gpus", []), list) or not isinstance(doc.get("measurements", []), list):
        raise TopologyError(f"{where}: 'gpus' and 'measurements' must be lists", fix)
    return doc


def read_topology(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(
            f"topology file {path} does not exist", "run `gh200 probe` on the GPU host, or pass --bandwidth"
        ) from None
    except OSError as err:
        raise TopologyError(f"cannot read topology file {path}: {err.strerror}", "check the path") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise TopologyError(
            f"topology file {path} is not JSON (line {err.lineno})", "re-run `gh200 probe`"
        ) from None
    return validate(doc, str(path))


def write_topology(path: Path, doc: dict[str, Any]) -> None:
    validate(doc, str(path))
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _fmt_range(low: float, high: float) -> str:
    if _fmt(low) == _fmt(high):
        return f"about {_fmt((low + high) / 2)} GB/s"
    return f"about {_fmt(low)}-{_fmt(high)} GB/s"


POST_TABLE_ROWS = (
    ("hbm", "Local HBM"),
    ("local", "Local host memory to local GPU"),
    ("remote", "Remote host memory to GPU"),
    ("staged", "GPU to GPU copy staged through host"),
    ("peer", "GPU to GPU peer copy"),
)


def post_table_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, measured bandwidth) rows shaped like the posts' Part 1 table."""
    paths = doc.get("paths", {})
    rows = []
    for key, label in POST_TABLE_ROWS:
        if key in paths:
            p = paths[key]
            rows.append((label, _fmt_range(p["low_gbps"], p["high_gbps"])))
        else:
            rows.append((label, "not measured here"))
    return rows


def detail_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(measurement, where, size, median GB/s, best GB/s) for every measurement."""
    out = []
    for m in doc.get("measurements", []):
        kind = m["kind"]
        if kind == "device_copy":
            what, where = "device copy (2x bytes)", f"GPU {m['gpu']}"
        elif kind in ("h2d", "d2h"):
            arrow = "node {n} -> GPU {g}" if kind == "h2d" else "GPU {g} -> node {n}"
            locality = {True: "local", False: "remote"}.get(m.get("local"), "node ?")
            what = f"pinned {kind.upper()} ({locality})"
            where = arrow.format(n=m.get("numa_node"), g=m["gpu"])
        else:
            what, where = f"GPU to GPU ({m['method']})", f"GPU {m['src_gpu']} -> GPU {m['dst_gpu']}"
        size = f"{m['size_bytes'] / 2**30:.2f} GiB"
        out.append((what, where, size, f"{m['gbps']:,.1f}", f"{m['gbps_best']:,.1f}"))
    return out


def gpu_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(index, name, memory, NUMA node, nominal GB/s, measured copy / nominal) per GPU."""
    out = []
    for g in doc.get("gpus", []):
        nominal = g.get("nominal_hbm_gbps")
        ratio = g.get("device_copy_ratio")
        out.append(
            (
                str(g["index"]),
                g["name"],
                f"{g['memory_bytes'] / 2**30:.1f} GiB",
                "unknown" if g.get("numa_node") is None else str(g["numa_node"]),
                "not in table" if nominal is None else f"{nominal:,.0f}",
                "-" if ratio is None else f"{ratio:.3f}",
            )
        )
    return out


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, for hosts without rich and for the closing notes."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_report(doc: dict[str, Any]) -> str:
    """The probe's result as plain Markdown tables: the post's Part 1 shape, GPUs, every measurement."""
    parts = [
        f"Topology of {doc.get('host', '?')} ({doc.get('created', '?')})",
        "",
        plain_table(("Path", "Measured bandwidth"), post_table_rows(doc)),
        "",
        plain_table(
            ("GPU", "Name", "Memory", "NUMA node", "Nominal HBM GB/s", "Copy / nominal"), gpu_rows(doc)
        ),
        "",
        plain_table(("Measurement", "Where", "Size", "Median GB/s", "Best GB/s"), detail_rows(doc)),
        "",
        f"GB = 10^9 bytes; device copy counts {DEVICE_COPY_CONVENTION}.",
    ]
    return "\n".join(parts)
