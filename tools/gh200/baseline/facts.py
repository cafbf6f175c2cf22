"""Host facts that explain a change in speed: server version, driver, CUDA, kernel, page size, bundle.

A run set's record already names the profile hash, image and model revision. These facts add what
changes under a profile without touching it: an upgraded driver, a new kernel (or its page size),
another vLLM inside the same tag, a newer bundle. Collection goes through injectable runners so that
unit tests feed it recorded outputs; every fact that cannot be read is None, never an error (a host
without nvidia-smi still records its kernel).

The server's version is not fetched here: the bench client's probe reads it (vLLM's /version,
llama.cpp's /props) and `gh200.bench.run.run` passes it in, once per benchmark, into every record.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from gh200 import __version__

Runner = Callable[[list[str]], str | None]

DRIVER_RE = re.compile(r"Driver Version:\s*([0-9][0-9.]*)")
CUDA_RE = re.compile(r"CUDA Version:\s*([0-9][0-9.]*)")
# Facts whose change is worth naming when a run set got slower, in the order people look at them.
CHANGE_FIELDS = (
    ("image", "image"),
    ("image_digest", "image digest"),
    ("profile_hash", "profile"),
    ("launch_args", "launch args"),
    ("model_revision", "model revision"),
    ("server_version", "server version"),
    ("driver", "driver"),
    ("cuda", "CUDA"),
    ("kernel", "kernel"),
    ("page_size", "page size"),
    ("bundle_version", "bundle"),
)
# What the report marks on its time axis.
MARKER_FIELDS = ("image", "image_digest", "server_version", "driver", "cuda", "kernel")


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    kernel: str
    page_size: int | None
    bundle_version: str
    server_kind: str | None = None
    server_version: str | None = None
    driver: str | None = None
    cuda: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def run_command(argv: list[str]) -> str | None:
    """stdout of a command, or None when it is missing, fails or hangs."""
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def parse_nvidia_smi(text: str | None) -> tuple[str | None, str | None]:
    """(driver, CUDA) from the header of plain `nvidia-smi` output."""
    if not text:
        return None, None
    driver = DRIVER_RE.search(text)
    cuda = CUDA_RE.search(text)
    return (driver.group(1) if driver else None, cuda.group(1) if cuda else None)


def collect_facts(
    server_kind: str | None = None,
    server_version: str | None = None,
    *,
    run: Runner = run_command,
    uname: Callable[[], Any] = os.uname,
    page_size: Callable[[], int] = lambda: os.sysconf("SC_PAGE_SIZE"),
    hostname: Callable[[], str] = socket.gethostname,
) -> HostFacts:
    driver, cuda = parse_nvidia_smi(run(["nvidia-smi"]))
    try:
        size: int | None = int(page_size())
    except (OSError, ValueError):
        size = None
    return HostFacts(
        hostname=hostname(),
        kernel=str(uname().release),
        page_size=size,
        bundle_version=__version__,
        server_kind=server_kind,
        server_version=server_version,
        driver=driver,
        cuda=cuda,
    )


def record_facts(record: Mapping[str, Any]) -> dict[str, Any]:
    """The comparable facts of a results record; older records without `facts` give what they have."""
    found_facts, found_host = record.get("facts"), record.get("host")
    facts: Mapping[str, Any] = found_facts if isinstance(found_facts, dict) else {}
    host: Mapping[str, Any] = found_host if isinstance(found_host, dict) else {}
    kernel = facts.get("kernel")
    if kernel is None and isinstance(host.get("platform"), str):
        # platform.platform() is "Linux-<release>-<machine>-with-...": the release is the kernel.
        parts = str(host["platform"]).split("-")
        kernel = "-".join(parts[1:-3]) if len(parts) > 4 else None
    return {
        "image": record.get("image"),
        "image_digest": record.get("image_digest") or facts.get("image_digest"),
        "profile_hash": record.get("profile_hash"),
        "launch_args": record.get("launch_args"),
        "model_revision": record.get("model_revision"),
        "server_version": facts.get("server_version"),
        "driver": facts.get("driver"),
        "cuda": facts.get("cuda"),
        "kernel": kernel,
        "page_size": facts.get("page_size"),
        "bundle_version": record.get("bundle_version") or facts.get("bundle_version"),
    }


def fact_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], fields: tuple[str, ...] | None = None
) -> dict[str, tuple[Any, Any]]:
    """{fact: (old, new)} for every fact two records both know and that differs, in CHANGE_FIELDS order."""
    before, after = record_facts(old), record_facts(new)
    out: dict[str, tuple[Any, Any]] = {}
    for key, _label in CHANGE_FIELDS:
        if fields is not None and key not in fields:
            continue
        a, b = before.get(key), after.get(key)
        if a is not None and b is not None and a != b:
            out[key] = (a, b)
    return out


def fact_changes(
    old: Mapping[str, Any], new: Mapping[str, Any], fields: tuple[str, ...] | None = None
) -> list[str]:
    """`driver 570.86.15 -> 575.51.03`, ... for every fact two records both know and that differs."""
    labels = dict(CHANGE_FIELDS)
    out: list[str] = []
    for key, (a, b) in fact_diff(old, new, fields).items():
        if key == "launch_args" and isinstance(a, list) and isinstance(b, list):
            out.append(f"{labels[key]} {argv_change(a, b)}")
        else:
            out.append(f"{labels[key]} {_short(a)} -> {_short(b)}")
    return out


def argv_change(old: list[Any], new: list[Any]) -> str:
    """What a new argv added and dropped (`+--spec-synth-rates 0,0,0 -12`), else the reorder."""
    import difflib

    a, b = [str(x) for x in old], [str(x) for x in new]
    parts: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag in ("delete", "replace"):
            parts.append("-" + " ".join(a[i1:i2]))
        if tag in ("insert", "replace"):
            parts.append("+" + " ".join(b[j1:j2]))
    return " ".join(parts) or "reordered"


def _short(value: Any) -> str:
    text = str(value)
    if re.fullmatch(r"(sha256:)?[0-9a-f]{32,}", text):
        return text.removeprefix("sha256:")[:12]
    return text
