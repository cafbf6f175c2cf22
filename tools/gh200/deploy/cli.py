"""`gh200 deploy`, `status`, `logs`, `stop` and `demo`."""

from __future__ import annotations

import typer

from gh200.errors import BadInput
from gh200.output import console, emit_json


def deploy_command(
    profile: str = typer.Argument(..., help="Profile or stack to deploy (name or YAML path)."),
    smoke: bool = typer.Option(True, "--smoke/--no-smoke", help="Run a short smoke once it is ready."),
    unlocked: bool = typer.Option(False, "--unlocked", help="Allow building an image from an unpinned base."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object; no progress."),
) -> None:
    """Start PROFILE's container (stopping whatever holds its GPUs or port), wait for it, smoke it.

    If anything fails the new container is removed and the previous one restarted (roll-back).
    """
    from gh200.deploy.deploy import deploy, load_targets, short_smoke
    from gh200.engine import connect

    # The profile is checked before the engine is touched: a typo fails fast, with exit 2.
    profiles, stack = load_targets(profile)
    result = deploy(
        connect(),
        profiles,
        stack=stack,
        progress=not json_out,
        smoke=short_smoke if smoke else None,
        unlocked=unlocked,
    )
    if json_out:
        emit_json(result.as_json())
        return
    if not result.changed:
        console.print(f"{profile}: already running with the same profile hash (no change)", highlight=False)
    for row in result.targets:
        console.print(
            f"[green]ready[/] {row['profile']} at {row['url']} ({row['container']}, image {row['image']})",
            highlight=False,
        )
    for name in result.stopped:
        console.print(f"replaced {name}", highlight=False)
    for entry in result.smoke:
        rate = entry.get("output_tok_s")
        console.print(
            f"short smoke {entry['profile']}: {entry['runs']} runs, {rate:.1f} output tok/s"
            if rate
            else f"short smoke {entry['profile']}: ok",
            highlight=False,
        )


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
    from gh200.bench.report import table_console

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


def demo_command(
    warm: int = typer.Option(5, "--warm", help="Warm runs per shape (after the cold one)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Build the llama.cpp image, generate a tiny model, deploy local-tiny, smoke it, print the report."""
    from gh200.bench.run import print_report, raise_for_outcome
    from gh200.deploy.demo import demo

    result = demo(show_progress=not json_out, warm=warm)
    if json_out:
        emit_json(result.as_json())
    else:
        print_report(result.outcome)
        console.print(
            f"demo done in {result.steps['seconds']:.0f}s; the server keeps running: "
            "`gh200 status`, `gh200 smoke local-tiny`, `gh200 stop local-tiny`",
            highlight=False,
        )
    raise_for_outcome(result.outcome)


def register(app: typer.Typer) -> None:
    """Add this job's commands to the root app."""
    app.command("deploy")(deploy_command)
    app.command("status")(status_command)
    app.command("logs")(logs_command)
    app.command("stop")(stop_command)
    app.command("demo")(demo_command)
