"""`gh200 baseline accept|show|check` and `gh200 report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gh200.errors import BadInput
from gh200.output import console, emit_json

baseline_app = typer.Typer(
    name="baseline",
    help="This host's accepted baselines per profile and shape, and the gate against them.",
    no_args_is_help=True,
)

RUN_HELP = "A run id (or unique prefix, or `latest`) from the results file, or a results file of one run."
# `accept` and `check` name a run the same way: one set of arguments, one loader.
RunArg = Annotated[str, typer.Argument(help=RUN_HELP)]
ResultsOpt = Annotated[Path | None, typer.Option("--results", help="Results file to look the run id up in.")]
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", help="With `latest`: the newest run of this profile.")
]


def _load_run(run: str, results: Path | None, profile: str | None) -> tuple[list[dict[str, Any]], Path]:
    """The records of the run set RUN names, and the file they were read from."""
    from gh200.baseline.store import resolve_run
    from gh200.bench.results import default_results_path

    records = resolve_run(run, results, profile)
    source = (
        Path(run).expanduser() if Path(run).expanduser().is_file() else (results or default_results_path())
    )
    return records, source


@baseline_app.command("accept")
def accept_command(
    run: RunArg,
    results: ResultsOpt = None,
    profile: ProfileOpt = None,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Make a finished run set this host's baseline for each of its profile's shapes."""
    from gh200.baseline.store import accept

    records, source = _load_run(run, results, profile)
    written = accept(records, source=str(source.resolve()))
    if json_out:
        emit_json({"changed": True, "baselines": [b.as_json() for b in written]})
        return
    for b in written:
        tok = b.median("output_tok_s")
        console.print(
            f"baseline {b.profile} {b.shape} c{b.concurrency}: run {b.run_id}"
            f"{f', median {tok:.2f} tok/s' if tok is not None else ''} -> {b.path}",
            highlight=False,
        )


@baseline_app.command("show")
def show_command(
    profile: str | None = typer.Argument(None, help="Only this profile's baselines."),
    *,
    host: str | None = typer.Option(None, "--host", help="Another host's baselines (default: this host)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """The accepted baselines: run, when, medians of output tok/s, TPOT, TTFT and acceptance."""
    from gh200.baseline.store import iter_baselines, this_host

    found = list(iter_baselines(host, profile))
    if profile is not None and not found:
        raise BadInput(
            f"no baseline of profile {profile} on {host or this_host()}",
            f"accept one: gh200 smoke {profile}; gh200 baseline accept latest --profile {profile}",
        )
    if json_out:
        emit_json({"host": host or this_host(), "baselines": [b.as_json() for b in found]})
        return
    if not found:
        console.print("no baselines accepted on this host yet (gh200 baseline accept RUN)")
        return
    from rich.table import Table

    from gh200.output import table_console

    table = Table(title=f"baselines on {host or this_host()}", title_justify="left")
    for name in (
        "Profile",
        "Shape",
        "C",
        "Run",
        "Accepted",
        "Runs",
        "Output tok/s",
        "TPOT ms",
        "TTFT ms",
        "Acceptance",
    ):
        table.add_column(name)

    def fmt(value: float | None, pattern: str) -> str:
        return "n/a" if value is None else format(value, pattern)

    for b in found:
        table.add_row(
            b.profile,
            b.shape,
            str(b.concurrency),
            b.run_id,
            b.accepted,
            str(len(b.runs)),
            fmt(b.median("output_tok_s"), ".2f"),
            fmt(b.median("tpot_ms"), ".2f"),
            fmt(b.median("ttft_ms"), ".1f"),
            fmt(b.median("acceptance"), ".1%"),
        )
    table_console().print(table)


@baseline_app.command("check")
def check_command(
    run: RunArg,
    results: ResultsOpt = None,
    profile: ProfileOpt = None,
    min_effect: str | None = typer.Option(
        None,
        "--min-effect",
        help="The gate's floor on every metric, as a fraction (default 0.05); `make bench-gate` prints"
        " the one this host's noise needs.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Gate a run set against the baselines: exit 1 when a metric got worse beyond noise and the floor."""
    from gh200.baseline.gate import DEFAULT_MIN_EFFECT, check_min_effect, floor_text, floors
    from gh200.baseline.store import GateRegression, check_run

    floor = DEFAULT_MIN_EFFECT if min_effect is None else check_min_effect(min_effect)
    records, _ = _load_run(run, results, profile)
    verdicts = check_run(records, min_effect=floors(floor))
    ok = all(v.status != "regression" for v in verdicts)
    if json_out:
        emit_json(
            {
                "ok": ok,
                "run_id": records[0].get("run_id"),
                "min_effect": floor,
                "verdicts": [v.as_json() for v in verdicts],
            }
        )
    else:
        # Regressions are the error line below; print the rest here.
        for v in verdicts:
            if v.status != "regression":
                colour = "green" if v.status == "pass" else "yellow"
                console.print(f"[{colour}]{v.status}[/] {v.describe()}", highlight=False)
    if not ok:
        bad = [v for v in verdicts if v.status == "regression"]
        raise GateRegression(
            f"slower than the baseline (gate floor {floor_text(floor)}): "
            + "; ".join(v.describe() for v in bad),
            "look at what changed; rerun to rule out a one-off, or accept the run if the change is intended",
        )


def report_command(
    *,
    out: Path | None = typer.Option(None, "--out", help="Directory for report.html and the PNGs."),
    results: Path | None = typer.Option(None, "--results", help="Results file (default: the state dir's)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """One self-contained HTML page (and PNGs) of every recorded run set on this host."""
    from gh200.baseline.report import write_report

    written = write_report(out, results)
    if json_out:
        emit_json(written.as_json())
        return
    console.print(f"report: {written.html} ({len(written.pngs)} plots)", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(baseline_app, name="baseline")
    app.command("report")(report_command)
