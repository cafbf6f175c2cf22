"""`gh200 smoke` and `gh200 sweep`."""

from __future__ import annotations

from pathlib import Path

import typer

from gh200.errors import BadInput
from gh200.output import console, emit_json


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
    if profile is not None:
        from gh200.profiles import load_profile

        target = target_for_profile(load_profile(profile))
    else:
        assert url is not None
        if do_gate:
            raise BadInput(
                "--gate needs a PROFILE (its expected values)", "name the profile instead of --url"
            )
        target = target_for_url(url, api_key=_api_key(api_key_file), model=model)
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
    )
    if json_out:
        emit_json(outcome.as_json())
    else:
        print_report(outcome)
    raise_for_outcome(outcome)


def sweep_command(
    profile: str = typer.Argument(..., help="Profile with speculative decoding to sweep."),
    *,
    spec_tokens: str = typer.Option("1..", "--spec-tokens", help="Values to walk: 1.. or 1..5 or 1,2,3."),
    shape: str = typer.Option(
        "", "--shape", help="INPUT:OUTPUT (default: the profile's first expected shape)."
    ),
    concurrency: int = typer.Option(1, "--concurrency", "-c"),
    warm: int = typer.Option(10, "--warm"),
    timeout: float = typer.Option(600.0, "--timeout"),
    results: Path | None = typer.Option(None, "--results", help="Results file (JSON Lines) to append to."),
    plot: Path | None = typer.Option(None, "--plot", help="Where to save the PNG (default: state dir)."),
    restore: bool = typer.Option(
        True, "--restore/--keep", help="Redeploy the profile as written afterwards."
    ),
    unlocked: bool = typer.Option(False, "--unlocked", help="Allow building an image from an unpinned base."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Redeploy with 1, 2, ... speculative tokens until the median worsens or acceptance collapses."""
    from gh200.bench.smoke import parse_shapes
    from gh200.bench.sweep import parse_spec_tokens, sweep, with_spec_tokens
    from gh200.engine import connect
    from gh200.profiles import load_profile

    loaded = load_profile(profile)
    values = parse_spec_tokens(spec_tokens)
    with_spec_tokens(loaded, values[0])  # a profile without speculative decoding fails here, exit 2
    if shape:
        chosen_shape = parse_shapes([shape])[0]
    elif loaded.expected:
        chosen_shape = (loaded.expected[0].input_tokens, loaded.expected[0].output_tokens)
    else:
        chosen_shape = (2048, 512)
    result = sweep(
        connect(),
        loaded,
        values,
        shape=chosen_shape,
        concurrency=concurrency,
        warm=warm,
        results_path=results,
        plot_path=plot,
        show_progress=not json_out,
        timeout_s=timeout,
        restore=restore,
        unlocked=unlocked,
    )
    if json_out:
        emit_json(result.as_json())
        return
    from rich.table import Table

    table = Table(title=f"sweep: {loaded.name} {result.shape} c{concurrency}", title_justify="left")
    for name in (
        "Spec tokens",
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
    console.print(f"chosen: {result.chosen} speculative tokens ({result.reason})", highlight=False)
    if result.plot:
        console.print(f"plot: {result.plot}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this job's commands to the root app."""
    app.command("smoke")(smoke_command)
    app.command("sweep")(sweep_command)
