"""`gh200 smoke` and `gh200 sweep`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import typer.core

from gh200.errors import BadInput
from gh200.output import console, emit_json


def _check_prompts(prompt_mode: str, vocab_size: int | None) -> None:
    from gh200.bench.prompts import PROMPT_MODES

    if prompt_mode not in PROMPT_MODES:
        raise BadInput(
            f"--prompts {prompt_mode!r} is not a prompt mode", "pass --prompts words or --prompts random"
        )
    if vocab_size is not None and vocab_size < 2:
        raise BadInput(f"--vocab-size {vocab_size} is too small", "pass the tokenizer's vocabulary size")


def _check_common(*, timeout: float, warm: int, concurrency: list[int]) -> None:
    """Flags every benchmark command shares, checked before anything is contacted."""
    if not timeout > 0:
        raise BadInput(
            f"--timeout {timeout:g} is not a positive number of seconds", "pass e.g. --timeout 600"
        )
    if warm < 0:
        raise BadInput(f"--warm {warm} is negative", "pass 0 or more warm runs")
    bad = [c for c in concurrency if c < 1]
    if bad:
        raise BadInput(f"--concurrency {bad[0]} is below 1", "pass 1 or more concurrent requests")


def _api_key(path: Path | None) -> str | None:
    if path is None:
        return None
    from gh200.deploy.deploy import read_api_key

    return read_api_key(path)


def smoke_command(
    profile: str | None = typer.Argument(None, help="Profile whose deployed container to benchmark."),
    *,
    url: str | None = typer.Option(None, "--url", help="Benchmark this OpenAI-compatible server instead."),
    shape: list[str] = typer.Option([], "--shape", help="INPUT:OUTPUT tokens (repeatable), e.g. 2048:512."),
    concurrency: list[int] = typer.Option(
        [], "--concurrency", "-c", help="Concurrent requests (repeatable)."
    ),
    warm: int = typer.Option(10, "--warm", help="Warm runs after the cold one, per shape and concurrency."),
    real: bool = typer.Option(True, "--real/--no-real", help="Also run the fixed real prompts."),
    real_output: int = typer.Option(256, "--real-output", help="Output tokens for each real prompt."),
    real_repeats: int = typer.Option(1, "--real-repeats", help="Times each real prompt runs."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds one request may take."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed base (each request gets its own)."),
    results: Path | None = typer.Option(None, "--results", help="Results file (JSON Lines) to append to."),
    no_results: bool = typer.Option(False, "--no-results", help="Do not append to a results file."),
    do_gate: bool = typer.Option(False, "--gate", help="Fail when below the profile's expected values."),
    tolerance: float = typer.Option(0.10, "--tolerance", help="Gate tolerance as a fraction (0.10 = 10%)."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="0600 file with the key (--url)."),
    model: str | None = typer.Option(
        None, "--model", help="Model name at --url (default: the first listed)."
    ),
    prompt_mode: str = typer.Option(
        "words",
        "--prompts",
        help="Synthetic prompts: words (server-tokenized prose) or random (token ids, like vllm bench).",
    ),
    vocab_size: int | None = typer.Option(
        None, "--vocab-size", help="Vocabulary size for --prompts random where the server does not list it."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object; no progress."),
) -> None:
    """Stream requests of exact lengths: one cold and N warm runs per shape; the posts' statistics."""
    from gh200.bench.run import (
        default_plans,
        print_report,
        raise_for_outcome,
        run,
        target_for_profile,
        target_for_url,
    )

    if (profile is None) == (url is None):
        raise BadInput(
            "name a PROFILE or pass --url, not both or neither", "gh200 smoke local-tiny | --url URL"
        )
    if not 0 < tolerance < 1:
        raise BadInput(f"--tolerance {tolerance} is not a fraction", "pass e.g. 0.10 for 10%")
    if real_repeats < 1 or real_output < 2:
        raise BadInput("--real-repeats must be >= 1 and --real-output >= 2", "fix the value")
    _check_common(timeout=timeout, warm=warm, concurrency=concurrency)
    from gh200.bench.prompts import PROMPT_MODES

    if prompt_mode not in PROMPT_MODES:
        raise BadInput(
            f"--prompts {prompt_mode!r} is not a prompt mode", "pass --prompts words or --prompts random"
        )
    if vocab_size is not None and vocab_size < 2:
        raise BadInput(f"--vocab-size {vocab_size} is too small", "pass the tokenizer's vocabulary size")
    if shape:
        from gh200.bench.smoke import parse_shapes

        parse_shapes(shape)
    if results is not None and not no_results:
        from gh200.bench.results import check_results_path

        check_results_path(results)
    if url is not None and do_gate:
        raise BadInput("--gate needs a PROFILE (its expected values)", "name the profile instead of --url")
    if profile is not None:
        from gh200.profiles import load_profile

        target = target_for_profile(load_profile(profile))
    else:
        assert url is not None
        target = target_for_url(url, api_key=_api_key(api_key_file), model=model)
    if vocab_size is not None:
        import dataclasses

        target.endpoint = dataclasses.replace(target.endpoint, vocab_size=vocab_size)
    plans = default_plans(
        target,
        shapes=shape or None,
        concurrencies=concurrency or None,
        warm=warm,
        real_output=real_output if real else None,
        real_repeats=real_repeats,
        for_gate=do_gate,
    )
    outcome = run(
        target,
        plans,
        results_path=results,
        write_results=not no_results,
        show_progress=not json_out,
        timeout_s=timeout,
        seed=seed,
        do_gate=do_gate,
        tolerance=tolerance,
        prompt_mode=prompt_mode,
    )
    if json_out:
        emit_json(outcome.as_json())
    else:
        print_report(outcome)
    raise_for_outcome(outcome)


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
    from gh200.bench.sweep import expected_plans, parse_spec_tokens, sweep, with_spec_tokens
    from gh200.profiles import load_profile

    _check_common(timeout=timeout, warm=warm, concurrency=concurrency)
    _check_prompts(prompt_mode, vocab_size)
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
    from gh200.bench.report import table_console

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


def register(app: typer.Typer) -> None:
    """Add this job's commands to the root app."""
    app.command("smoke")(smoke_command)
    app.add_typer(sweep_app, name="sweep")
