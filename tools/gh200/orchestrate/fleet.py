"""Fleets: `gh200 rollout` (or `gh200 upgrade vllm`) host by host, stopping at the first regression.

`run_fleet` checks the input, runs ansible/playbooks/upgrade.yml through the provisioning runner
(ansible-runner, `serial: 1`), and reads back the JSON each host's rollout printed, which the
playbook keeps on the controller (<results>/<host>.json). `summarize` turns those files plus the
inventory's host order into the fleet's summary: which hosts passed, were accepted, regressed
(metric, change, what changed between the records) or failed, and which were never attempted
because the fleet stopped before them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gh200.errors import BadInput, Gh200Error, OperationFailed
from gh200.paths import ansible_dir, state_dir

PLAYBOOK = "upgrade"
GROUP = "gh200"
VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+(\.[0-9]+)?([.+-]?[0-9A-Za-z]+)*$")

# A rollout's outcome (`gh200 rollout --json`) -> the fleet's word for the host.
ROLLOUT_OUTCOMES = {
    "passed": "passed",
    "no_baseline": "passed",
    "accepted": "accepted",
    "rolled_back": "regressed",
    "failed": "failed",
}
# The fleet's words, in the order the summary counts them.
FLEET_OUTCOMES = ("passed", "accepted", "regressed", "failed", "not_attempted")


class FleetInputError(BadInput):
    """An inventory, profile or version the fleet run cannot start with."""


class FleetStopped(Gh200Error):
    """The fleet stopped at a host whose rollout regressed and rolled itself back. Exit code 3."""

    exit_code = 3


class FleetFailed(OperationFailed):
    """A host's rollout failed (or the playbook did): the fleet stopped there. Exit code 1."""


@dataclass
class HostOutcome:
    """One inventory host's part in the fleet run."""

    host: str
    outcome: str  # one of FLEET_OUTCOMES
    message: str = ""
    rollout_outcome: str | None = None  # the host's own word (passed, no_baseline, rolled_back, ...)
    rc: int | None = None
    run_id: str | None = None
    baseline_run_id: str | None = None
    restored: Any = None
    regressions: list[dict[str, Any]] = field(default_factory=list)
    changes: dict[str, Any] = field(default_factory=dict)
    result_file: str | None = None
    changed: bool = False


@dataclass
class FleetSummary:
    action: str
    target: str  # the profile, or the vLLM version
    hosts: list[HostOutcome]
    results_dir: str
    artifacts_dir: str = ""
    seconds: float = 0.0
    playbook_rc: int = 0

    @property
    def stopped_at(self) -> HostOutcome | None:
        return next((h for h in self.hosts if h.outcome in ("regressed", "failed")), None)

    @property
    def changed(self) -> bool:
        return any(h.changed for h in self.hosts)

    def counts(self) -> dict[str, int]:
        return {name: sum(1 for h in self.hosts if h.outcome == name) for name in FLEET_OUTCOMES}

    def exit_code(self) -> int:
        stop = self.stopped_at
        if stop is not None:
            return 3 if stop.outcome == "regressed" else 1
        return 0

    def as_json(self) -> dict[str, Any]:
        stop = self.stopped_at
        return {
            "changed": self.changed,
            "action": self.action,
            "target": self.target,
            "outcome": "stopped" if stop else "completed",
            "stopped_at": stop.host if stop else None,
            "stopped_because": stop.outcome if stop else None,
            "counts": self.counts(),
            "hosts": [asdict(h) for h in self.hosts],
            "results_dir": self.results_dir,
            "artifacts_dir": self.artifacts_dir,
            "seconds": round(self.seconds, 1),
        }


# --- input ------------------------------------------------------------------------------------------


def inventory_hosts(inventory: Path, group: str = GROUP) -> list[str]:
    """The group's hosts in the order `serial: 1` visits them (`ansible GROUP --list-hosts`)."""
    from gh200.provision.runner import check_inventory

    inv = check_inventory(inventory)
    tool = Path(sys.executable).parent / "ansible"
    done = subprocess.run(
        [str(tool if tool.exists() else "ansible"), group, "-i", str(inv), "--list-hosts"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_CONFIG": str(ansible_dir() / "ansible.cfg")},
    )
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines or not lines[0].strip().startswith("hosts ("):
        detail = " ".join((done.stderr or done.stdout).split())[-300:]
        raise FleetInputError(f"inventory {inventory} cannot be read: {detail}", "fix the inventory file")
    hosts = [line.strip() for line in lines[1:] if line.strip()]
    if not hosts:
        raise FleetInputError(
            f"inventory {inventory} has no hosts in group {group!r}",
            f"put the workstations under `{group}:` (see ansible/inventory/example)",
        )
    return hosts


def check_profile(profile: str) -> str:
    """The profile must load on the controller (by name in the bundle's profiles/, or a path)."""
    from gh200.profiles.loader import load_profile

    return load_profile(profile).name


def rollout_args(shape: str | None, warm: int | None) -> list[str]:
    """--shape and --warm for every host's rollout, checked here so no host fails on them."""
    from gh200.baseline.gate import MIN_RUNS
    from gh200.bench.smoke import parse_shapes

    args: list[str] = []
    if shape is not None:
        (pair,) = parse_shapes([shape])
        args += ["--shape", f"{pair[0]}:{pair[1]}"]
    if warm is not None:
        if warm < MIN_RUNS:
            raise FleetInputError(
                f"--warm {warm}: the gate compares warm runs and needs at least {MIN_RUNS}", "pass --warm 10"
            )
        args += ["--warm", str(warm)]
    return args


def check_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version):
        raise FleetInputError(f"vLLM version {version!r} is not a version number", "write it as 0.33.1")
    return version


# --- summary ----------------------------------------------------------------------------------------


def _regressions(result: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(result.get("regressions") or [])
    for inner in result.get("rollouts") or []:
        if isinstance(inner, dict):
            found += list(inner.get("regressions") or [])
    return found


def _changes(result: dict[str, Any]) -> dict[str, Any]:
    found = dict(result.get("changes") or {})
    for inner in result.get("rollouts") or []:
        if isinstance(inner, dict):
            found.update(inner.get("changes") or {})
    return found


def _outcome_word(result: dict[str, Any], rc: int) -> str | None:
    """The host's own outcome: a rollout's `outcome`, or for an upgrade the worst of its rollouts."""
    word = result.get("outcome")
    if isinstance(word, str) and word in ROLLOUT_OUTCOMES:
        return word
    inner = [r.get("outcome") for r in result.get("rollouts") or [] if isinstance(r, dict)]
    for worst in ("failed", "rolled_back", "accepted", "passed", "no_baseline"):
        if worst in inner:
            return worst
    if rc == 0:
        return "passed"
    return {3: "rolled_back"}.get(rc, "failed")


def host_outcome(host: str, record: dict[str, Any], path: Path) -> HostOutcome:
    """One host's outcome from the record the playbook kept ({host, rc, argv, result, stderr})."""
    rc = int(record.get("rc", 1))
    result = record.get("result") if isinstance(record.get("result"), dict) else None
    if result is None:
        stderr = " ".join(str(record.get("stderr") or "").split())
        return HostOutcome(
            host=host,
            outcome="failed",
            message=stderr[-300:] or f"exit {rc} and no JSON result",
            rc=rc,
            result_file=str(path),
        )
    word = _outcome_word(result, rc)
    outcome = ROLLOUT_OUTCOMES.get(word or "", "failed")
    # The exit code is the contract: a rollout that says "passed" but exited 3 regressed.
    if rc == 3:
        outcome = "regressed"
    elif rc != 0:
        outcome = "failed"
    return HostOutcome(
        host=host,
        outcome=outcome,
        message=str(result.get("message") or ""),
        rollout_outcome=word,
        rc=rc,
        run_id=result.get("run_id"),
        baseline_run_id=result.get("baseline_run_id"),
        restored=result.get("restored"),
        regressions=_regressions(result),
        changes=_changes(result),
        result_file=str(path),
        changed=bool(result.get("changed")),
    )


def summarize(
    action: str,
    target: str,
    hosts: list[str],
    results_dir: Path,
    failed_tasks: dict[str, str] | None = None,
) -> FleetSummary:
    """The fleet's summary: each inventory host from its kept JSON, or from the playbook's failure
    (unreachable, failed before the command), or not attempted."""
    failed_tasks = failed_tasks or {}
    outcomes: list[HostOutcome] = []
    for host in hosts:
        path = results_dir / f"{host}.json"
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                outcomes.append(HostOutcome(host, "failed", f"result file {path} unreadable: {err}"))
                continue
            outcomes.append(host_outcome(host, record, path))
        elif host in failed_tasks:
            outcomes.append(HostOutcome(host, "failed", failed_tasks[host]))
        else:
            outcomes.append(HostOutcome(host, "not_attempted", "the fleet stopped before this host"))
    # A host whose record is missing after a stop is not attempted only if it comes after the stop.
    stop = next((i for i, h in enumerate(outcomes) if h.outcome in ("regressed", "failed")), None)
    if stop is None:
        for h in outcomes:
            if h.outcome == "not_attempted":
                h.message = "the playbook never reached this host"
    return FleetSummary(action=action, target=target, hosts=outcomes, results_dir=str(results_dir))


def describe_regression(reg: dict[str, Any]) -> str:
    """`output_tok_s 2048x512 c1: 43.1 -> 38.2 (-11.4%)`."""
    shape = reg.get("shape")
    conc = reg.get("concurrency")
    where = " ".join(str(p) for p in (shape, f"c{conc}" if conc is not None else None) if p)
    change = reg.get("change_pct")
    pct = f" ({float(change):+.1f}%)" if isinstance(change, int | float) else ""

    def num(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, int | float) else str(value)

    return (
        f"{reg.get('metric', '?')}{' ' + where if where else ''}: "
        f"{num(reg.get('baseline_median'))} -> {num(reg.get('new_median'))}{pct}"
    )


def describe_changes(changes: dict[str, Any]) -> str:
    parts = []
    for fact, pair in sorted(changes.items()):
        if isinstance(pair, list | tuple) and len(pair) == 2:
            parts.append(f"{fact}: {pair[0]} -> {pair[1]}")
        else:
            parts.append(f"{fact}: {pair}")
    return "; ".join(parts)


# --- the run ----------------------------------------------------------------------------------------


def default_results_dir(action: str) -> Path:
    return state_dir() / "fleet" / f"{time.strftime('%Y%m%dT%H%M%S')}-{action}"


def run_fleet(
    inventory: Path,
    action: str,
    *,
    profile: str | None = None,
    version: str | None = None,
    accept: bool = False,
    image: str | None = None,
    shape: str | None = None,
    warm: int | None = None,
    min_effect: float | str | None = None,
    results_dir: Path | None = None,
    artifacts: Path | None = None,
    extra_vars: dict[str, Any] | None = None,
    on_result: Callable[[Any], None] | None = None,
) -> FleetSummary:
    """Check the input (exit 2 before Ansible runs), run the playbook, summarize the hosts.
    `min_effect`: the gate's floor every host's rollout or upgrade uses (`--min-effect`)."""
    from gh200.baseline.gate import check_min_effect
    from gh200.provision.runner import run_playbook

    # repr keeps the float exact as text; the role passes --min-effect only when the variable is set.
    floor = None if min_effect is None else repr(check_min_effect(min_effect))
    if action == "rollout":
        if not profile:
            raise FleetInputError("a fleet rollout needs a profile", "gh200 fleet rollout PROFILE -i INV")
        target = check_profile(profile)
        variables: dict[str, Any] = {
            "gh200_fleet_action": "rollout",
            "gh200_fleet_profile": profile,
            "gh200_fleet_accept": accept,
            "gh200_fleet_image": image or "",
            "gh200_fleet_rollout_args": rollout_args(shape, warm),
        }
    elif action == "upgrade":
        target = check_version(version or "")
        variables = {"gh200_fleet_action": "upgrade", "gh200_fleet_vllm_version": target}
    else:
        raise FleetInputError(f"unknown fleet action {action!r}", "use rollout or upgrade")
    hosts = inventory_hosts(inventory)
    out = (results_dir or default_results_dir(action)).resolve()
    if out.exists() and any(out.iterdir()):
        raise FleetInputError(f"results directory {out} is not empty", "name a new directory")
    out.mkdir(parents=True, exist_ok=True)
    variables["gh200_fleet_results_dir"] = str(out)
    if floor is not None:
        # Only when given: extra vars override the inventory, where a host's own floor may be set.
        variables["gh200_fleet_min_effect"] = floor
    variables.update(extra_vars or {})
    run = run_playbook(
        inventory,
        PLAYBOOK,
        extra_vars=[json.dumps(variables)],
        artifacts=artifacts,
        ident=f"{out.name}-{PLAYBOOK}",
        on_result=on_result,
    )
    failed: dict[str, str] = {}
    for task in run.failed_tasks():
        failed.setdefault(task.host, f"{task.label()}: {task.message}" if task.message else task.label())
    summary = summarize(action, target, hosts, out, failed)
    summary.artifacts_dir = run.artifacts_dir
    summary.seconds = run.seconds
    summary.playbook_rc = run.rc
    if summary.stopped_at is None and not run.ok:
        # The playbook failed where no host's rollout did (a syntax error, a lost connection).
        from gh200.provision.runner import failure_message

        raise FleetFailed(failure_message(run), f"see {run.artifacts_dir}")
    return summary


def raise_for(summary: FleetSummary) -> None:
    """Exit 3 when the fleet stopped on a regression, 1 when it stopped on a failure."""
    stop = summary.stopped_at
    if stop is None:
        return
    skipped = [h.host for h in summary.hosts if h.outcome == "not_attempted"]
    left = f"; not attempted: {', '.join(skipped)}" if skipped else ""
    if stop.outcome == "regressed":
        moved = "; ".join(describe_regression(r) for r in stop.regressions[:3]) or stop.message
        raise FleetStopped(
            f"fleet stopped at {stop.host}: it regressed and was rolled back ({moved}){left}",
            f"see {stop.result_file}",
        )
    raise FleetFailed(f"fleet stopped at {stop.host}: {stop.message}{left}", f"see {summary.results_dir}")
