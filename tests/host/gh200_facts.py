"""Hardware facts for the host suite, read from a live host (testinfra) or a recorded one.

The hardware checks read the host only through the functions here, and these use only what
testinfra's host object offers: `run(command)` and `file(path)` (`exists`, `content_string`,
`listdir()`). `RecordedHost` offers the same from a directory, so the very same checks run in CI
against a recorded GH200 (tests/unit/verify/recorded/) and on the real machine.

Record a machine (python3 and nothing else needed):  python3 gh200_facts.py record OUT_DIR
"""

from __future__ import annotations

import json
import platform
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# The commands the checks run; `record` runs exactly these.
PAGESIZE = "getconf PAGESIZE"
KERNEL = "uname -r"
TOPOLOGY = "nvidia-smi topo -m"
QUERY = "nvidia-smi -q"
GPU_FIELDS = "index,name,memory.total,persistence_mode,driver_version,pci.bus_id"
GPU_CSV = f"nvidia-smi --query-gpu={GPU_FIELDS} --format=csv,noheader,nounits"
COMMANDS = (PAGESIZE, KERNEL, TOPOLOGY, QUERY, GPU_CSV, "nvidia-smi")

NODE_DIR = "/sys/devices/system/node"
PCI_DIR = "/sys/bus/pci/devices"
DRIVER_VERSION = "/proc/driver/nvidia/version"

# `nvidia-smi topo -m` columns, by their header (their position depends on the NICs present and
# on the driver: older ones print no "GPU NUMA ID", very old ones no "NUMA Affinity").
CPU_AFFINITY = "CPU Affinity"
NUMA_AFFINITY = "NUMA Affinity"
GPU_NUMA_ID = "GPU NUMA ID"


class FactError(AssertionError):
    """A fact the host did not give, or gave in a form this module cannot read: the check fails."""


class HostLike(Protocol):
    """What the facts need of a host: testinfra's Host, or RecordedHost."""

    def run(self, command: str, *args: str) -> Any: ...
    def file(self, path: str) -> Any: ...


# ----------------------------------------------------------------------------------------------
# Parsers (pure)


def parse_cpulist(text: str) -> frozenset[int]:
    """A kernel cpulist/nodelist ("0-71,144", "" for none); FactError on anything else."""
    out: set[int] = set()
    for part in (p.strip() for p in text.strip().split(",")):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise FactError(f"not a CPU/node list: {text.strip()!r}")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        out.update(range(low, high + 1))
    return frozenset(out)


def _cells(line: str) -> list[str]:
    # nvidia-smi separates cells with tabs; copies pasted from a terminal have runs of spaces.
    # Single spaces stay inside a cell ("CPU Affinity").
    parts = re.split(r"\t+", line.strip()) if "\t" in line else re.split(r" {2,}", line.strip())
    return [p.strip() for p in parts]


@dataclass(frozen=True)
class TopoGpu:
    """One GPU row of `nvidia-smi topo -m`."""

    name: str
    cpu_affinity: frozenset[int]  # empty: N/A
    numa_affinity: frozenset[int]  # the CPU-side node(s) nearest the GPU; empty: N/A or no column
    gpu_numa_id: frozenset[int]  # the node holding the GPU's own memory; empty: N/A or no column
    links: dict[str, str]


def _nodes_cell(row: dict[str, str], column: str, name: str) -> frozenset[int]:
    value = row.get(column, "N/A")
    return frozenset() if value in ("N/A", "") else _cell_list(value, column, name)


def _cell_list(value: str, column: str, name: str) -> frozenset[int]:
    try:
        return parse_cpulist(value)
    except FactError:
        raise FactError(f"nvidia-smi topo -m: {name} {column} is {value!r}, not a list") from None


# nvidia-smi underlines the topo header with ANSI escapes, even into a pipe (seen on a real H200).
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_topology(text: str) -> list[TopoGpu]:
    """GPU rows of `nvidia-smi topo -m`, columns matched by header name."""
    lines = [_ANSI.sub("", ln) for ln in text.splitlines()]
    start = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if start is None:
        raise FactError("nvidia-smi topo -m printed nothing")
    header = _cells(lines[start])
    if not header or not re.fullmatch(r"GPU\d+", header[0]):
        raise FactError(f"nvidia-smi topo -m: unexpected header {lines[start].strip()!r}")
    gpus: list[TopoGpu] = []
    for line in lines[start + 1 :]:
        if not line.strip() or line.strip().startswith("Legend"):
            break
        cells = _cells(line)
        if not re.fullmatch(r"GPU\d+", cells[0]):
            continue  # NIC rows (their affinity cells are empty)
        if len(cells) != len(header) + 1:
            raise FactError(
                f"nvidia-smi topo -m: row {cells[0]} has {len(cells) - 1} cells for {len(header)} columns"
            )
        row = dict(zip(header, cells[1:], strict=True))
        name = cells[0]
        affinity = row.get(CPU_AFFINITY, "N/A")
        gpus.append(
            TopoGpu(
                name=name,
                cpu_affinity=frozenset() if affinity == "N/A" else _cell_list(affinity, CPU_AFFINITY, name),
                numa_affinity=_nodes_cell(row, NUMA_AFFINITY, name),
                gpu_numa_id=_nodes_cell(row, GPU_NUMA_ID, name),
                links={k: v for k, v in row.items() if re.fullmatch(r"(GPU|NIC)\d+|mlx\S+", k)},
            )
        )
    if not gpus:
        raise FactError("nvidia-smi topo -m lists no GPU")
    return gpus


@dataclass(frozen=True)
class SmiGpu:
    """One GPU of `nvidia-smi -q`, in its order (the index nvidia-smi and topo -m use)."""

    index: int
    bus_id: str  # as nvidia-smi prints it: 00000009:01:00.0
    product: str
    addressing_mode: str  # "ATS" on a GH200 (coherent NVLink-C2C), "HMM" or "None" elsewhere
    memory_total_mib: int

    @property
    def sysfs_address(self) -> str:
        """The PCI address as /sys/bus/pci/devices names it: 0009:01:00.0."""
        domain, rest = self.bus_id.lower().split(":", 1)
        return f"{domain[-4:]}:{rest}"


def parse_query(text: str) -> list[SmiGpu]:
    """The GPUs of `nvidia-smi -q` (each block starts `GPU <bus id>`)."""
    attached = re.search(r"^Attached GPUs\s*:\s*(\d+)", text, re.M)
    blocks = re.split(r"^GPU (?=[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d\s*$)", text, flags=re.M)
    gpus: list[SmiGpu] = []
    for block in blocks[1:]:
        bus_id = block.splitlines()[0].strip()

        def field(name: str, body: str = block) -> str:
            match = re.search(rf"^\s+{re.escape(name)}\s*:\s*(.*?)\s*$", body, re.M)
            return match.group(1) if match else ""

        fb = re.search(r"^\s+FB Memory Usage\s*\n((?:\s{8,}.*\n?)+)", block, re.M)
        total = re.search(r"Total\s*:\s*(\d+)\s*MiB", fb.group(1)) if fb else None
        gpus.append(
            SmiGpu(
                index=len(gpus),
                bus_id=bus_id,
                product=field("Product Name"),
                addressing_mode=field("Addressing Mode") or "N/A",
                memory_total_mib=int(total.group(1)) if total else 0,
            )
        )
    if attached and int(attached.group(1)) != len(gpus):
        raise FactError(f"nvidia-smi -q: {attached.group(1)} GPUs attached, {len(gpus)} described")
    if not gpus:
        raise FactError("nvidia-smi -q describes no GPU")
    return gpus


@dataclass(frozen=True)
class NumaNode:
    id: int
    cpus: frozenset[int]
    memory_kib: int  # MemTotal: 0 for a node whose memory is not online (GPU memory, driver not loaded)


def parse_meminfo_total(text: str) -> int:
    match = re.search(r"MemTotal:\s*(\d+)\s*kB", text)
    return int(match.group(1)) if match else 0


# ----------------------------------------------------------------------------------------------
# Readers (any HostLike)


def output(host: HostLike, command: str) -> str:
    """stdout of a command that must succeed; FactError naming the command otherwise."""
    out = host.run(command)
    if out.rc != 0:
        said = (out.stderr.strip() or out.stdout.strip() or f"exit {out.rc}").splitlines()[0]
        raise FactError(f"`{command}` failed ({out.rc}): {said}")
    return str(out.stdout)


def page_size(host: HostLike) -> int:
    text = output(host, PAGESIZE).strip()
    if not text.isdigit():
        raise FactError(f"`{PAGESIZE}` printed {text!r}")
    return int(text)


def kernel(host: HostLike) -> str:
    out = host.run(KERNEL)
    return str(out.stdout).strip() if out.rc == 0 else "unknown kernel"


def topology(host: HostLike) -> list[TopoGpu]:
    return parse_topology(output(host, TOPOLOGY))


def query(host: HostLike) -> list[SmiGpu]:
    return parse_query(output(host, QUERY))


def numa_nodes(host: HostLike) -> dict[int, NumaNode]:
    """The NUMA nodes in /sys/devices/system/node, with their CPUs and memory."""
    directory = host.file(NODE_DIR)
    if not directory.exists:
        raise FactError(f"{NODE_DIR} is missing (a kernel without NUMA support?)")
    nodes: dict[int, NumaNode] = {}
    for name in directory.listdir():
        match = re.fullmatch(r"node(\d+)", name)
        if not match:
            continue
        base = f"{NODE_DIR}/{name}"
        cpulist = host.file(f"{base}/cpulist")
        meminfo = host.file(f"{base}/meminfo")
        nodes[int(match.group(1))] = NumaNode(
            id=int(match.group(1)),
            cpus=parse_cpulist(cpulist.content_string) if cpulist.exists else frozenset(),
            memory_kib=parse_meminfo_total(meminfo.content_string) if meminfo.exists else 0,
        )
    if not nodes:
        raise FactError(f"{NODE_DIR} lists no node")
    return nodes


def pci_numa_node(host: HostLike, gpu: SmiGpu) -> frozenset[int]:
    """The node the kernel gives the GPU's PCI function (-1, i.e. none, becomes empty)."""
    path = f"{PCI_DIR}/{gpu.sysfs_address}/numa_node"
    node = host.file(path)
    if not node.exists:
        return frozenset()
    value = int(node.content_string.strip())
    return frozenset() if value < 0 else frozenset({value})


# ----------------------------------------------------------------------------------------------
# A recorded host


@dataclass
class RecordedResult:
    rc: int
    stdout: str
    stderr: str
    command: str

    @property
    def exit_status(self) -> int:
        return self.rc

    @property
    def succeeded(self) -> bool:
        return self.rc == 0

    @property
    def failed(self) -> bool:
        return self.rc != 0


class RecordedFile:
    def __init__(self, root: Path, path: str) -> None:
        self.path = path
        self._local = root / "root" / path.lstrip("/")

    @property
    def exists(self) -> bool:
        return self._local.exists()

    @property
    def is_directory(self) -> bool:
        return self._local.is_dir()

    @property
    def content_string(self) -> str:
        if not self._local.is_file():
            raise FactError(f"{self.path} was not recorded")
        return self._local.read_text()

    def listdir(self) -> list[str]:
        return sorted(p.name for p in self._local.iterdir())


class _Backend:
    NAME = "recorded"

    def __init__(self, name: str) -> None:
        self._name = name

    def get_pytest_id(self) -> str:
        return f"recorded://{self._name}"


class _SystemInfo:
    def __init__(self, info: dict[str, Any]) -> None:
        self.type = "linux"
        self.arch = str(info.get("arch", ""))
        self.codename = str(info.get("codename", ""))
        self.distribution = str(info.get("distribution", ""))
        self.release = str(info.get("release", ""))


class RecordedHost:
    """A testinfra-like host answering from a directory written by `record`.

    host.json holds the host's description and each recorded command's exit status and output
    file; root/ mirrors the recorded files. A command or file that was not recorded answers like
    a missing one (exit 127, or no file), so a check that needs it fails instead of passing.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            self._info = json.loads((directory / "host.json").read_text())
        except (OSError, ValueError) as err:
            raise FactError(f"{directory} is not a recorded host: {err}") from None
        self.backend = _Backend(str(self._info.get("name", directory.name)))
        self.system_info = _SystemInfo(self._info)

    def run(self, command: str, *args: str) -> RecordedResult:
        if args:  # testinfra's quoting, so that both hosts see the same command line
            command = command % tuple(shlex.quote(str(a)) for a in args)
        entry = self._info.get("commands", {}).get(command)
        if entry is None:
            return RecordedResult(127, "", f"{command}: not recorded on {self.backend._name}", command)

        def text(key: str) -> str:
            name = entry.get(key)
            return (self.directory / name).read_text() if name else ""

        return RecordedResult(int(entry["rc"]), text("stdout"), text("stderr"), command)

    def check_output(self, command: str, *args: str) -> str:
        out = self.run(command, *args)
        assert out.rc == 0, f"Unexpected exit code {out.rc} for {out.command}: {out.stderr}"
        return out.stdout.rstrip("\r\n")

    def file(self, path: str) -> RecordedFile:
        return RecordedFile(self.directory, path)


# ----------------------------------------------------------------------------------------------
# Recording a live machine


def _slug(command: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", command).strip("-")[:60]


def record(out: Path, name: str) -> None:
    """Write what the hardware checks read on this machine to `out` (host.json, cmd/, root/)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cmd").mkdir(exist_ok=True)
    commands: dict[str, dict[str, Any]] = {}
    for command in COMMANDS:
        try:
            done = subprocess.run(
                shlex.split(command), capture_output=True, text=True, timeout=60, check=False
            )
            rc, stdout, stderr = done.returncode, done.stdout, done.stderr
        except FileNotFoundError as err:
            rc, stdout, stderr = 127, "", f"{err}\n"
        entry: dict[str, Any] = {"rc": rc}
        for key, value in (("stdout", stdout), ("stderr", stderr)):
            if value:
                rel = f"cmd/{_slug(command)}.{'out' if key == 'stdout' else 'err'}"
                (out / rel).write_text(value)
                entry[key] = rel
        commands[command] = entry
    paths = [Path(DRIVER_VERSION)]
    nodes = Path(NODE_DIR)
    if nodes.is_dir():
        paths += [nodes / f for f in ("online", "possible", "has_cpu", "has_memory", "has_normal_memory")]
        for node in sorted(nodes.glob("node[0-9]*")):
            paths += [node / "cpulist", node / "meminfo"]
    for device in sorted(Path(PCI_DIR).glob("*")):
        vendor = device / "vendor"
        if vendor.is_file() and vendor.read_text().strip() == "0x10de":  # NVIDIA
            paths += [device / "numa_node", device / "vendor", device / "device"]
    for path in paths:
        try:
            content = path.read_text()
        except OSError:
            continue
        target = out / "root" / str(path).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    info = {"name": name, "arch": platform.machine(), "recorded": True, "commands": commands}
    try:
        release = dict(
            line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
        )
        info["codename"] = release.get("VERSION_CODENAME", "").strip('"')
        info["distribution"] = release.get("ID", "").strip('"')
    except OSError:
        pass
    (out / "host.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] != "record":
        sys.exit("usage: python3 gh200_facts.py record OUT_DIR [NAME]")
    target = Path(sys.argv[2])
    record(target, sys.argv[3] if len(sys.argv) == 4 else target.name)
