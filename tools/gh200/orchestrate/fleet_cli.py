"""CLI: `gh200 fleet rollout PROFILE -i INV [--accept]` and `gh200 fleet upgrade vllm VERSION -i INV`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from gh200.output import console, emit_json

OUTCOME_STYLE = {
    "passed": "green",
    "accepted": "green",
    "regressed": "bold red",
    "failed": "bold red",
    "not_attempted": "dim",
}


def summary_table(summary: Any) -> Table:
    """One row per inventory host, in the order the fleet visited them."""
    from gh200.orchestrate.fleet import describe_changes, describe_regression

    table = Table(title=f"fleet {summary.action} {summary.target}: {summary.as_json()['outcome']}")
    for column in ("host", "outcome", "detail", "what changed"):
        table.add_column(column, overflow="fold")
    for host in summary.hosts:
        style = OUTCOME_STYLE.get(host.outcome, "white")
        outcome = host.outcome.replace("_", " ")
        if host.rollout_outcome and host.rollout_outcome not in (host.outcome, "rolled_back"):
            outcome += f" ({host.rollout_outcome.replace('_', ' ')})"
        detail = "; ".join(describe_regression(r) for r in host.regressions) or host.message
        table.add_row(host.host, f"[{style}]{outcome}[/]", detail, describe_changes(host.changes))
    return table


def register(app: typer.Typer) -> None:
    """Add `gh200 fleet ...` to the root app."""
    fleet = typer.Typer(
        help="Roll out across the inventory's hosts one at a time, stopping at the first regression.",
        no_args_is_help=True,
    )
    upgrade = typer.Typer(help="Upgrade an engine across the fleet, host by host.", no_args_is_help=True)
    fleet.add_typer(upgrade, name="upgrade")
    app.add_typer(fleet, name="fleet")

    def _run(action: str, inventory: Path, json_out: bool, **kw: Any) -> None:
        from gh200.orchestrate.fleet import raise_for, run_fleet

        summary = run_fleet(inventory, action, **kw)
        if json_out:
            emit_json(summary.as_json())
        else:
            console.print(summary_table(summary))
            console.print(
                f"results: {summary.results_dir}  artifacts: {summary.artifacts_dir}"
                f"  ({summary.seconds:.0f}s)",
                highlight=False,
                soft_wrap=True,
            )
        raise_for(summary)

    inventory_opt = typer.Option(..., "--inventory", "-i", help="Inventory file or directory.")
    results_opt = typer.Option(
        None, "--results", help="Where each host's JSON is kept (default: the gh200 state dir)."
    )
    artifacts_opt = typer.Option(None, "--artifacts", help="Where ansible-runner keeps the run.")
    json_opt = typer.Option(False, "--json", help="One JSON summary on stdout, no table.")
    min_effect_opt = typer.Option(
        None,
        "--min-effect",
        help="The gate's floor on every host, as a fraction (default 0.05); `make bench-gate` on a"
        " host prints the one its noise needs.",
    )

    @fleet.command("rollout")
    def rollout_cmd(  # noqa: PLR0917 - typer maps each option to a parameter
        profile: str = typer.Argument(..., help="Profile name (or path) to roll out on every host."),
        inventory: Path = inventory_opt,
        accept: bool = typer.Option(False, "--accept", help="A passing run becomes each host's baseline."),
        image: str | None = typer.Option(
            None, "--image", help="Roll out this image instead of the profile's."
        ),
        shape: str | None = typer.Option(None, "--shape", help="INPUT:OUTPUT each host gates on."),
        warm: int | None = typer.Option(None, "--warm", help="Warm runs after the cold one (at least 3)."),
        min_effect: str | None = min_effect_opt,
        results: Path | None = results_opt,
        artifacts: Path | None = artifacts_opt,
        json_out: bool = json_opt,
    ) -> None:
        """`gh200 rollout PROFILE` on each host in turn; exit 3 if the fleet stopped on a regression."""
        _run(
            "rollout",
            inventory,
            json_out,
            profile=profile,
            accept=accept,
            image=image,
            shape=shape,
            warm=warm,
            min_effect=min_effect,
            results_dir=results,
            artifacts=artifacts,
        )

    @upgrade.command("vllm")
    def upgrade_vllm_cmd(
        version: str = typer.Argument(..., help="The vLLM version to upgrade to, e.g. 0.33.1."),
        *,
        inventory: Path = inventory_opt,
        min_effect: str | None = min_effect_opt,
        results: Path | None = results_opt,
        artifacts: Path | None = artifacts_opt,
        json_out: bool = json_opt,
    ) -> None:
        """`gh200 upgrade vllm VERSION` on each host in turn; exit 3 if it stopped on a regression."""
        _run(
            "upgrade",
            inventory,
            json_out,
            version=version,
            min_effect=min_effect,
            results_dir=results,
            artifacts=artifacts,
        )
