"""`gh200 status`, `logs` and `stop` (`deploy` and `demo` smoke what they start: gh200.orchestrate.cli)."""

from __future__ import annotations

import typer

from gh200.errors import BadInput
from gh200.output import console, emit_json


def status_command(json_out: bool = typer.Option(False, "--json")) -> None:
    """Every gh200 container here: profile, state, health, port, GPUs, image, profile hash."""
    from rich.table import Table

    from gh200.deploy.deploy import status
    from gh200.engine import connect

    rows = status(connect())
    if json_out:
        emit_json({"changed": False, "containers": rows})
        return
    if not rows:
        console.print("no gh200 containers")
        return
    table = Table(title="gh200 containers", title_justify="left")
    for name in (
        "Profile",
        "Stack",
        "State",
        "Health",
        "URL",
        "GPUs",
        "Image",
        "Hash",
        "Profile file",
        "Container",
    ):
        table.add_column(name)
    for r in rows:
        health = str(r["health"])
        style = "green" if health == "ready" else ("yellow" if r["state"] == "running" else "dim")
        table.add_row(
            str(r["profile"]),
            str(r["stack"] or ""),
            str(r["state"]),
            health,
            str(r["url"] or ""),
            str(r["gpus"] or "-"),
            str(r["image"] or ""),
            str(r["hash"] or ""),
            str(r["profile_file"]),
            str(r["container"]),
            style=style,
        )
    from gh200.output import table_console

    table_console().print(table)


def logs_command(
    profile: str = typer.Argument(..., help="Profile whose container's log to show."),
    tail: int = typer.Option(200, "--tail", "-n", help="Lines from the end (0 = all)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """The log of PROFILE's container (the running one, else the newest)."""
    import sys

    from gh200.deploy.deploy import find_for_logs
    from gh200.engine import connect

    if tail < 0:
        raise BadInput(f"--tail {tail} is negative", "pass 0 for everything or a positive count")
    container = find_for_logs(connect(), profile)
    kwargs = {"tail": tail} if tail else {}
    if json_out:
        text = bytes(container.logs(**kwargs)).decode(errors="replace")
        emit_json({"changed": False, "profile": profile, "container": container.name, "logs": text})
        return
    if follow:
        for chunk in container.logs(stream=True, follow=True, **kwargs):
            sys.stdout.write(bytes(chunk).decode(errors="replace"))
            sys.stdout.flush()
        return
    sys.stdout.write(bytes(container.logs(**kwargs)).decode(errors="replace"))


def stop_command(
    name: str | None = typer.Argument(None, help="Profile or stack to stop."),
    everything: bool = typer.Option(False, "--all", help="Stop every gh200 container."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Stop and remove a profile's (or a stack's) containers."""
    from gh200.deploy.deploy import stop
    from gh200.engine import connect

    if everything and name:
        raise BadInput("pass a NAME or --all, not both", "gh200 stop PROFILE | --all")
    removed = stop(connect(), name, everything)
    if json_out:
        emit_json({"changed": bool(removed), "stopped": removed})
        return
    console.print(f"stopped {', '.join(removed)}" if removed else "nothing to stop", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this job's commands to the root app."""
    app.command("status")(status_command)
    app.command("logs")(logs_command)
    app.command("stop")(stop_command)
