"""Run the bundle's playbooks through ansible-runner: a line per task result, a summary per host.

`run_playbook` runs one playbook and returns what happened (per-host counts from the runner's
stats, the tasks that changed or failed, where the artifacts are). `provision` adds the
idempotence check: a second run right after the first must change nothing.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gh200.errors import BadInput, OperationFailed
from gh200.paths import ansible_dir, state_dir

PLAYBOOKS = ("provision", "site", "images", "models", "deploy", "verify")

# Runner events that carry one task's result on one host.
RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_skipped": "skipped",
    "runner_on_unreachable": "unreachable",
}


class ProvisionInputError(BadInput):
    """An inventory, playbook or option the run cannot start with."""


class ProvisionFailed(OperationFailed):
    """A playbook run failed, or an idempotence check found changes."""


class PinRefused(BadInput):
    """The driver pin cannot be installed with the kernel's modules; refused before any change."""


# Tasks whose failure is a refusal of the inventory's settings, made before the host changed:
# `gh200 provision` reports them as bad input (exit 2), not as a failed operation.
REFUSAL_TASKS = {"Refuse a driver pin apt cannot install"}
# The debug task whose message is the one-line "reboot pending" of the summary.
REBOOT_PENDING_TASK = "Report a pending reboot"


@dataclass
class TaskResult:
    """One task's result on one host, as the runner reported it."""

    host: str
    task: str
    role: str
    status: str  # ok, changed, failed, skipped, unreachable, ignored
    message: str = ""

    def label(self) -> str:
        return f"{self.role} : {self.task}" if self.role else self.task


@dataclass
class HostSummary:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


@dataclass
class RunResult:
    playbook: str
    status: str
    rc: int
    artifacts_dir: str
    seconds: float
    hosts: dict[str, HostSummary] = field(default_factory=dict)
    results: list[TaskResult] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(h.changed for h in self.hosts.values())

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not any(h.failed or h.unreachable for h in self.hosts.values())

    def changed_tasks(self) -> list[TaskResult]:
        return [r for r in self.results if r.status == "changed"]

    def failed_tasks(self) -> list[TaskResult]:
        return [r for r in self.results if r.status in ("failed", "unreachable")]

    def reboot_pending(self) -> dict[str, str]:
        """Hosts that need a reboot this run could not do, with what the next run will do."""
        return {
            r.host: r.message
            for r in self.results
            if r.task == REBOOT_PENDING_TASK and r.status == "ok" and r.message
        }

    def refused(self) -> TaskResult | None:
        """The refusal (bad input, host unchanged) that stopped this run, if one did."""
        failed = self.failed_tasks()
        return failed[0] if failed and failed[0].task in REFUSAL_TASKS else None

    def as_json(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook,
            "status": self.status,
            "rc": self.rc,
            "ok": self.ok,
            "changed": self.changed,
            "seconds": round(self.seconds, 1),
            "artifacts_dir": self.artifacts_dir,
            "hosts": {name: asdict(summary) for name, summary in sorted(self.hosts.items())},
            "changed_tasks": [asdict(r) for r in self.changed_tasks()],
            "failed_tasks": [asdict(r) for r in self.failed_tasks()],
            "reboot_pending": self.reboot_pending(),
        }


def classify(event: dict[str, Any]) -> TaskResult | None:
    """Turn a runner event into a task result, or None for events that are not task results."""
    kind = RESULT_EVENTS.get(str(event.get("event", "")))
    if kind is None:
        return None
    data = event.get("event_data") or {}
    res = data.get("res") or {}
    status = kind
    if kind == "ok" and res.get("changed"):
        status = "changed"
    if kind == "failed" and data.get("ignore_errors"):
        status = "ignored"
    message = ""
    if status in ("failed", "unreachable", "ignored"):
        message = str(res.get("msg") or res.get("reason") or "").strip()
        stderr = str(res.get("stderr") or "").strip()
        if stderr and stderr not in message:
            # "non-zero return code" alone says nothing: the command's own words follow it.
            message = f"{message}: {stderr[-300:]}" if message else stderr[-300:]
        message = " ".join(message.split())[:500]
    elif status == "skipped" and res.get("skip_reason"):
        message = str(res.get("skip_reason"))
    elif str(data.get("task_action", "")).endswith("debug") and res.get("msg"):
        # The roles explain every step they leave out (no systemd, no boot loader, ...) this way.
        message = " ".join(str(res.get("msg")).split())[:500]
    return TaskResult(
        host=str(data.get("host", "?")),
        task=str(data.get("task", "?")).strip(),
        role=str(data.get("role") or ""),
        status=status,
        message=message,
    )


def summarize(stats: dict[str, dict[str, int]] | None) -> dict[str, HostSummary]:
    """Per-host counts from ansible-runner's stats (the playbook_on_stats event)."""
    keys = {
        "ok": "ok",
        "changed": "changed",
        "failures": "failed",
        "dark": "unreachable",
        "skipped": "skipped",
        "rescued": "rescued",
        "ignored": "ignored",
    }
    hosts: dict[str, HostSummary] = {}
    for stat, attr in keys.items():
        for host, count in ((stats or {}).get(stat) or {}).items():
            summary = hosts.setdefault(host, HostSummary())
            setattr(summary, attr, int(count))
    return hosts


def resolve_playbook(name: str) -> Path:
    """A playbook of the bundle by name (provision, site, ...) or a path to one."""
    as_path = Path(name)
    if as_path.suffix in (".yml", ".yaml") and as_path.is_file():
        return as_path.resolve()
    path = ansible_dir() / "playbooks" / f"{name}.yml"
    if not path.is_file():
        raise ProvisionInputError(
            f"no playbook {name!r} in {path.parent}", f"use one of {', '.join(PLAYBOOKS)} or a path to a .yml"
        )
    return path


def check_inventory(inventory: Path) -> Path:
    if not inventory.exists():
        raise ProvisionInputError(
            f"inventory {inventory} does not exist",
            "copy ansible/inventory/example and point --inventory at the copy",
        )
    return inventory.resolve()


def build_cmdline(
    check: bool = False,
    diff: bool = False,
    tags: list[str] | None = None,
    skip_tags: list[str] | None = None,
    extra_vars: list[str] | None = None,
) -> str:
    args: list[str] = []
    if check:
        args.append("--check")
    if diff:
        args.append("--diff")
    if tags:
        args += ["--tags", ",".join(tags)]
    if skip_tags:
        args += ["--skip-tags", ",".join(skip_tags)]
    for item in extra_vars or []:
        if not item or ("=" not in item and not item.startswith(("@", "{"))):
            raise ProvisionInputError(
                f"extra variable {item!r} is neither KEY=VALUE, @FILE nor a JSON object",
                "pass -e name=value, -e @vars.yml or -e '{\"name\": [1, 2]}'",
            )
        args += ["--extra-vars", item]
    return shlex.join(args)


def default_artifacts_dir() -> Path:
    return state_dir() / "provision" / "artifacts"


def run_playbook(
    inventory: Path,
    playbook: str = "provision",
    *,
    check: bool = False,
    diff: bool = False,
    tags: list[str] | None = None,
    skip_tags: list[str] | None = None,
    extra_vars: list[str] | None = None,
    limit: str | None = None,
    artifacts: Path | None = None,
    ident: str | None = None,
    on_result: Callable[[TaskResult], None] | None = None,
    on_play: Callable[[str], None] | None = None,
) -> RunResult:
    """Run one playbook against the inventory and return its results (it does not raise on failure)."""
    import ansible_runner

    inv = check_inventory(inventory)
    book = resolve_playbook(playbook)
    cmdline = build_cmdline(check=check, diff=diff, tags=tags, skip_tags=skip_tags, extra_vars=extra_vars)
    artifacts_root = (artifacts or default_artifacts_dir()).resolve()
    artifacts_root.mkdir(parents=True, exist_ok=True)
    ident = ident or f"{time.strftime('%Y%m%dT%H%M%S')}-{book.stem}"
    private = state_dir() / "provision" / "private"
    private.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    results: list[TaskResult] = []

    def handle(event: dict[str, Any]) -> bool:
        if event.get("event") == "playbook_on_play_start" and on_play:
            on_play(str((event.get("event_data") or {}).get("play", "")))
        result = classify(event)
        if result is not None:
            results.append(result)
            if on_result:
                on_result(result)
        return True

    started = time.monotonic()
    runner = ansible_runner.run(
        private_data_dir=str(private),
        project_dir=str(book.parent),
        playbook=book.name,
        inventory=str(inv),
        limit=limit,
        cmdline=cmdline or None,
        envvars={
            "ANSIBLE_CONFIG": str(ansible_dir() / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            # ansible-playbook and its helpers live beside this interpreter (the venv).
            "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        },
        artifact_dir=str(artifacts_root),
        ident=ident,
        quiet=True,
        suppress_env_files=True,
        event_handler=handle,
    )
    return RunResult(
        playbook=book.stem,
        status=str(runner.status),
        rc=int(runner.rc if runner.rc is not None else 1),
        artifacts_dir=str(artifacts_root / ident),
        seconds=time.monotonic() - started,
        hosts=summarize(runner.stats),
        results=results,
    )


def failure_message(run: RunResult) -> str:
    failed = run.failed_tasks()
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        detail = f": {first.message}" if first.message else ""
        return f"{run.playbook} failed on {first.host} at {first.label()}{detail}{more}"
    return f"{run.playbook} ended {run.status} (rc {run.rc}) with no failed task reported"


def idempotence_message(run: RunResult) -> str:
    changed = run.changed_tasks()
    listed = "; ".join(f"{r.host}: {r.label()}" for r in changed[:8])
    more = f" (and {len(changed) - 8} more)" if len(changed) > 8 else ""
    return f"the second run of {run.playbook} changed {len(changed)} task(s): {listed}{more}"
