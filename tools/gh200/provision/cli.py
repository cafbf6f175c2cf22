"""CLI: `gh200 provision --inventory INV [--check] [--tags ...] [--idempotence]`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from gh200.output import console, emit_json

STATUS_STYLE = {
    "ok": "green",
    "changed": "yellow",
    "failed": "bold red",
    "unreachable": "bold red",
    "skipped": "cyan",
    "ignored": "magenta",
}


def _split(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _summary_table(title: str, hosts: dict[str, Any]) -> Table:
    table = Table(title=title)
    for column in ("host", "ok", "changed", "failed", "unreachable", "skipped"):
        table.add_column(column, justify="left" if column == "host" else "right")
    for name, summary in sorted(hosts.items()):
        table.add_row(
            name,
            str(summary.ok),
            str(summary.changed),
            str(summary.failed),
            str(summary.unreachable),
            str(summary.skipped),
        )
    return table


def register(app: typer.Typer) -> None:
    """Add `gh200 provision` to the root app."""

    @app.command("provision")
    def provision_cmd(  # noqa: PLR0917 - typer maps each option to a parameter
        inventory: Path = typer.Option(..., "--inventory", "-i", help="Inventory file or directory."),
        playbook: str = typer.Option(
            "provision", "--playbook", help="provision, site, images, models, deploy, verify, or a path."
        ),
        check: bool = typer.Option(False, "--check", help="Dry run: report what would change."),
        diff: bool = typer.Option(False, "--diff", help="Show file differences (in the artifacts)."),
        tags: list[str] | None = typer.Option(None, "--tags", help="Only these tags (comma separated)."),
        skip_tags: list[str] | None = typer.Option(None, "--skip-tags", help="Skip these tags."),
        limit: str | None = typer.Option(None, "--limit", help="Only these hosts (Ansible pattern)."),
        extra_vars: list[str] | None = typer.Option(
            None, "--extra-vars", "-e", help="KEY=VALUE or @FILE, as ansible-playbook -e."
        ),
        idempotence: bool = typer.Option(
            False, "--idempotence", help="Run twice; fail if the second run changed anything."
        ),
        artifacts: Path | None = typer.Option(
            None, "--artifacts", help="Where ansible-runner keeps each run (default: the gh200 state dir)."
        ),
        json_out: bool = typer.Option(False, "--json", help="One JSON result on stdout, no progress."),
    ) -> None:
        """Run a playbook through ansible-runner: a line per task result, then a summary per host."""
        from gh200.provision.runner import (
            PinRefused,
            ProvisionFailed,
            ProvisionInputError,
            TaskResult,
            failure_message,
            idempotence_message,
            run_playbook,
        )

        if idempotence and check:
            raise ProvisionInputError("--idempotence and --check together check nothing", "drop one of them")

        def show_result(result: TaskResult) -> None:
            style = STATUS_STYLE.get(result.status, "white")
            line = f"[{style}]{result.status:<11}[/] {result.host:<20} {result.label()}"
            if result.message and result.status != "skipped":
                line += f"  [dim]{result.message}[/]"
            console.print(line, highlight=False, soft_wrap=True)

        def show_play(name: str) -> None:
            console.print(f"[bold]PLAY[/] {name}", highlight=False)

        stamp = time.strftime("%Y%m%dT%H%M%S")
        runs = []
        rounds = 2 if idempotence else 1
        for n in range(1, rounds + 1):
            if not json_out and rounds > 1:
                console.rule(f"run {n} of {rounds}" + (" (must change nothing)" if n == 2 else ""))
            run = run_playbook(
                inventory,
                playbook,
                check=check,
                diff=diff,
                tags=_split(tags),
                skip_tags=_split(skip_tags),
                extra_vars=extra_vars,
                limit=limit,
                artifacts=artifacts,
                ident=f"{stamp}-{Path(playbook).stem}-run{n}",
                on_result=None if json_out else show_result,
                on_play=None if json_out else show_play,
            )
            runs.append(run)
            if not json_out:
                title = f"{run.playbook} run {n}: {run.status} in {run.seconds:.0f}s"
                console.print(_summary_table(title, run.hosts))
                console.print(f"artifacts: {run.artifacts_dir}", highlight=False, soft_wrap=True)
                for host, message in sorted(run.reboot_pending().items()):
                    console.print(f"[bold yellow]{host}:[/] {message}", highlight=False, soft_wrap=True)
            # A pending reboot ends the idempotence check: the next run, after the reboot,
            # is the one that finishes the host.
            if not run.ok or run.reboot_pending():
                break

        last = runs[-1]
        idempotent: bool | None = None
        if idempotence and len(runs) == 2 and last.ok:
            idempotent = not last.changed
        pending = {host: msg for r in runs for host, msg in r.reboot_pending().items()}
        result = {
            "ok": all(r.ok for r in runs) and idempotent is not False,
            "changed": runs[0].changed,
            "idempotent": idempotent,
            "reboot_pending": pending,
            "runs": [r.as_json() for r in runs],
        }
        if json_out:
            emit_json(result)
        refused = last.refused()
        if refused is not None:
            raise PinRefused(f"{refused.host}: {refused.message}", "nothing was changed on the host")
        if not last.ok:
            raise ProvisionFailed(failure_message(last), f"see {last.artifacts_dir}")
        if idempotent is False:
            raise ProvisionFailed(idempotence_message(last), f"see {last.artifacts_dir}")
        if not json_out and idempotent:
            console.print("[bold green]idempotent:[/] the second run changed nothing")
