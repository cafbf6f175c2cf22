"""Accepted baselines of this host: one plain JSON file per host, profile and shape.

Layout: `<state>/baselines/<host>/<profile>/<shape>-c<concurrency>.json`, each holding the accepted
run set's whole results record (its runs too: the gate compares runs, not medians), when it was
accepted and from where. Files are written to a temporary sibling and renamed; every check on the
input happens before the first write, so a refused `accept` leaves the directory as it was.

A RUN names a run set by the benchmark's run id (or a unique prefix of it, or `latest`) in a results
file, or by the path of a results file holding exactly one run.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gh200.baseline.facts import fact_changes
from gh200.baseline.gate import MIN_RUNS, Verdict, compare_runs
from gh200.bench.results import default_results_path, read_records
from gh200.errors import BadInput, OperationFailed
from gh200.fsutil import atomic_write_text, file_lock
from gh200.paths import state_dir

BASELINE_KIND = "gh200.baseline"
BASELINE_VERSION = 1
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
RUN_ID_RE = re.compile(r"^[0-9a-f]{4,32}$")


class BaselineCorrupt(OperationFailed):
    """A baseline file exists but cannot be read as one."""


class GateRegression(OperationFailed):
    """A run set is slower than this host's accepted baseline."""


def baselines_dir() -> Path:
    return state_dir() / "baselines"


def this_host() -> str:
    return socket.gethostname()


def set_key(shape: str, concurrency: int) -> str:
    """`2048:512` at c1 -> `2048-512-c1`; `real:256` -> `real-256-c1` (a file name)."""
    return f"{shape.replace(':', '-')}-c{concurrency}"


def record_host(record: dict[str, Any]) -> str:
    host = record.get("host")
    name = host.get("hostname") if isinstance(host, dict) else None
    return str(name) if name else "unknown-host"


# --- finding a run ------------------------------------------------------------------------------------


def _run_ids(records: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        seen.setdefault(str(record.get("run_id")), None)
    return list(seen)


def resolve_run(run: str, results: Path | None = None, profile: str | None = None) -> list[dict[str, Any]]:
    """The records (one per shape) of the run set RUN names; BadInput when it names none or several."""
    path = Path(run).expanduser()
    if path.is_file():
        records = read_records(path)
        ids = _run_ids(records)
        if not ids:
            raise BadInput(
                f"{path} holds no gh200 smoke records", "pass a results file written by `gh200 smoke`"
            )
        if len(ids) > 1:
            raise BadInput(
                f"{path} holds {len(ids)} runs ({', '.join(ids[:4])}{', ...' if len(ids) > 4 else ''})",
                f"name one: gh200 baseline accept RUN_ID --results {path}",
            )
        return records
    source = results or default_results_path()
    records = read_records(source)
    if profile is not None:
        records = [r for r in records if r.get("profile") == profile]
    if not records:
        where = f" for profile {profile}" if profile else ""
        raise BadInput(
            f"no recorded runs{where} in {source}", "run `gh200 smoke PROFILE` first, or pass --results"
        )
    if run == "latest":
        chosen = _run_ids(records)[-1]
    else:
        if not RUN_ID_RE.match(run):
            raise BadInput(
                f"RUN {run!r} is neither a results file nor a run id",
                "pass a run id (see `gh200 report` or the smoke output), `latest`, or a results file",
            )
        matches = [i for i in _run_ids(records) if i.startswith(run)]
        if not matches:
            raise BadInput(f"no run {run} in {source}", "check the run id, or pass --results FILE")
        if len(matches) > 1:
            raise BadInput(f"run id prefix {run} matches {len(matches)} runs", "give more of the run id")
        chosen = matches[0]
    return [r for r in records if r.get("run_id") == chosen]


# --- baselines ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    path: Path
    host: str
    profile: str
    shape: str
    concurrency: int
    run_id: str
    accepted: str
    source: str | None
    record: dict[str, Any]

    @property
    def runs(self) -> list[dict[str, Any]]:
        runs = self.record.get("runs")
        return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []

    def median(self, metric: str) -> float | None:
        summary = self.record.get("summary") or {}
        stats = summary.get(metric) if isinstance(summary, dict) else None
        value = stats.get("median") if isinstance(stats, dict) else None
        return float(value) if isinstance(value, int | float) else None

    def as_json(self, with_record: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": str(self.path),
            "host": self.host,
            "profile": self.profile,
            "shape": self.shape,
            "concurrency": self.concurrency,
            "run_id": self.run_id,
            "accepted": self.accepted,
            "recorded": self.record.get("time"),
            "source": self.source,
            "image": self.record.get("image"),
            "runs": len(self.runs),
            "medians": {m: self.median(m) for m in ("output_tok_s", "tpot_ms", "ttft_ms", "acceptance")},
        }
        if with_record:
            out["record"] = self.record
        return out


def baseline_path(host: str, profile: str, shape: str, concurrency: int) -> Path:
    return baselines_dir() / host / profile / f"{set_key(shape, concurrency)}.json"


def check_acceptable(records: list[dict[str, Any]], host: str) -> None:
    """Every reason a run cannot become a baseline, raised before anything is written."""
    run_id = str(records[0].get("run_id"))
    for record in records:
        label = f"run {run_id} set {record.get('label') or record.get('shape')}"
        profile = record.get("profile")
        if not profile:
            raise BadInput(
                f"{label} benchmarked a URL, not a profile", "accept runs of `gh200 smoke PROFILE`"
            )
        if not SAFE_NAME.match(str(profile)):
            raise BadInput(
                f"{label} names profile {profile!r}, not a usable name", "rerun with a valid profile"
            )
        if record.get("error") or not record.get("complete"):
            raise BadInput(
                f"{label} stopped early ({record.get('error') or 'incomplete'})",
                "rerun the benchmark to completion and accept that run",
            )
        warm = [r for r in record.get("runs") or [] if isinstance(r, dict) and not r.get("cold")]
        if len(warm) < MIN_RUNS:
            raise BadInput(
                f"{label} has {len(warm)} warm runs; the gate needs at least {MIN_RUNS}",
                "rerun with --warm 10 (the posts' one cold + 10 warm)",
            )
        if record_host(record) != host:
            raise BadInput(
                f"{label} was recorded on {record_host(record)}, not on this host ({host})",
                "a baseline is this host's own: accept a run measured here",
            )
    if not SAFE_NAME.match(host):
        raise BadInput(f"host name {host!r} cannot name a directory", "set a plain host name")


def accept(
    records: list[dict[str, Any]], source: str | None = None, host: str | None = None
) -> list[Baseline]:
    """Make each set of the run this host's baseline for its profile and shape (replacing older ones)."""
    host = host or this_host()
    if not records:
        raise BadInput("no run sets to accept", "name a run with sets")
    check_acceptable(records, host)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    written: list[Baseline] = []
    with file_lock(baselines_dir() / ".lock"):
        for record in records:
            profile, shape, concurrency = (
                str(record["profile"]),
                str(record["shape"]),
                int(record["concurrency"]),
            )
            path = baseline_path(host, profile, shape, concurrency)
            doc = {
                "kind": BASELINE_KIND,
                "version": BASELINE_VERSION,
                "host": host,
                "profile": profile,
                "shape": shape,
                "concurrency": concurrency,
                "run_id": str(record.get("run_id")),
                "accepted": now,
                "source": source,
                "record": record,
            }
            atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n", 0o644)
            written.append(_from_doc(path, doc))
    return written


def _from_doc(path: Path, doc: dict[str, Any]) -> Baseline:
    return Baseline(
        path=path,
        host=str(doc["host"]),
        profile=str(doc["profile"]),
        shape=str(doc["shape"]),
        concurrency=int(doc["concurrency"]),
        run_id=str(doc["run_id"]),
        accepted=str(doc["accepted"]),
        source=doc.get("source"),
        record=dict(doc["record"]),
    )


def load_baseline(path: Path) -> Baseline:
    try:
        doc = json.loads(path.read_text())
        if doc.get("kind") != BASELINE_KIND or doc.get("version") != BASELINE_VERSION:
            raise ValueError(f"kind {doc.get('kind')!r} version {doc.get('version')!r}")
        return _from_doc(path, doc)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise BaselineCorrupt(
            f"baseline {path} cannot be read ({err})", "delete it and accept a run again"
        ) from err


def iter_baselines(host: str | None = None, profile: str | None = None) -> Iterator[Baseline]:
    root = baselines_dir() / (host or this_host())
    if not root.is_dir():
        return
    dirs = [root / profile] if profile else sorted(p for p in root.iterdir() if p.is_dir())
    for directory in dirs:
        if directory.is_dir():
            for path in sorted(directory.glob("*.json")):
                yield load_baseline(path)


def find_baseline(host: str, profile: str, shape: str, concurrency: int) -> Baseline | None:
    path = baseline_path(host, profile, shape, concurrency)
    return load_baseline(path) if path.is_file() else None


def check_run(
    records: list[dict[str, Any]], host: str | None = None, min_effect: dict[str, float] | None = None
) -> list[Verdict]:
    """The gate's verdict for each set of a run against this host's baselines."""
    host = host or this_host()
    verdicts: list[Verdict] = []
    for record in records:
        profile, shape, concurrency = (
            str(record.get("profile")),
            str(record.get("shape")),
            int(record.get("concurrency") or 1),
        )
        base = find_baseline(host, profile, shape, concurrency) if record.get("profile") else None
        if base is None:
            verdicts.append(
                Verdict(
                    profile, shape, concurrency, "insufficient", reason="no accepted baseline for this shape"
                )
            )
            continue
        verdicts.append(
            compare_runs(
                base.runs,
                [r for r in record.get("runs") or [] if isinstance(r, dict)],
                profile=profile,
                shape=shape,
                concurrency=concurrency,
                min_effect=min_effect,
                changes=fact_changes(base.record, record),
            )
        )
    return verdicts
