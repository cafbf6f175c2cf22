"""How the smoke benchmark drives a server: seeds, prompt building, counters, the cache check, progress
hooks, failures mid-run, and the input it refuses. Against the in-process fake server (bench_fakes)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from bench_fakes import FakeServer

from gh200.bench import prompts
from gh200.bench.client import Endpoint
from gh200.bench.smoke import RunResult, RunSet, SetPlan, Smoke, parse_shapes, plan_sets, require_vocab
from gh200.errors import BadInput


def _smoke(server: FakeServer, plans: list[SetPlan], **kwargs: Any) -> Smoke:
    endpoint = Endpoint(
        "http://fake", server.model, server.kind, context=server.context, vocab_size=kwargs.pop("vocab", None)
    )  # type: ignore[arg-type]
    return Smoke(endpoint, plans, transport=server.transport(), **kwargs)


def _run(server: FakeServer, plans: list[SetPlan], **kwargs: Any) -> list[RunSet]:
    return asyncio.run(_smoke(server, plans, **kwargs).run())


def test_every_request_carries_its_own_seed_from_the_run_seed() -> None:
    # Run i's requests are seeded seed + 1000 i + j: reproducible, and never two alike in a run.
    server = FakeServer()
    sets = _run(server, plan_sets([(16, 4)], [2], warm=2, real_output=None), seed=5)
    assert [r["seed"] for r in server.requests] == [5, 6, 1005, 1006, 2005, 2006]
    assert [r.index for r in sets[0].runs] == [0, 1, 2]
    assert [r.prompt_names for r in sets[0].runs] == [None] * 3  # synthetic prompts have no names
    assert sets[0].runs[0].as_json()["prompt_names"] is None
    chat = FakeServer()
    _run(chat, [SetPlan("real", None, 4, 2, 1)], seed=7)
    assert [r["seed"] for r in chat.requests] == [7, 8, 1007, 1008]


def test_real_prompts_at_concurrency_two_take_the_next_prompts_in_turn() -> None:
    names = list(prompts.REAL_PROMPTS)
    (real,) = _run(FakeServer(), [SetPlan("real", None, 4, 2, 2)])
    assert [r.prompt_names for r in real.runs] == [names[0:2], names[1:3], names[2:4]]


def test_wall_time_is_the_runs_own_elapsed_time() -> None:
    server = FakeServer(token_delay=0.002)
    started = time.perf_counter()
    (run_set,) = _run(server, plan_sets([(16, 10)], [1], warm=1, real_output=None))
    elapsed = time.perf_counter() - started
    for run in run_set.runs:
        assert 0.018 <= run.wall_s <= elapsed  # nine token gaps of 2 ms at least, the whole call at most


def test_counters_need_both_reads_and_a_counter_first_seen_after_the_run_counts_from_zero() -> None:
    # /metrics absent before the first run (a server still starting): no difference can be taken.
    late = FakeServer(metrics_missing_reads=1, draft_per_token=(4, 2))
    (run_set,) = _run(late, plan_sets([(16, 20)], [1], warm=1, real_output=None))
    assert run_set.runs[0].counters is None and run_set.runs[0].acceptance_from_counters is None
    assert run_set.runs[1].counters is not None
    assert run_set.runs[0].as_json()["counters"] is None
    # Per-position counters appear once counted: the cold run's difference starts from zero.
    fresh = FakeServer(kind="vllm", positions_when_counted=True, draft_per_token=(4, 2))
    (run_set,) = _run(fresh, plan_sets([(16, 20)], [1], warm=0, real_output=None))
    counters = run_set.runs[0].counters
    assert counters is not None
    assert counters["accepted_tokens_pos_0"] == 5.0 and counters["accepted_tokens_pos_1"] == 5.0
    assert "accepted_tokens_pos_2" not in counters


def test_without_metrics_the_run_has_no_counters() -> None:
    server = FakeServer(metrics_missing_reads=10**6)
    (run_set,) = _run(server, plan_sets([(16, 8)], [1], warm=0, real_output=None))
    assert run_set.complete and run_set.runs[0].counters is None


@pytest.mark.parametrize(
    ("plan", "cached", "ok"),
    [
        (SetPlan("synthetic", 64, 4, 1, 0), 8, True),  # at the floor of 8 tokens
        (SetPlan("synthetic", 64, 4, 1, 0), 9, False),
        (SetPlan("synthetic", 2000, 4, 1, 0), 20, True),  # 1% of a 2000-token prompt
        (SetPlan("synthetic", 2000, 4, 1, 0), 21, False),
        (SetPlan("real", None, 4, 1, 0), 64, True),  # a chat template's preamble may be reused
        (SetPlan("real", None, 4, 1, 0), 65, False),
    ],
)
def test_cached_tokens_allowed_per_prompt_kind(plan: SetPlan, cached: int, ok: bool) -> None:
    (run_set,) = _run(FakeServer(cached_tokens=cached), [plan])
    assert run_set.complete is ok
    if not ok:
        assert run_set.error_kind == "cached"
        assert (run_set.error or "").endswith("(fix: report it: every prompt starts with a fresh nonce)")
    # Checking turned off: the same server passes.
    (unchecked,) = _run(FakeServer(cached_tokens=cached), [plan], check_cache=False)
    assert unchecked.complete


def test_progress_hook_sees_every_run_then_the_failure() -> None:
    seen: list[tuple[str, int | None, int]] = []
    server = FakeServer(drop_after=2, drop_on_request=4, token_delay=0.005)

    def hook(run_set: RunSet, run: RunResult | None) -> None:
        # At a failure the run's other requests are already cancelled: nothing is left in flight.
        seen.append((run_set.plan.label, None if run is None else run.index, server.in_flight))

    sets = _run(server, plan_sets([(16, 20)], [2], warm=3, real_output=None), on_run=hook)
    assert seen == [("2 x 16->20", 0, 0), ("2 x 16->20", None, 0)]
    assert sets[0].error_kind == "closed" and len(sets[0].runs) == 1


def test_prompt_building_grows_the_text_until_it_tokenizes_long_enough() -> None:
    # A tokenizer that yields exactly the asked length is enough at once.
    exact = FakeServer(tokenize_cap=24)
    (run_set,) = _run(exact, plan_sets([(24, 4)], [1], warm=0, real_output=None))
    assert run_set.complete and exact.tokenize_calls == 1
    # One that never yields enough: six tries from 16 words, growing by half plus 16.
    short = FakeServer(tokenize_cap=9)
    (run_set,) = _run(short, plan_sets([(10, 4)], [1], warm=0, real_output=None))
    assert short.tokenize_calls == 6 and not short.requests
    assert run_set.error_kind == "prompt"
    assert run_set.error == "could not build a 10-token prompt from 514 words"  # 16, 40, 76, 130, 211, 332


def test_random_prompts_differ_between_invocations_with_the_same_seed() -> None:
    # The nonce, not only the seed, makes a prompt: a second benchmark must not hit the first's cache.
    sent: list[tuple[int, ...]] = []
    for _ in range(2):
        server = FakeServer()
        _run(
            server,
            plan_sets([(32, 4)], [1], warm=0, real_output=None),
            prompt_mode="random",
            vocab=500,
            seed=3,
        )
        sent += [tuple(r["prompt"]) for r in server.requests]
    assert len(sent) == 2 and sent[0] != sent[1]
    assert all(len(p) == 32 and max(p) < 500 for p in sent)


def test_bad_input_names_the_thing_and_the_fix() -> None:
    assert parse_shapes(["1:2"]) == [(1, 2)]  # the smallest shape there is
    with pytest.raises(BadInput) as caught:
        parse_shapes(["0:2"])
    assert caught.value.one_line() == (
        "bad shape '0:2' (fix: write INPUT:OUTPUT tokens, e.g. --shape 2048:512 (output at least 2))"
    )
    with pytest.raises(BadInput) as caught:
        plan_sets([(1, 2)], [1], -1, None)
    assert caught.value.one_line() == "--warm -1 is negative (fix: pass 0 or more warm runs)"
    with pytest.raises(BadInput) as caught:
        plan_sets([(1, 2)], [2, 0], 1, None)
    assert caught.value.one_line() == "--concurrency must be at least 1 (fix: pass a positive number)"
    with pytest.raises(BadInput) as caught:
        require_vocab(Endpoint("http://h:1", "m", "vllm"), "random")
    assert caught.value.one_line() == (
        "random-token prompts need the vocabulary size; http://h:1 does not list it "
        "(fix: pass --vocab-size N (the tokenizer's size), or --prompts words)"
    )
    require_vocab(Endpoint("http://h:1", "m", "vllm"), "words")
