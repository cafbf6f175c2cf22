"""CLI: `gh200 upgrade vllm VERSION [--accept] [--unlocked] [--json]`."""

from __future__ import annotations

import typer
from rich.table import Table

from gh200.output import console, emit_json


def upgrade_cmd(
    component: str = typer.Argument(..., help="What to upgrade: vllm."),
    version: str = typer.Argument(..., help="The vLLM release to move to, e.g. 0.34.0 (PEP 440)."),
    *,
    accept: bool = typer.Option(False, "--accept", help="Make each passing roll-out the new baseline."),
    unlocked: bool = typer.Option(
        False, "--unlocked", help="Build from the base image's tag when images.lock has no digest for it."
    ),
    min_effect: str | None = typer.Option(
        None,
        "--min-effect",
        help="The gate's floor for every roll-out, as a fraction (default 0.05); `make bench-gate`"
        " prints the one this host's noise needs.",
    ),
    json_out: bool = typer.Option(False, "--json", help="One JSON result on stdout, no progress."),
) -> None:
    """Check the patch series on VERSION's sdist, build the image, roll out every deployed vLLM
    profile through the gate (stopping at the first regression), and write a report.

    Exit 0 upgraded or stopped after the series check (no arm64 build here), 3 rolled back,
    1 a series conflict or a failure, 2 bad input."""
    from gh200.baseline.gate import check_min_effect
    from gh200.orchestrate.upgrade import upgrade

    # Text checked here: `abc` is one line with exit 2, before the series check downloads anything.
    floor = None if min_effect is None else check_min_effect(min_effect)
    result = upgrade(
        component, version, accept=accept, unlocked=unlocked, min_effect=floor, progress=not json_out
    )
    if json_out:
        emit_json(result.as_json())
    else:
        table = Table(title=f"vLLM {result.to_version}: patch series ({result.series_seconds:.1f} s)")
        for column in ("patch", "status", "detail"):
            table.add_column(column)
        colours = {"applies": "green", "absorbed": "yellow", "upstream": "cyan"}
        for row in [*result.series, *result.upstream]:
            colour = colours.get(row["status"], "red")
            table.add_row(row["patch"], f"[{colour}]{row['status']}[/]", row["detail"])
        console.print(table)
        for done in result.rollouts:
            console.print(f"roll-out {done.get('profile', '?')}: {done.get('outcome', '?')}")
        console.print(f"[bold]{result.outcome}[/]: {result.detail}", soft_wrap=True)
        if result.next_command:
            console.print(f"on the workstation: {result.next_command}", soft_wrap=True)
        console.print(f"report: {result.report}", soft_wrap=True)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def register(app: typer.Typer) -> None:
    """Add this job's commands to the root app."""
    app.command("upgrade")(upgrade_cmd)
