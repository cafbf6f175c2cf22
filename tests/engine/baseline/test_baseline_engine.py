"""The baseline against the real llama-server: facts read from the running server, a baseline accepted
from a real smoke run, and a server slowed on purpose (no draft accepted) failed by `baseline check`
with output tok/s named."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gh200.profiles import load_profile
from gh200.profiles.schema import Profile, SpeculativeSpec

pytestmark = pytest.mark.engine
PREFIX = "tbase-"
# The slowed server drafts 12 tokens per step and has none accepted (synthetic acceptance), as the
# rollout engine test slows it: several times slower, so the verdict never depends on the machine's
# noise. With 3 drafted the slowdown was small enough that a busy 2-core machine hid it (TTFT +61%,
# interval -24%..+441%, tok/s not significant: passed).
SLOW_DRAFT = 12


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _variant(name: str, slowed: bool) -> Profile:
    base = load_profile("local-tiny")
    # One server thread on the 2-core machine: with two, any other runnable process stalls the
    # pair at every step (this test took 5 minutes beside a niced job).
    update: dict[str, Any] = {"threads": 1, "extra_args": []}
    if slowed:
        update |= {
            "speculative": SpeculativeSpec(method="draft", num_speculative_tokens=SLOW_DRAFT),
            "extra_args": ["--spec-synth-rates", ",".join(["0"] * SLOW_DRAFT)],
        }
    settings = base.settings.model_copy(update=update)
    return base.model_copy(update={"name": PREFIX + name, "port": _free_port(), "settings": settings})


@pytest.fixture()
def deployed(engine: Any) -> Iterator[Any]:
    from gh200.deploy.deploy import deploy, stop
    from gh200.deploy.tinymodel import ensure_tiny_model
    from gh200.images.build import ensure_image

    ensure_tiny_model(load_profile("local-tiny"))
    ensure_image(engine, "llama_cpp", progress=False)
    names: list[str] = []

    def make(profile: Profile) -> Profile:
        names.append(profile.name)
        deploy(engine, profile, progress=False, smoke=None)
        return profile

    yield make
    for name in names:
        stop(engine, name)


def test_facts_baseline_and_a_slowed_server_on_the_real_llama_server(
    deployed: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gh200_cli: Callable[..., tuple[int, str, str]],
) -> None:
    from gh200.bench.results import append_records, make_record
    from gh200.bench.run import default_plans, run, target_for_profile

    monkeypatch.setenv("GH200_STATE", str(tmp_path / "state"))
    results = tmp_path / "smoke.jsonl"
    run_ids: list[str] = []
    # Same served name and profile for both, as a rollout would compare them: the slowed variant
    # drafts SLOW_DRAFT tokens per step and has none accepted, so each step costs a draft for nothing.
    for name, slowed in (("fast", False), ("slow", True)):
        profile = deployed(_variant(name, slowed))
        target = target_for_profile(profile)
        plans = default_plans(target, shapes=["32:128"], concurrencies=[1], warm=6, real_output=None)
        outcome = run(target, plans, write_results=False, show_progress=False)
        assert outcome.failed_set is None
        # run() put the host facts into the context every record of the run is made from.
        facts = target.context["facts"]
        assert facts["server_version"], "llama-server's /props names its build"
        assert facts["server_version"] == target.endpoint.server_version
        assert facts["kernel"] == os.uname().release and facts["page_size"] == os.sysconf("SC_PAGE_SIZE")
        context = {**target.context, "profile": "tbase-pair"}
        append_records(results, [make_record(s, context, outcome.run_id) for s in outcome.sets])
        run_ids.append(outcome.run_id)
    code, out, _ = gh200_cli(["baseline", "accept", run_ids[0], "--results", str(results), "--json"])
    assert code == 0
    (accepted,) = json.loads(out)["baselines"]
    assert accepted["profile"] == "tbase-pair" and accepted["runs"] == 7
    code, out, _ = gh200_cli(["baseline", "check", run_ids[1], "--results", str(results), "--json"])
    (verdict,) = json.loads(out)["verdicts"]
    # A string, so pytest shows every comparison (medians, change, p) instead of a cut repr.
    assert code == 1, json.dumps(verdict["comparisons"])
    assert verdict["status"] == "regression" and verdict["metric"] == "output_tok_s", verdict
    assert verdict["worse_by"] > 0.05
