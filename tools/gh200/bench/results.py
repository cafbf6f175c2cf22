"""Results files: one versioned JSON record per run set, appended as one line (JSON Lines).

Each line is written with a single write() on a file opened for appending, so a reader never sees
half a record, and records from earlier runs are never rewritten.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any

from gh200 import __version__
from gh200.bench.smoke import RunSet
from gh200.errors import BadInput
from gh200.paths import state_dir

RECORD_KIND = "gh200.smoke"
RECORD_VERSION = 1


def default_results_path() -> Path:
    return state_dir() / "results" / "smoke.jsonl"


def host_info() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def make_record(run_set: RunSet, context: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The record of one run set. `context` carries profile, image, model revision, url, engine."""
    plan = run_set.plan
    return {
        "record": RECORD_KIND,
        "version": RECORD_VERSION,
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_id": run_id,
        "bundle_version": __version__,
        "host": host_info(),
        **context,
        "shape": plan.shape,
        "label": plan.label,
        "kind": plan.kind,
        "input_tokens": plan.input_tokens,
        "output_tokens": plan.output_tokens,
        "concurrency": plan.concurrency,
        "warm": plan.warm,
        "planned_runs": run_set.planned_runs,
        "complete": run_set.complete,
        "error": run_set.error,
        "error_kind": run_set.error_kind,
        "summary": run_set.summary().as_json(),
        "runs": [run.as_json() for run in run_set.runs],
    }


def check_results_path(path: Path) -> Path:
    """Refuse, before any benchmark runs, a results path that could not be appended to."""
    if path.is_dir():
        raise BadInput(
            f"--results {path} is a directory", f"pass a file path, e.g. --results {path / 'smoke.jsonl'}"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise BadInput(f"--results {path} is not writable", "pass --results PATH somewhere writable")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise BadInput(
            f"--results {path}: {ancestor} is not a directory", "pass --results PATH under a directory"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise BadInput(
            f"--results {path}: {ancestor} is not writable", "pass --results PATH somewhere writable"
        )
    return path


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    if not records:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as err:
        raise BadInput(
            f"cannot write results to {path}: {err.strerror}", "pass --results PATH somewhere writable"
        ) from err
    try:
        for record in records:
            line = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str) + "\n"
            os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record in a results file (lines of other kinds or newer versions are skipped)."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("record") == RECORD_KIND and record.get("version") == RECORD_VERSION:
            out.append(record)
    return out
