"""`gh200 sweep PROFILE`: walk the speculative depth from MTP-0, redeploying at each depth.

The measurement, the points and the posts' rule are gh200.bench.sweep; this is the part that deploys.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from gh200.bench.prompts import PromptMode
from gh200.bench.run import print_report, run, target_for_profile
from gh200.bench.smoke import SetPlan
from gh200.bench.sweep import (
    SweepResult,
    default_plot_path,
    expected_plans,
    judge,
    points_for,
    save_plot,
    with_spec_tokens,
)
from gh200.deploy.deploy import deploy
from gh200.errors import BadInput, OperationFailed
from gh200.output import console
from gh200.profiles.schema import Profile


class SweepFailed(OperationFailed):
    """A step of the sweep could not be deployed or measured."""


def sweep(
    client: Any,
    profile: Profile,
    values: list[int],
    *,
    plans: list[SetPlan] | None = None,
    warm: int = 10,
    results_path: Path | None = None,
    plot_path: Path | None = None,
    show_progress: bool = True,
    timeout_s: float = 600.0,
    restore: bool = True,
    unlocked: bool = False,
    prompt_mode: PromptMode = "words",
    vocab_size: int | None = None,
) -> SweepResult:
    """MTP-0, then each value in turn, every shape at each; `plans` default to the expected shapes."""
    depths = [0, *[v for v in values if v != 0]]
    variants = [with_spec_tokens(profile, tokens) for tokens in depths]  # bad input fails before any change
    chosen_plans = plans or expected_plans(profile, warm)
    result = SweepResult(profile.name, [p.label for p in chosen_plans])
    failure: BaseException | None = None
    deployed_any = False
    try:
        for tokens, variant in zip(depths, variants, strict=True):
            if show_progress:
                console.rule(f"{profile.name}: MTP-{tokens}")
            deployed_any = True
            deploy(client, variant, progress=show_progress, smoke=None, unlocked=unlocked)
            target = target_for_profile(variant, client)
            target.label = f"{profile.name} spec={tokens}"
            if vocab_size is not None:
                target.endpoint = dataclasses.replace(target.endpoint, vocab_size=vocab_size)
            outcome = run(
                target,
                chosen_plans,
                results_path=results_path,
                show_progress=show_progress,
                timeout_s=timeout_s,
                prompt_mode=prompt_mode,
            )
            result.outcomes.append(outcome)
            if show_progress:
                print_report(outcome, markdown_to_stdout=False)
            failed = outcome.failed_set
            if failed is not None:
                raise SweepFailed(
                    f"sweep step MTP-{tokens} stopped at {failed.plan.label}: {failed.error}",
                    "see `gh200 logs`",
                )
            result.points += points_for(tokens, outcome.sets)
            decision = judge(result.points)
            result.chosen, result.reason = decision.chosen, decision.reason
            if decision.stopped_at is not None:
                break
    except BaseException as err:
        failure = err
        raise
    finally:
        if restore and deployed_any:
            try:
                deploy(client, profile, progress=show_progress, smoke=None, unlocked=unlocked)
            except (OperationFailed, BadInput) as err:
                if failure is None:
                    raise
                console.print(f"[yellow]note:[/] restoring {profile.name} failed too: {err.one_line()}")
    if result.points:
        result.plot = save_plot(result, plot_path or default_plot_path(profile.name))
    return result
