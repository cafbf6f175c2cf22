"""`gh200 deploy`, `demo`, `sweep` and `rollout`: the commands that deploy and measure together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import typer.core

from gh200.bench.cli import check_common, check_prompts
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
    from gh200.deploy.deploy import deploy, load_targets
    from gh200.engine import connect
    from gh200.orchestrate.smoke_check import short_smoke

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


def demo_command(
    warm: int = typer.Option(5, "--warm", help="Warm runs per shape (after the cold one)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Build the llama.cpp image, generate a tiny model, deploy local-tiny, smoke it, print the report."""
    from gh200.bench.run import print_report, raise_for_outcome
    from gh200.orchestrate.demo import demo

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


class _SweepGroup(typer.core.TyperGroup):
    """`gh200 sweep PROFILE ...` runs the walk; `gh200 sweep decide TABLE` applies the rule to a table."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return list(super().parse_args(ctx, args))


sweep_app = typer.Typer(
    cls=_SweepGroup,
    help="Walk the speculative depth from MTP-0 by the posts' rule, or apply the rule to a table.",
    no_args_is_help=True,
    add_completion=False,
)


@sweep_app.command("run")
def sweep_command(
    profile: str = typer.Argument(..., help="Profile with speculative decoding to sweep."),
    *,
    spec_tokens: str = typer.Option(
        "1..", "--spec-tokens", help="Values to walk after the MTP-0 baseline: 1.. or 1..5 or 1,2,3."
    ),
    shape: list[str] = typer.Option(
        [], "--shape", help="INPUT:OUTPUT (repeatable; default: every expected shape of the profile)."
    ),
    concurrency: list[int] = typer.Option(
        [], "--concurrency", "-c", help="With --shape: concurrent requests (repeatable, default 1)."
    ),
    warm: int = typer.Option(10, "--warm"),
    timeout: float = typer.Option(600.0, "--timeout"),
    results: Path | None = typer.Option(None, "--results", help="Results file (JSON Lines) to append to."),
    plot: Path | None = typer.Option(None, "--plot", help="Where to save the PNG (default: state dir)."),
    restore: bool = typer.Option(
        True, "--restore/--keep", help="Redeploy the profile as written afterwards."
    ),
    unlocked: bool = typer.Option(False, "--unlocked", help="Allow building an image from an unpinned base."),
    prompt_mode: str = typer.Option("words", "--prompts", help="Synthetic prompts: words or random."),
    vocab_size: int | None = typer.Option(
        None, "--vocab-size", help="Vocabulary size for --prompts random where the server does not list it."
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Redeploy at MTP-0, 1, 2, ... over every expected shape; stop when a shape gets worse."""
    from gh200.bench.smoke import SetPlan, parse_shapes
    from gh200.bench.sweep import expected_plans, parse_spec_tokens, with_spec_tokens
    from gh200.orchestrate.sweep import sweep
    from gh200.profiles import load_profile

    check_common(timeout=timeout, warm=warm, concurrency=concurrency)
    check_prompts(prompt_mode, vocab_size)
    loaded = load_profile(profile)
    values = parse_spec_tokens(spec_tokens)
    with_spec_tokens(loaded, values[0])  # a profile without speculative decoding fails here, exit 2
    if concurrency and not shape:
        raise BadInput("--concurrency needs --shape", "pass --shape IN:OUT, or leave both to the profile")
    if shape:
        plans = [
            SetPlan("synthetic", inp, out, c, warm)
            for inp, out in parse_shapes(shape)
            for c in (concurrency or [1])
        ]
    else:
        plans = expected_plans(loaded, warm)
    if results is not None:
        from gh200.bench.results import check_results_path

        check_results_path(results)
    if plot is not None and plot.is_dir():
        raise BadInput(f"--plot {plot} is a directory", f"pass a file path, e.g. --plot {plot / 'sweep.png'}")
    from gh200.engine import connect

    result = sweep(
        connect(),
        loaded,
        values,
        plans=plans,
        warm=warm,
        results_path=results,
        plot_path=plot,
        show_progress=not json_out,
        timeout_s=timeout,
        restore=restore,
        unlocked=unlocked,
        prompt_mode="random" if prompt_mode == "random" else "words",
        vocab_size=vocab_size,
    )
    if json_out:
        emit_json(result.as_json())
        return
    from rich.table import Table

    table = Table(title=f"sweep: {loaded.name}", title_justify="left")
    for name in (
        "Spec tokens",
        "Shape",
        "Runs",
        "Median output tok/s",
        "P10",
        "P90",
        "CV",
        "Median TPOT",
        "Median acceptance",
        "Sub-60",
        "Verdict",
    ):
        table.add_column(name)
    for p in result.points:
        table.add_row(
            str(p.tokens),
            p.shape,
            str(p.runs),
            f"{p.median:.2f}",
            f"{p.p10:.2f}",
            f"{p.p90:.2f}",
            f"{p.cv:.3f}",
            "n/a" if p.tpot_ms is None else f"{p.tpot_ms:.2f} ms",
            "n/a" if p.acceptance is None else f"{p.acceptance:.2%}",
            str(p.sub60_runs),
            p.verdict,
        )
    from gh200.output import table_console

    table_console().print(table)
    console.print(f"chosen: MTP-{result.chosen} ({result.reason})", highlight=False)
    if result.plot:
        console.print(f"plot: {result.plot}", highlight=False)


@sweep_app.command("decide")
def decide_command(
    table: Path = typer.Argument(..., help="Markdown file with a table in the posts' layout ('-': stdin)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Apply the sweep's rule to a table in the posts' layout (or a report's Markdown)."""
    import sys

    from gh200.bench.rule import decide
    from gh200.bench.tables import read_depths

    if str(table) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = table.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise BadInput(
                f"cannot read {table}: {getattr(err, 'strerror', None) or err}", "pass a Markdown file"
            ) from err
    decisions = {family: decide(depths) for family, depths in read_depths(text).items()}
    if json_out:
        emit_json({"decisions": [{"family": f, **d.as_json()} for f, d in decisions.items()]})
        return
    for family, decision in decisions.items():
        name = f"{family}: " if family else ""
        chosen = "none" if decision.chosen is None else f"MTP-{decision.chosen}"
        print(f"{name}chosen {chosen}: {decision.reason}")


def rollout_command(
    profile: str = typer.Argument(..., help="Profile to roll out (name or YAML path)."),
    *,
    image: str | None = typer.Option(
        None, "--image", help="Run this local image instead of the profile's (e.g. a new vLLM build)."
    ),
    accept: bool = typer.Option(False, "--accept", help="Make a passing run this host's new baseline."),
    shape: str | None = typer.Option(
        None, "--shape", help="INPUT:OUTPUT to gate on (default: the profile's expected shapes)."
    ),
    warm: int = typer.Option(10, "--warm", help="Warm runs after the cold one (the gate needs >= 3)."),
    min_effect: str | None = typer.Option(
        None,
        "--min-effect",
        help="The gate's floor: the smallest shift of a metric that counts, as a fraction (default 0.05);"
        " `make bench-gate` prints the one this host's noise needs.",
    ),
    confirm: str = typer.Option(
        "1",
        "--confirm",
        help="Run sets measured again after a flagged one; it is rolled back only if every one is slower"
        " too (0: roll back on the first).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object; no progress."),
) -> None:
    """Deploy PROFILE's new version, benchmark it, gate it against this host's baseline; roll back
    by itself when it is slower (exit 3, after --confirm more run sets agree), naming the metric and
    what changed."""
    from gh200.baseline.gate import check_min_effect
    from gh200.bench.smoke import parse_shapes
    from gh200.errors import OperationFailed, Regression
    from gh200.orchestrate.rollout import check_confirm, rollout
    from gh200.profiles import load_profile

    loaded = load_profile(profile)
    pair: tuple[int, int] | None = None
    if shape is not None:
        (pair,) = parse_shapes([shape])
    # Read as text and checked here, so that `abc` is one line with exit 2 like every other bad value.
    floor = None if min_effect is None else check_min_effect(min_effect)
    confirmations = check_confirm(confirm)
    result = rollout(
        loaded,
        image=image,
        accept=accept,
        shape=pair,
        warm_runs=warm,
        min_effect=floor,
        confirm=confirmations,
        progress=not json_out,
    )
    if json_out:
        emit_json(result.as_json())
        if result.exit_code:
            raise typer.Exit(result.exit_code)
        return
    if result.outcome == "rolled_back":
        raise Regression(result.message, "compare the changes named; `gh200 logs` shows the restored server")
    if result.outcome == "failed":
        raise OperationFailed(result.message, "the previous version runs again where one was running")
    style = "yellow" if result.outcome == "no_baseline" else "green"
    console.print(f"[{style}]{result.outcome}[/] {result.message}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this job's commands to the root app."""
    app.command("deploy")(deploy_command)
    app.command("demo")(demo_command)
    app.add_typer(sweep_app, name="sweep")
    app.command("rollout")(rollout_command)
