"""How right is the baseline gate about noise? Detection and false-alarm rates on the real llama-server.

`make bench-gate` (python -m gh200.baseline.bench_gate). Deploys `local-tiny` variants afresh K times
unchanged and K times slowed (synthetic draft acceptance, `--spec-synth-rates`), alternating so that
the machine's drift falls on both, and measures each deployment once the way the posts did: one
cold + 10 warm runs of one shape. Then every ordered pair of distinct deployments is a trial:

- false alarm: baseline = unchanged deployment i, new = unchanged deployment j;
- known 10% slowdown: baseline = unchanged i, new = unchanged j with every run made exactly 10%
  slower (tok/s x 0.9, TPOT and TTFT / 0.9). Redeploying a server that is slower by exactly 10%
  is not possible on a shared 2-core machine, so the slowdown is applied to measured runs: the
  noise is real deployment-to-deployment noise, the amount is known;
- real slowdown: baseline = unchanged i, new = slowed j (its size is measured and printed).

Pairs share deployments, so the trials are not independent; the rates are estimates from K
deployments, printed as counts. No timing is asserted anywhere: this prints ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from gh200.baseline.gate import Verdict, compare_runs

DESCRIPTION = "Detection and false-alarm rates of the baseline gate on local-tiny's real llama-server."
TARGET_DETECTION = 0.95
TARGET_FALSE_ALARMS = 0.05
KNOWN_SLOWDOWN = 0.10
DEFAULT_SHAPE = (64, 128)
DEFAULT_SYNTH = 0.4
PREFIX = "bgate-"


@dataclass
class Deployment:
    kind: str  # "unchanged" or "slowed"
    index: int
    runs: list[dict[str, Any]]
    seconds: float
    error: str | None = None

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
    """The same runs, each exactly `slowdown` slower: throughput x (1 - s), latencies / (1 - s)."""
    keep = 1.0 - slowdown
    out: list[dict[str, Any]] = []
    for run in runs:
        new = dict(run)
        for key in ("output_tok_s", "total_tok_s"):
            if isinstance(new.get(key), int | float):
                new[key] = new[key] * keep
        for key in ("tpot_ms", "ttft_ms", "itl_ms"):
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


def measure(
    count: int, shape: tuple[int, int], warm: int, synth: float, show_progress: bool = True
) -> list[Deployment]:
    """`count` fresh deployments each of the unchanged and the slowed variant, alternating."""
    from gh200.bench.client import probe
    from gh200.bench.smoke import SetPlan, Smoke
    from gh200.engine import connect
    from gh200.orchestrate import deploy, stop
    from gh200.output import progress
    from gh200.profiles import load_profile
    from gh200.served import base_url

    client = connect()
    base = load_profile("local-tiny")
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
    with progress(show_progress) as bar:
        task = bar.add_task("bench-gate deployments", total=2 * count)
        for index in range(count):
            for kind in ("unchanged", "slowed") if index % 2 == 0 else ("slowed", "unchanged"):
                profile = variants[kind]
                started = time.monotonic()
                try:
                    deploy(client, profile, progress=False, smoke=None)
                    endpoint = asyncio.run(probe(base_url(profile), model=profile.model.served_name))
                    (run_set,) = asyncio.run(Smoke(endpoint, [plan], seed=index).run())
                    runs = [r.as_json() for r in run_set.runs]
                    deployments.append(
                        Deployment(kind, index, runs, time.monotonic() - started, run_set.error)
                    )
                finally:
                    stop(client, profile.name)
                last = deployments[-1]
                bar.update(
                    task,
                    advance=1,
                    description=f"bench-gate {kind} #{index + 1}: {last.median('output_tok_s'):.1f} tok/s",
                )
    return deployments


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def summarise(deployments: list[Deployment], shape: str, synth: float) -> dict[str, Any]:
    found = trials(deployments, shape)
    unchanged = [d.median("output_tok_s") for d in deployments if d.kind == "unchanged" and not d.error]
    slowed = [d.median("output_tok_s") for d in deployments if d.kind == "slowed" and not d.error]
    spread = (max(unchanged) / min(unchanged) - 1) if unchanged else None
    real = (1 - _mid(slowed) / _mid(unchanged)) if unchanged and slowed else None
    detection, false_alarm = found["known_10pct"].rate, found["false_alarm"].rate
    return {
        "shape": shape,
        "deployments": {"unchanged": len(unchanged), "slowed": len(slowed)},
        "errors": [d.error for d in deployments if d.error],
        "runs_per_deployment": len(deployments[0].runs) if deployments else 0,
        "median_tok_s_unchanged": [round(v, 2) for v in unchanged],
        "median_tok_s_slowed": [round(v, 2) for v in slowed],
        "deployment_spread": None if spread is None else round(spread, 4),
        "synthetic_acceptance": synth,
        "real_slowdown_measured": None if real is None else round(real, 4),
        "seconds": round(sum(d.seconds for d in deployments), 1),
        **{name: t.as_json() for name, t in found.items()},
        "target": {"detection": TARGET_DETECTION, "false_alarms": TARGET_FALSE_ALARMS},
        "met": detection >= TARGET_DETECTION and false_alarm <= TARGET_FALSE_ALARMS,
    }


def _mid(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gh200.baseline.bench_gate", description=DESCRIPTION)
    parser.add_argument("--deployments", type=int, default=10, help="fresh deployments of each variant")
    parser.add_argument("--shape", default=f"{DEFAULT_SHAPE[0]}:{DEFAULT_SHAPE[1]}", help="INPUT:OUTPUT")
    parser.add_argument("--warm", type=int, default=10, help="warm runs after the cold one")
    parser.add_argument(
        "--synth", type=float, default=DEFAULT_SYNTH, help="synthetic acceptance per draft position (slowed)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    from gh200.bench.smoke import parse_shapes

    if args.deployments < 2 or not 0 < args.synth < 1 or args.warm < 3:
        print("error: --deployments >= 2, --warm >= 3 and 0 < --synth < 1 (fix the value)", file=sys.stderr)
        return 2
    (shape,) = parse_shapes([args.shape])
    deployments = measure(args.deployments, shape, args.warm, args.synth, show_progress=not args.json)
    result = summarise(deployments, args.shape, args.synth)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    fa, known, real = result["false_alarm"], result["known_10pct"], result["real_slowdown"]
    counts = result["deployments"]
    lines = [
        f"bench-gate: local-tiny {args.shape} c1, 1 cold + {args.warm} warm runs per deployment",
        f"  deployments: {counts['unchanged']} unchanged, {counts['slowed']} slowed; unchanged medians"
        f" spread {result['deployment_spread']:.1%} (max/min - 1)",
        f"  detection of a {KNOWN_SLOWDOWN:.0%} slowdown: {known['flagged']}/{known['trials']}"
        f" = {known['rate']:.1%} (target >= {TARGET_DETECTION:.0%})",
        f"  false alarms on unchanged servers: {fa['flagged']}/{fa['trials']} = {fa['rate']:.1%}"
        f" (target <= {TARGET_FALSE_ALARMS:.0%}); by metric {fa['flagged_by_metric']}",
    ]
    if result["real_slowdown_measured"] is not None:
        lines.append(
            f"  real slowdown (synthetic acceptance {args.synth:g}, measured"
            f" {result['real_slowdown_measured']:.1%} slower): flagged {real['flagged']}/{real['trials']}"
            f" = {real['rate']:.1%}; by metric {real['flagged_by_metric']}"
        )
    lines.append(
        f"  target met: {'yes' if result['met'] else 'NO'}; {result['seconds']:.0f} s of deploy + measure"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
