"""`gh200 smoke` (`gh200 sweep` redeploys at each depth: gh200.orchestrate.cli)."""

from __future__ import annotations

from pathlib import Path

import typer
import typer.core

from gh200.errors import BadInput
from gh200.output import emit_json


def check_prompts(prompt_mode: str, vocab_size: int | None) -> None:
    from gh200.bench.prompts import PROMPT_MODES

    if prompt_mode not in PROMPT_MODES:
        raise BadInput(
            f"--prompts {prompt_mode!r} is not a prompt mode", "pass --prompts words or --prompts random"
        )
    if vocab_size is not None and vocab_size < 2:
        raise BadInput(f"--vocab-size {vocab_size} is too small", "pass the tokenizer's vocabulary size")


def check_common(*, timeout: float, warm: int, concurrency: list[int]) -> None:
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
    from gh200.served import read_api_key

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
    check_common(timeout=timeout, warm=warm, concurrency=concurrency)
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


def register(app: typer.Typer) -> None:
    """Add this job's commands to the root app."""
    app.command("smoke")(smoke_command)
