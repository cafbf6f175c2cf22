"""CLI: `gh200 verify --inventory INV` (over SSH) or `gh200 verify --local` (this machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from gh200.output import console, emit_json, progress

OUTCOME_STYLE = {"passed": "green", "failed": "bold red", "error": "bold red", "skipped": "yellow"}


def _table(checks: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, show_lines=False)
    for column in ("check", "host", "result", "detail"):
        table.add_column(column, overflow="fold")
    for row in checks:
        style = OUTCOME_STYLE.get(row["outcome"], "white")
        table.add_row(row["check"], row["host"], f"[{style}]{row['outcome']}[/]", row["detail"])
    return table


def register(app: typer.Typer) -> None:
    """Add `gh200 verify` to the root app."""

    @app.command("verify")
    def verify_cmd(  # noqa: PLR0917 - typer maps each option to a parameter
        inventory: Path | None = typer.Option(
            None, "--inventory", "-i", help="Check the inventory's hosts over SSH (testinfra ansible://)."
        ),
        local: bool = typer.Option(False, "--local", help="Check the machine this runs on."),
        limit: str | None = typer.Option(None, "--limit", help="Only these inventory hosts (pattern)."),
        expect: list[Path] | None = typer.Option(
            None, "--expect", help="YAML of gh200_* expectations over the inventory's (repeatable)."
        ),
        only: str = typer.Option("all", "--only", help="all, config, hardware, gpu or gh200."),
        json_out: bool = typer.Option(False, "--json", help="One JSON result on stdout, no progress."),
    ) -> None:
        """Run the shipped host suite (tests/host) and print a table of its checks."""
        from gh200.verify.suite import VerifyFailed, check_args, failure_message, run_suite

        check_args(inventory=inventory, local=local, only=only, expect=expect or [])
        with progress(enabled=not json_out) as bar:
            task = bar.add_task("host checks", total=None)

            def follow(done: int, total: int, last: dict[str, Any] | None) -> None:
                what = f"host checks: {last['check']}" if last else "host checks: connecting"
                bar.update(task, completed=done, total=total or None, description=what[:70])

            result = run_suite(
                inventory=inventory,
                local=local,
                limit=limit,
                expect=expect or [],
                only=only,
                on_progress=follow,
            )
        if json_out:
            emit_json(result.as_json())
        else:
            summary = result.summary()
            failed = summary["failed"] + summary["error"]
            title = (
                f"{result.target}: {summary['passed']} passed, {failed} failed, "
                f"{summary['skipped']} skipped in {result.seconds:.0f}s"
            )
            console.print(_table(result.checks, title))
        if not result.ok:
            raise VerifyFailed(failure_message(result), "see the table above, or the checks in --json")
