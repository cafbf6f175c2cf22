"""Run the shipped testinfra suite (tests/host) against inventory hosts or this machine.

The suite runs in a pytest subprocess with its own configuration (tests/host/pytest.ini); its
conftest writes one JSON line per check to a report file, which this module follows for the
progress display and reads back for the table and the JSON result.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from gh200.errors import BadInput, OperationFailed
from gh200.paths import ansible_dir, bundle_root

# What --only selects, as a pytest marker expression.
SELECTIONS = {
    "all": None,
    "config": "config",
    "hardware": "gpu or gh200",
    "gpu": "gpu",
    "gh200": "gh200",
}


class VerifyInputError(BadInput):
    """An inventory, expectation file or option the suite cannot run with."""


class VerifyFailed(OperationFailed):
    """Checks failed, or the suite itself could not run."""


@dataclass
class SuiteResult:
    target: str
    rc: int
    seconds: float
    checks: list[dict[str, Any]] = field(default_factory=list)
    collected: int = 0
    output_tail: str = ""

    def count(self, outcome: str) -> int:
        return sum(1 for c in self.checks if c["outcome"] == outcome)

    @property
    def ok(self) -> bool:
        return self.rc in (0,) and not self.count("failed") and not self.count("error") and bool(self.checks)

    def summary(self) -> dict[str, int]:
        return {k: self.count(k) for k in ("passed", "failed", "skipped", "error")}

    def hosts(self) -> list[str]:
        return sorted({c["host"] for c in self.checks})

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            # Verification never changes a host; Ansible's verify play relies on this field.
            "changed": False,
            "target": self.target,
            "hosts": self.hosts(),
            "summary": self.summary(),
            "seconds": round(self.seconds, 1),
            "checks": self.checks,
        }


def suite_dir() -> Path:
    path = bundle_root() / "tests" / "host"
    if not (path / "conftest.py").is_file():
        raise VerifyFailed(f"the host suite is missing from {path}", "reinstall the bundle (gh200 provision)")
    return path


def check_args(*, inventory: Path | None, local: bool, only: str, expect: list[Path]) -> None:
    """Refuse bad input before anything runs."""
    if inventory is None and not local:
        raise VerifyInputError("nothing to verify", "pass --inventory INV, or --local for this machine")
    if inventory is not None and local:
        raise VerifyInputError("--inventory and --local exclude each other", "pick one")
    if only not in SELECTIONS:
        raise VerifyInputError(f"--only {only!r} is not a selection", f"use one of {', '.join(SELECTIONS)}")
    if inventory is not None and not inventory.exists():
        raise VerifyInputError(f"inventory {inventory} does not exist", "check the path")
    if expect:
        check_expect_files(expect)


def _expectations() -> ModuleType:
    """The suite's own reader of expectation files (tests/host/gh200_expectations.py).

    Loaded by path: the suite runs on hosts without this package, so the reader lives with it,
    and `gh200 verify` uses the same one to refuse a bad file before any host is contacted.
    """
    path = suite_dir() / "gh200_expectations.py"
    spec = importlib.util.spec_from_file_location("gh200_host_expectations", path)
    if spec is None or spec.loader is None:
        raise VerifyFailed(f"cannot load {path}", "reinstall the bundle (gh200 provision)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_expect_files(paths: list[Path]) -> None:
    """Each --expect file exists, is YAML, is a mapping and names only variables the suite knows."""
    reader = _expectations()
    known = set(reader.role_defaults())
    for path in paths:
        try:
            reader.read_expect_file(path, known)
        except reader.ExpectationError as err:
            raise VerifyInputError(err.message, err.fix) from None


def build_command(
    *,
    inventory: Path | None,
    local: bool,
    limit: str | None,
    expect: list[Path],
    only: str,
    report: Path,
    extra: list[str] | None = None,
) -> list[str]:
    check_args(inventory=inventory, local=local, only=only, expect=expect)
    cmd = [sys.executable, "-m", "pytest", str(suite_dir()), "-q", "--no-header", "-rN", "-p", "no:randomly"]
    if inventory is not None:
        cmd += [f"--hosts=ansible://{limit or 'all'}", f"--ansible-inventory={inventory.resolve()}"]
    else:
        cmd += ["--hosts=local://"]
    for path in expect:
        cmd += ["--gh200-expect", str(path.resolve())]
    marker = SELECTIONS[only]
    if marker:
        cmd += ["-m", marker]
    cmd += ["--gh200-report", str(report)]
    return cmd + list(extra or [])


def _read_report(path: Path) -> tuple[int, list[dict[str, Any]]]:
    collected = 0
    checks: list[dict[str, Any]] = []
    if not path.exists():
        return 0, checks
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if "collected" in row:
            collected = int(row["collected"])
        else:
            checks.append(row)
    return collected, checks


def run_suite(
    *,
    inventory: Path | None = None,
    local: bool = False,
    limit: str | None = None,
    expect: list[Path] | None = None,
    only: str = "all",
    on_progress: Callable[[int, int, dict[str, Any] | None], None] | None = None,
    timeout: float = 1800,
) -> SuiteResult:
    """Run the suite; `on_progress(done, total, last_check)` follows it while it runs."""
    with tempfile.TemporaryDirectory(prefix="gh200-verify-") as tmp:
        report = Path(tmp) / "report.jsonl"
        cmd = build_command(
            inventory=inventory, local=local, limit=limit, expect=expect or [], only=only, report=report
        )
        env = dict(os.environ)
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}"  # ansible-inventory, from this venv
        env.setdefault("ANSIBLE_CONFIG", str(ansible_dir() / "ansible.cfg"))
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        log = Path(tmp) / "pytest.log"
        started = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=suite_dir())
            seen = 0
            while True:
                try:
                    rc = proc.wait(timeout=0.3)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() - started > timeout:
                        proc.kill()
                        raise VerifyFailed(
                            f"the host suite ran past {timeout:.0f}s", "check the hosts answer"
                        ) from None
                if on_progress:
                    total, checks = _read_report(report)
                    if len(checks) != seen or not seen:
                        seen = len(checks)
                        on_progress(seen, total, checks[-1] if checks else None)
        collected, checks = _read_report(report)
        tail = log.read_text(errors="replace")[-4000:]
    target = f"ansible://{limit or 'all'} ({inventory})" if inventory is not None else "local://"
    result = SuiteResult(
        target=target,
        rc=rc,
        seconds=time.monotonic() - started,
        checks=checks,
        collected=collected,
        output_tail=tail,
    )
    if on_progress:
        on_progress(len(checks), collected, checks[-1] if checks else None)
    if rc == 5 and not checks:
        raise VerifyInputError(f"no check selected on {target} (--only {only})", "widen --only")
    if rc not in (0, 1):
        last = " ".join(tail.strip().splitlines()[-3:])[-500:]
        raise VerifyFailed(
            f"the host suite could not run on {target} (pytest exit {rc}): {last}", "see the output"
        )
    return result


def failure_message(result: SuiteResult) -> str:
    bad = [c for c in result.checks if c["outcome"] in ("failed", "error")]
    if not bad:
        return f"no check reported a result on {result.target} (pytest exit {result.rc})"
    first = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return f"{len(bad)} check(s) failed: {first['host']}: {first['check']}: {first['detail']}{more}"
