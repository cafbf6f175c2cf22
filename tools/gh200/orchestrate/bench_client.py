"""Client overhead: client-measured time per output token over the server's own figure.

`make bench-client` (python -m gh200.orchestrate.bench_client). Deploys `local-tiny` if it is not running,
then streams requests at concurrency 1 and 8 and compares, request by request, the client's TPOT
((e2e - TTFT)/(n - 1)) with llama-server's `timings.predicted_per_token_ms`, which it computes the
same way from its own clock. A ratio near 1 means the client adds no time of its own; the target is
at most 1.05 at concurrency 1. The tiny model decodes in about a millisecond per token, so this is
a harsh test: any per-chunk cost in the client shows up.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gh200.bench.stats import describe

TARGET_C1 = 1.05
DESCRIPTION = "Client overhead: client-measured time per output token over the server's own figure."


def measure(
    concurrencies: list[int], shape: tuple[int, int], runs: int, show_progress: bool = True
) -> dict[str, Any]:
    from gh200.bench.run import run, target_for_profile
    from gh200.bench.smoke import SetPlan
    from gh200.deploy.deploy import deploy, is_running
    from gh200.engine import connect
    from gh200.orchestrate.smoke_check import short_smoke
    from gh200.profiles import load_profile

    client = connect()
    profile = load_profile("local-tiny")
    if not is_running(client, profile.name):
        deploy(client, profile, progress=show_progress, smoke=short_smoke)
    target = target_for_profile(profile, client)
    plans = [SetPlan("synthetic", shape[0], shape[1], c, runs - 1) for c in concurrencies]
    outcome = run(target, plans, write_results=False, show_progress=show_progress)
    out: dict[str, Any] = {"shape": f"{shape[0]}:{shape[1]}", "runs": runs, "levels": []}
    for run_set in outcome.sets:
        if run_set.error:
            raise SystemExit(f"bench-client: {run_set.error}")
        ratios: list[float] = []
        client_ms: list[float] = []
        server_ms: list[float] = []
        for r in run_set.runs:
            for q in r.requests:
                if q.tpot_ms and q.server_tpot_ms:
                    ratios.append(q.tpot_ms / q.server_tpot_ms)
                    client_ms.append(q.tpot_ms)
                    server_ms.append(q.server_tpot_ms)
        stats = describe(ratios)
        c_stats, s_stats = describe(client_ms), describe(server_ms)
        out["levels"].append(
            {
                "concurrency": run_set.plan.concurrency,
                "requests": len(ratios),
                "client_tpot_ms_median": c_stats.median if c_stats else None,
                "server_tpot_ms_median": s_stats.median if s_stats else None,
                "ratio": stats.as_json() if stats else None,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gh200.orchestrate.bench_client", description=DESCRIPTION)
    parser.add_argument("--runs", type=int, default=10, help="runs per concurrency (default 10)")
    parser.add_argument("--input", type=int, default=128)
    parser.add_argument("--output", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure([1, 8], (args.input, args.output), args.runs, show_progress=not args.json)
    c1 = next(level for level in result["levels"] if level["concurrency"] == 1)
    ratio_c1 = c1["ratio"]["median"] if c1["ratio"] else None
    result["target_c1"] = TARGET_C1
    result["meets_target"] = ratio_c1 is not None and ratio_c1 <= TARGET_C1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"client overhead, local-tiny, {result['shape']}, {args.runs} runs per level")
        header = (
            "Concurrency",
            "Requests",
            "Client TPOT (median)",
            "Server TPOT (median)",
            "Ratio median",
            "Ratio p90",
        )
        print("| " + " | ".join(header) + " |")
        print("|---|---|---|---|---|---|")
        for level in result["levels"]:
            r = level["ratio"] or {}
            print(
                f"| {level['concurrency']} | {level['requests']} | {level['client_tpot_ms_median']:.3f} ms "
                f"| {level['server_tpot_ms_median']:.3f} ms | {r.get('median', float('nan')):.3f} "
                f"| {r.get('p90', float('nan')):.3f} |"
            )
        verdict = "meets" if result["meets_target"] else "MISSES"
        print(f"concurrency 1: ratio {ratio_c1:.3f} {verdict} the target of <= {TARGET_C1}")
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
