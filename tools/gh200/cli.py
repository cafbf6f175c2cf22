"""The `gh200` command. Each job registers its commands from its own module."""

from __future__ import annotations

import sys

import typer

from gh200 import __version__
from gh200.errors import Gh200Error
from gh200.output import console

app = typer.Typer(
    name="gh200",
    help="Provision, pin, deploy, benchmark and verify a dual-GH200 LLM inference workstation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gh200 {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show version."),
) -> None:
    """gh200-stack: every serving setup from the reference posts as a pinned, validated profile."""


def _register() -> None:
    # Imported here so that one job's import cost is not paid by every command's start-up twice.
    from gh200.baseline import cli as baseline_cli
    from gh200.bench import cli as bench_cli
    from gh200.checkpoints import cli as checkpoints_cli
    from gh200.deploy import cli as deploy_cli
    from gh200.images import cli as images_cli
    from gh200.orchestrate import cli as orchestrate_cli
    from gh200.orchestrate import fleet_cli, upgrade_cli
    from gh200.profiles import cli as profiles_cli
    from gh200.provision import cli as provision_cli
    from gh200.ruler import cli as ruler_cli
    from gh200.verify import cli as verify_cli

    for module in (
        profiles_cli,
        checkpoints_cli,
        images_cli,
        orchestrate_cli,
        deploy_cli,
        bench_cli,
        baseline_cli,
        upgrade_cli,
        ruler_cli,
        provision_cli,
        verify_cli,
        fleet_cli,
    ):
        module.register(app)


_register()


def main() -> None:
    """Entry point: expected failures become one line and an exit code, never a traceback."""
    try:
        # Without standalone mode, click returns the code of a `typer.Exit(N)` instead of exiting.
        code = app(standalone_mode=False)
    except Gh200Error as err:
        console.print(f"[bold red]error:[/] {err.one_line()}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        console.print("[bold red]aborted[/]")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        sys.exit(130)
    except Exception as exc:
        # Usage errors: typer >= 0.26 raises its vendored click's exceptions (typer._click), which
        # are not click's own ClickException; both carry show() and exit_code.
        import click
        from typer.exceptions import TyperException

        show = getattr(exc, "show", None)
        if isinstance(exc, TyperException | click.exceptions.ClickException) and callable(show):
            show()
            sys.exit(int(getattr(exc, "exit_code", 2)))
        raise
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


if __name__ == "__main__":
    main()
