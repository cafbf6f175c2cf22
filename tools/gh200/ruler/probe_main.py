"""`python3 -m gh200.ruler.probe_main`: the probe without our environment (stdlib + torch only).

On a GPU host whose python3 has torch but not gh200-stack's dependencies:
    PYTHONPATH=tools python3 -m gh200.ruler.probe_main --out topology.json --report topology.md
`gh200 probe` runs the same code with rich output where the bundle is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gh200.errors import Gh200Error
from gh200.fsutil import atomic_write_text
from gh200.ruler import probe, topology
from gh200.ruler.ruler import RulerInputError, parse_bytes


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gh200-probe", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, help="topology JSON to write (default: $GH200_STATE/topology.json)"
    )
    parser.add_argument("--report", type=Path, help="also write the Markdown tables here")
    parser.add_argument("--size", default="1GiB", help="host and GPU-to-GPU buffer size (default 1GiB)")
    parser.add_argument("--copy-size", default="2GiB", help="device copy buffer size (default 2GiB)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--nodes", type=_ints, help="NUMA nodes to probe, e.g. 0,1 (default: nodes with CPUs)"
    )
    parser.add_argument("--gpus", type=_ints, help="GPU indices, e.g. 0,1 (default: all)")
    parser.add_argument("--json", action="store_true", help="print the topology document on stdout")
    args = parser.parse_args(argv)
    try:
        try:
            size, copy_size = parse_bytes(args.size), parse_bytes(args.copy_size)
        except RulerInputError as err:
            raise probe.ProbeInputError(err.message, err.fix) from None
        doc = probe.run_probe(
            size_bytes=size,
            copy_size_bytes=copy_size,
            reps=args.reps,
            warmup=args.warmup,
            nodes=args.nodes,
            gpus=args.gpus,
            step=lambda msg: print(f"probe: {msg}", file=sys.stderr, flush=True),
        )
        if args.out is None:
            from gh200.paths import state_dir

            out = state_dir() / "topology.json"
        else:
            out = args.out
        topology.write_topology(out, doc)
        report = topology.format_report(doc)
        if args.report:
            atomic_write_text(args.report, report + "\n")
    except Gh200Error as err:
        print(f"error: {err.one_line()}", file=sys.stderr)
        return err.exit_code
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(report)
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
