"""How right is the baseline gate about noise? Detection and false-alarm rates on the real llama-server.

`make bench-gate` (python -m gh200.baseline.bench_gate). Deploys `local-tiny` variants afresh K times
unchanged and K times slowed (synthetic draft acceptance, `--spec-synth-rates`), alternating so that
the machine's drift falls on both, and measures each deployment once the way the posts did: one
cold + 10 warm runs of one shape. Then every ordered pair of distinct deployments is a trial:

- false alarm: baseline = unchanged deployment i, new = unchanged deployment j;
- known 10% slowdown: baseline = unchanged i, new = unchanged j with every run's decode made
  exactly 10% slower (output tok/s x 0.9, TPOT and ITL / 0.9, TTFT left as measured: a decode
  regression, like the real one below, so detection cannot ride on the noisy prefill metric).
  Redeploying a server that is slower by exactly 10% is not possible on a shared 2-core machine,
  so the slowdown is applied to measured runs: the noise is real deployment-to-deployment noise,
  the amount is known;
- real slowdown: baseline = unchanged i, new = slowed j (its size is measured and printed).

Pairs share deployments, so the trials are not independent; the rates are estimates from K
deployments, printed as counts. No timing is asserted anywhere: this prints ratios. The rates are
those of one run set against a baseline: `gh200 rollout` measures a flagged version once more
(`--confirm`) before rolling it back, which these rates do not include.

`--native "COMMAND"` starts each deployment as a local llama-server process (COMMAND, e.g. the
llama.cpp image's own binary) from the profile's rendered argv instead of a container: for measuring
the rates on a quiet machine that has no container engine. The server, model, flags and client are
the same; only the container around the server is left out.

Each deployment is measured with the same seeded prompts (`--prompts same`, as a rollout measures the
container it just started), so deployments differ by the server, not by the text a draft model
accepts. `--cpus LIST` pins every deployment (container cpuset, or taskset for `--native`) and
`--threads N` overrides the profile's threads: ways to look for the source of the noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gh200.baseline.gate import GATED_METRICS, Verdict, compare_runs, floors

DESCRIPTION = "Detection and false-alarm rates of the baseline gate on local-tiny's real llama-server."
TARGET_DETECTION = 0.95
TARGET_FALSE_ALARMS = 0.05
KNOWN_SLOWDOWN = 0.10
# best_floor searches floors in these steps; --min-effect takes its answer with two decimals.
FLOOR_STEP = 0.01
DEFAULT_SHAPE = (64, 128)
DEFAULT_SYNTH = 0.4
PREFIX = "bgate-"
DEFAULT_BUDGET_MIN = 20.0
RUN_FIELDS = (
    "index",
    "cold",
    "wall_s",
    "output_tokens",
    "output_tok_s",
    "total_tok_s",
    "ttft_ms",
    "tpot_ms",
    "decode_tok_s",
    "server_tpot_ms",
    "acceptance",
)


@dataclass
class Deployment:
    kind: str  # "unchanged" or "slowed"
    index: int
    runs: list[dict[str, Any]]
    seconds: float
    error: str | None = None
    load: float | None = None  # 1-minute load average when its measurement ended

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "index": self.index,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "load": self.load,
            # The scalar figures of each run are what the gate reads; per-request detail is left out.
            "runs": [{k: v for k, v in r.items() if k in RUN_FIELDS} for r in self.runs],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Deployment:
        return cls(
            str(doc["kind"]),
            int(doc["index"]),
            list(doc["runs"]),
            float(doc["seconds"]),
            doc.get("error"),
            doc.get("load"),
        )

    def median(self, metric: str) -> float:
        values = sorted(float(r[metric]) for r in self.runs if not r.get("cold") and r.get(metric))
        if not values:
            return float("nan")
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


@dataclass
class Trials:
    name: str
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def flagged(self) -> int:
        return sum(1 for v in self.verdicts if v.status == "regression")

    @property
    def rate(self) -> float:
        return self.flagged / len(self.verdicts) if self.verdicts else float("nan")

    def by_metric(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.verdicts:
            for c in v.regressions:
                out[c.metric] = out.get(c.metric, 0) + 1
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "trials": len(self.verdicts),
            "flagged": self.flagged,
            "rate": round(self.rate, 4),
            "flagged_by_metric": self.by_metric(),
        }


def slowed_runs(runs: list[dict[str, Any]], slowdown: float) -> list[dict[str, Any]]:
    """The same runs with decode exactly `slowdown` slower: output and total tok/s x (1 - s), TPOT
    and ITL / (1 - s); TTFT (prefill) as measured."""
    keep = 1.0 - slowdown
    out: list[dict[str, Any]] = []
    for run in runs:
        new = dict(run)
        for key in ("output_tok_s", "total_tok_s"):
            if isinstance(new.get(key), int | float):
                new[key] = new[key] * keep
        for key in ("tpot_ms", "itl_ms"):
            if isinstance(new.get(key), int | float):
                new[key] = new[key] / keep
        out.append(new)
    return out


def trials(deployments: list[Deployment], shape: str) -> dict[str, Trials]:
    unchanged = [d for d in deployments if d.kind == "unchanged" and not d.error]
    slowed = [d for d in deployments if d.kind == "slowed" and not d.error]
    out = {
        "false_alarm": Trials("unchanged vs unchanged"),
        "known_10pct": Trials(f"unchanged vs unchanged made {KNOWN_SLOWDOWN:.0%} slower"),
        "real_slowdown": Trials("unchanged vs slowed (synthetic acceptance)"),
    }

    def gate(base: Deployment, new_runs: list[dict[str, Any]]) -> Verdict:
        return compare_runs(base.runs, new_runs, profile="local-tiny", shape=shape, concurrency=1)

    for a in unchanged:
        for b in unchanged:
            if a is not b:
                out["false_alarm"].verdicts.append(gate(a, b.runs))
                out["known_10pct"].verdicts.append(gate(a, slowed_runs(b.runs, KNOWN_SLOWDOWN)))
        for s in slowed:
            out["real_slowdown"].verdicts.append(gate(a, s.runs))
    return out


def native_argv(spec: dict[str, Any]) -> list[str]:
    """The container's server arguments for a local process: paths inside the container's mounts
    become the host paths they mount, and the server listens on loopback only."""
    argv = [str(a) for a in spec["command"][1:]]
    for host_dir, bind in spec["volumes"].items():
        inside = str(bind["bind"])
        argv = [host_dir + a[len(inside) :] if a.startswith(inside + "/") else a for a in argv]
    return ["127.0.0.1" if a == "0.0.0.0" else a for a in argv]


class NativeServers:
    """The profile's llama-server as a local process (see `--native` in the module doc)."""

    def __init__(self, command: list[str], log_dir: Path) -> None:
        self.command = command
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, profile: Any) -> None:
        import httpx

        from gh200.errors import OperationFailed
        from gh200.profiles.render import container_spec

        spec = container_spec(profile)
        argv = native_argv(spec)
        # The container's cpuset, for a process: the same CPUs through taskset.
        pin = ["taskset", "-c", str(spec["cpuset_cpus"])] if spec.get("cpuset_cpus") else []
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{profile.name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [*pin, *self.command, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **spec["environment"]},
            )
        self.procs[profile.name] = proc
        deadline = time.monotonic() + profile.health.timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise OperationFailed(
                    f"native llama-server for {profile.name} exited with {proc.returncode}",
                    f"see {self.log_dir / (profile.name + '.log')}",
                )
            try:
                if httpx.get(spec["health"]["url"], timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise OperationFailed(f"native llama-server for {profile.name} never became healthy", "see its log")

    def stop(self, profile: Any) -> None:
        proc = self.procs.pop(profile.name, None)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _unchanged_pairs(deployments: list[Deployment]) -> list[tuple[Deployment, Deployment]]:
    """Every ordered pair of distinct unchanged deployments that measured: the trials of the rates."""
    unchanged = [d for d in deployments if d.kind == "unchanged" and not d.error]
    return [(a, b) for a in unchanged for b in unchanged if a is not b]


def _flag_rate(
    pairs: list[tuple[Deployment, Deployment]], shape: str, floor: float, slowdown: float = 0.0
) -> float:
    """The share of pairs the gate flags with `floor` on every metric, the new side made `slowdown`
    slower (0: as measured)."""
    flagged = 0
    for base, new in pairs:
        runs = slowed_runs(new.runs, slowdown) if slowdown else new.runs
        verdict = compare_runs(
            base.runs, runs, profile="local-tiny", shape=shape, concurrency=1, min_effect=floors(floor)
        )
        flagged += verdict.status == "regression"
    return flagged / len(pairs)


def best_floor(deployments: list[Deployment], shape: str, step: float = FLOOR_STEP) -> dict[str, Any] | None:
    """What this machine's noise allows, whatever the floor: the smallest effect floor (the same on
    every gated metric, in `step`s up to 50%) whose false-alarm rate on these deployments meets the
    target, and the detection of the known slowdown at that floor. In-sample, so optimistic: when
    even this misses the detection target, no floor of this gate meets both on this machine."""
    pairs = _unchanged_pairs(deployments)
    if not pairs:
        return None
    for k in range(round(0.5 / step) + 1):
        floor = k * step
        false_alarms = _flag_rate(pairs, shape, floor)
        if false_alarms <= TARGET_FALSE_ALARMS:
            detection = _flag_rate(pairs, shape, floor, KNOWN_SLOWDOWN)
            return {
                "floor": round(floor, 4),
                "false_alarms": round(false_alarms, 4),
                "detection": round(detection, 4),
            }
    return {"floor": None, "false_alarms": None, "detection": None}


def smallest_caught_slowdown(
    deployments: list[Deployment], shape: str, floor: float, limit: float = 0.5
) -> float | None:
    """The smallest decode slowdown (whole percent, up to `limit`) that the gate with this floor on
    every metric flags in at least the detection target's share of the unchanged pairs: the size of
    regression this machine's noise lets the gate catch. None when not even `limit` is caught."""
    pairs = _unchanged_pairs(deployments)
    if not pairs:
        return None

    def caught(percent: int) -> bool:
        return _flag_rate(pairs, shape, floor, percent / 100) >= TARGET_DETECTION

    # A larger slowdown moves every pair's estimate and p-value the bad way: detection only grows,
    # so the smallest caught size is found by bisection.
    low, high = 0, round(limit * 100)
    if not caught(high):
        return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if caught(mid) else (mid, high)
    return high / 100


def measure(
    count: int,
    shape: tuple[int, int],
    warm: int,
    synth: float,
    *,
    budget_s: float,
    record: Path | None = None,
    show_progress: bool = True,
    native: list[str] | None = None,
    cpus: str | None = None,
    same_prompts: bool = True,
    threads: int | None = None,
) -> list[Deployment]:
    """Up to `count` fresh deployments each of the unchanged and the slowed variant, alternating.

    Bounded in time: a pair of deployments is started only while the pairs so far say it ends
    within `budget_s`; what was measured is kept (and written to `record` after every deployment).
    """
    from gh200.bench.client import probe
    from gh200.bench.smoke import SetPlan, Smoke
    from gh200.engine import connect
    from gh200.errors import OperationFailed
    from gh200.orchestrate import deploy, stop
    from gh200.output import progress
    from gh200.profiles import load_profile
    from gh200.profiles.schema import CpuPlacement
    from gh200.served import api_key_for, base_url

    servers = NativeServers(native, (record or Path("bench-gate")).with_suffix(".logs")) if native else None
    client = None if servers else connect()
    base = load_profile("local-tiny")
    if cpus is not None:
        placement = base.placement.model_copy(update={"cpu": CpuPlacement(cpus=cpus, membind=False)})
        base = base.model_copy(update={"placement": placement})
    if threads is not None:
        base = base.model_copy(update={"settings": base.settings.model_copy(update={"threads": threads})})
    variants = {
        "unchanged": base.model_copy(update={"name": PREFIX + "unchanged", "port": _free_port()}),
        "slowed": base.model_copy(
            update={
                "name": PREFIX + "slowed",
                "port": _free_port(),
                "settings": base.settings.model_copy(
                    update={"extra_args": ["--spec-synth-rates", ",".join([f"{synth:g}"] * 3)]}
                ),
            }
        ),
    }
    plan = SetPlan("synthetic", shape[0], shape[1], 1, warm)
    deployments: list[Deployment] = []
    began = time.monotonic()
    with progress(show_progress) as bar:
        task = bar.add_task("bench-gate deployments", total=2 * count)
        for index in range(count):
            if not room_for_another_pair(time.monotonic() - began, index, budget_s):
                bar.update(task, description=f"bench-gate: time budget reached after {index} pairs")
                break
            for kind in ("unchanged", "slowed") if index % 2 == 0 else ("slowed", "unchanged"):
                profile = variants[kind]
                started = time.monotonic()
                try:
                    if servers is not None:
                        from gh200.orchestrate import ensure_tiny_model

                        ensure_tiny_model(profile)  # what deploy does for this profile
                        servers.start(profile)
                    else:
                        deploy(client, profile, progress=False, smoke=None)
                    endpoint = asyncio.run(
                        probe(
                            base_url(profile), api_key=api_key_for(profile), model=profile.model.served_name
                        )
                    )
                    seed = 0 if same_prompts else index
                    smoke = Smoke(endpoint, [plan], seed=seed, fresh_server=same_prompts)
                    (run_set,) = asyncio.run(smoke.run())
                    runs, error = [r.as_json() for r in run_set.runs], run_set.error
                except OperationFailed as err:
                    # One failed deployment (a health timeout on a loaded machine) is counted, not fatal.
                    runs, error = [], str(err)
                finally:
                    if servers is not None:
                        servers.stop(profile)
                    else:
                        stop(client, profile.name)
                deployments.append(
                    Deployment(kind, index, runs, time.monotonic() - started, error, os.getloadavg()[0])
                )
                if len(deployments) >= 2 and all(d.error for d in deployments[-2:]):
                    raise OperationFailed(
                        f"two deployments in a row failed, the last with: {error}",
                        "check `gh200 deploy local-tiny` by hand",
                    )
                if record is not None:
                    conditions = {
                        "cpus": cpus,
                        "threads": base.settings.threads,
                        "prompts": "same" if same_prompts else "fresh",
                        "server": "native" if servers else "container",
                    }
                    write_record(record, deployments, shape, warm, synth, conditions=conditions)
                last = deployments[-1]
                bar.update(
                    task,
                    advance=1,
                    description=(
                        f"bench-gate {kind} #{index + 1}: "
                        + (
                            f"failed ({last.error[:60]})"
                            if last.error
                            else f"{last.median('output_tok_s'):.1f} tok/s"
                        )
                        + f", load {last.load:.1f}"
                    ),
                )
    return deployments


def room_for_another_pair(spent_s: float, pairs_done: int, budget_s: float) -> bool:
    """Whether one more pair, as long as the mean pair so far, still ends within the budget.
    The first pair always runs: with nothing measured there is no estimate and no rate."""
    return pairs_done == 0 or spent_s + spent_s / pairs_done <= budget_s


def write_record(
    path: Path,
    deployments: list[Deployment],
    shape: tuple[int, int],
    warm: int,
    synth: float,
    *,
    conditions: dict[str, Any] | None = None,
) -> None:
    """The measured deployments, so the rates can be recomputed (`--replay`) without redeploying."""
    from gh200.fsutil import atomic_write_text

    doc = {
        "version": 1,
        "shape": f"{shape[0]}:{shape[1]}",
        "warm": warm,
        "synthetic_acceptance": synth,
        # How the deployments ran (CPUs, threads, prompts, native or container): what the noise belongs to.
        "conditions": conditions or {},
        "deployments": [d.as_json() for d in deployments],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def read_record(path: Path) -> tuple[list[Deployment], str, int, float]:
    """A record written by `write_record`; BadInput when it is not one."""
    from gh200.errors import BadInput

    try:
        doc = json.loads(path.read_text())
        deployments = [Deployment.from_json(d) for d in doc["deployments"]]
        return deployments, str(doc["shape"]), int(doc["warm"]), float(doc["synthetic_acceptance"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BadInput(
            f"{path} is not a bench-gate record ({err})", "pass a file written by `make bench-gate`"
        ) from err


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def noise(deployments: list[Deployment], metric: str) -> dict[str, float | None]:
    """Where the noise of a metric is: within one deployment (CV of its warm runs, the median over
    deployments) and between deployments (CV of the unchanged deployments' medians)."""
    import statistics

    def cv(values: list[float]) -> float | None:
        return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else None

    unchanged = [d for d in deployments if d.kind == "unchanged" and not d.error]
    within = [
        c
        for d in unchanged
        if (c := cv([float(r[metric]) for r in d.runs if not r.get("cold") and r.get(metric)])) is not None
    ]
    medians = [m for d in unchanged if math.isfinite(m := d.median(metric))]
    between = cv(medians)
    return {
        "within_cv": round(_mid(within), 4) if within else None,
        "between_cv": None if between is None else round(between, 4),
    }


def summarise(deployments: list[Deployment], shape: str, synth: float) -> dict[str, Any]:
    found = trials(deployments, shape)
    unchanged = [d.median("output_tok_s") for d in deployments if d.kind == "unchanged" and not d.error]
    slowed = [d.median("output_tok_s") for d in deployments if d.kind == "slowed" and not d.error]
    spread = (max(unchanged) / min(unchanged) - 1) if unchanged else None
    real = (1 - _mid(slowed) / _mid(unchanged)) if unchanged and slowed else None
    loads = [d.load for d in deployments if d.load is not None]
    detection, false_alarm = found["known_10pct"].rate, found["false_alarm"].rate
    return {
        "shape": shape,
        "deployments": {"unchanged": len(unchanged), "slowed": len(slowed)},
        "errors": [d.error for d in deployments if d.error],
        "runs_per_deployment": len(deployments[0].runs) if deployments else 0,
        "median_tok_s_unchanged": [round(v, 2) for v in unchanged],
        "median_tok_s_slowed": [round(v, 2) for v in slowed],
        "deployment_spread": None if spread is None else round(spread, 4),
        "noise": {rule.name: noise(deployments, rule.name) for rule in GATED_METRICS},
        "synthetic_acceptance": synth,
        "real_slowdown_measured": None if real is None else round(real, 4),
        "seconds": round(sum(d.seconds for d in deployments), 1),
        "load_1min": {"min": min(loads), "median": _mid(loads), "max": max(loads)} if loads else None,
        **{name: t.as_json() for name, t in found.items()},
        "best_floor": (best := best_floor(deployments, shape)),
        "caught_slowdown": (
            smallest_caught_slowdown(deployments, shape, best["floor"])
            if best is not None and best["floor"] is not None
            else None
        ),
        "target": {"detection": TARGET_DETECTION, "false_alarms": TARGET_FALSE_ALARMS},
        "met": detection >= TARGET_DETECTION and false_alarm <= TARGET_FALSE_ALARMS,
    }


def _mid(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def suggested_min_effect(floor: float) -> str:
    """The floor as `--min-effect` takes it. A floor of 0 (any floor keeps false alarms in target)
    is not a floor the option accepts: the smallest step searched, which keeps them in target too."""
    return f"{max(floor, FLOOR_STEP):.2f}"


def render(result: dict[str, Any], warm: int) -> str:
    """The human summary: rates as counts and ratios, the noise behind them, the machine's load."""
    fa, known, real = result["false_alarm"], result["known_10pct"], result["real_slowdown"]
    counts = result["deployments"]
    spread = result["deployment_spread"]
    lines = [
        f"bench-gate: local-tiny {result['shape']} c1, 1 cold + {warm} warm runs per deployment"
        " (the gate reads the warm runs)",
        f"  deployments: {counts['unchanged']} unchanged, {counts['slowed']} slowed; unchanged medians"
        f" spread {'n/a' if spread is None else format(spread, '.1%')} (max/min - 1)",
    ]
    for metric, n in result["noise"].items():
        w, b = n["within_cv"], n["between_cv"]
        lines.append(
            f"  noise {metric}: within a deployment CV {'n/a' if w is None else format(w, '.1%')},"
            f" between deployments CV {'n/a' if b is None else format(b, '.1%')}"
        )
    lines += [
        f"  detection of a {KNOWN_SLOWDOWN:.0%} slowdown: {known['flagged']}/{known['trials']}"
        f" = {known['rate']:.1%} (target >= {TARGET_DETECTION:.0%}); by metric {known['flagged_by_metric']}",
        f"  false alarms on unchanged servers: {fa['flagged']}/{fa['trials']} = {fa['rate']:.1%}"
        f" (target <= {TARGET_FALSE_ALARMS:.0%}); by metric {fa['flagged_by_metric']}",
    ]
    if result["real_slowdown_measured"] is not None:
        lines.append(
            f"  real slowdown (synthetic acceptance {result['synthetic_acceptance']:g}, measured"
            f" {result['real_slowdown_measured']:.1%} slower in median output tok/s):"
            f" flagged {real['flagged']}/{real['trials']} = {real['rate']:.1%};"
            f" by metric {real['flagged_by_metric']}"
        )
    best = result.get("best_floor")
    if best is not None:
        if best["floor"] is None:
            lines.append("  no floor up to 50% keeps false alarms within target on these deployments")
        else:
            lines.append(
                f"  what this machine's noise allows: the smallest floor with false alarms <="
                f" {TARGET_FALSE_ALARMS:.0%} here is {best['floor']:.0%} ({best['false_alarms']:.1%}),"
                f" which detects the {KNOWN_SLOWDOWN:.0%} slowdown {best['detection']:.1%} of the time;"
                f" pass --min-effect {suggested_min_effect(best['floor'])} to gh200 rollout on this host"
            )
            caught = result.get("caught_slowdown")
            lines.append(
                f"  at that floor the gate catches a slowdown of {caught:.0%} or more"
                f" >= {TARGET_DETECTION:.0%} of the time"
                if caught is not None
                else f"  at that floor no slowdown up to 50% is caught >= {TARGET_DETECTION:.0%} of the time"
            )
    load = result["load_1min"]
    if load is not None:
        lines.append(
            f"  load average (1 min) during the run: {load['min']:.1f} min, {load['median']:.1f} median,"
            f" {load['max']:.1f} max on {os.cpu_count()} CPUs"
        )
    errors = result["errors"]
    lines.append(
        f"  target met: {'yes' if result['met'] else 'NO'}; {result['seconds']:.0f} s of deploy + measure"
        + (f"; {len(errors)} deployment(s) failed: {errors[0]}" if errors else "")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gh200.baseline.bench_gate", description=DESCRIPTION)
    parser.add_argument("--deployments", type=int, default=10, help="fresh deployments of each variant")
    parser.add_argument("--shape", default=f"{DEFAULT_SHAPE[0]}:{DEFAULT_SHAPE[1]}", help="INPUT:OUTPUT")
    parser.add_argument("--warm", type=int, default=10, help="warm runs after the cold one")
    parser.add_argument(
        "--synth", type=float, default=DEFAULT_SYNTH, help="synthetic acceptance per draft position (slowed)"
    )
    parser.add_argument(
        "--budget-min",
        type=float,
        default=DEFAULT_BUDGET_MIN,
        help="start no deployment pair that would end past this many minutes (what was measured is kept)",
    )
    parser.add_argument(
        "--record",
        type=Path,
        default=None,
        help="write the measured deployments here (default: STATE/bench-gate/<time>.json)",
    )
    parser.add_argument(
        "--replay", type=Path, default=None, help="recompute the rates from a record instead of deploying"
    )
    parser.add_argument(
        "--native",
        default=None,
        metavar="COMMAND",
        help="start llama-server as this local command instead of a container (machines without an engine)",
    )
    parser.add_argument(
        "--cpus",
        default=None,
        metavar="LIST",
        help="pin every deployment to these CPUs (cpuset syntax, e.g. 2,4): placement noise left out",
    )
    parser.add_argument("--threads", type=int, default=None, help="server threads (default: the profile's)")
    parser.add_argument(
        "--prompts",
        choices=("same", "fresh"),
        default="same",
        help="same: every deployment gets the same seeded prompts, as a rollout's fresh deployment does;"
        " fresh: new random prompts per deployment",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    from gh200.bench.smoke import parse_shapes
    from gh200.errors import Gh200Error

    if args.threads is not None and args.threads < 1:
        print(f"error: --threads {args.threads}: pass 1 or more", file=sys.stderr)
        return 2
    if args.cpus is not None:
        from gh200.profiles.schema import parse_cpu_list

        try:
            if not parse_cpu_list(args.cpus):
                raise ValueError("no CPU in it")
        except ValueError as err:
            print(f"error: --cpus {args.cpus}: {err} (pass a cpuset list, e.g. 2,4 or 2-3)", file=sys.stderr)
            return 2
    if args.deployments < 2 or not 0 < args.synth < 1 or args.warm < 3 or args.budget_min <= 0:
        print(
            "error: --deployments >= 2, --warm >= 3, 0 < --synth < 1 and --budget-min > 0 (fix the value)",
            file=sys.stderr,
        )
        return 2
    try:
        if args.replay is not None:
            deployments, shape_text, warm, synth = read_record(args.replay)
        else:
            (shape,) = parse_shapes([args.shape])
            shape_text, warm, synth = args.shape, args.warm, args.synth
            record = args.record or _default_record()
            deployments = measure(
                args.deployments,
                shape,
                warm,
                synth,
                budget_s=60 * args.budget_min,
                record=record,
                show_progress=not args.json,
                native=shlex.split(args.native) if args.native else None,
                cpus=args.cpus,
                same_prompts=args.prompts == "same",
                threads=args.threads,
            )
    except Gh200Error as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    result = summarise(deployments, shape_text, synth)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    print(render(result, warm))
    if args.replay is None:
        print(f"  record: {record} (recompute with --replay)")
    return 0


def _default_record() -> Path:
    from datetime import UTC, datetime

    from gh200.paths import state_dir

    return state_dir() / "bench-gate" / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"


if __name__ == "__main__":
    raise SystemExit(main())
