"""rollout's own logic with a fake deploy and a fake benchmark; the baseline store, the gate and the
results file are the real ones (in a temporary state directory).

The fake deploy does what deploy does with its smoke callback: runs it on the new container and,
when it raises, restores the previous container and re-raises (a DeployFailed keeps its class). The
engine tests (tests/engine/orchestrate) run the real deploy and a real llama-server.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gh200.baseline.store import find_baseline, this_host
from gh200.bench import run as bench_run
from gh200.bench.client import Endpoint
from gh200.bench.results import append_records, make_record
from gh200.bench.run import Outcome
from gh200.bench.run import Target as BenchTarget
from gh200.bench.smoke import SetPlan
from gh200.deploy.deploy import DeployFailed, DeployResult
from gh200.errors import BadInput, OperationFailed
from gh200.orchestrate import rollout as rollout_module
from gh200.orchestrate.rollout import RolloutResult, rollout, rollout_plans
from gh200.profiles import load_profile, profile_hash
from gh200.profiles.schema import Profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "baseline"))
from baseline_fakes import STEADY, run_set

SHAPE = (64, 128)


@dataclass
class World:
    """The host as the fakes see it: what runs, how fast the next deployment is, what was called."""

    running: list[str] = field(default_factory=lambda: ["gh200-local-tiny-old00000"])
    speed: list[float] = field(default_factory=lambda: list(STEADY))
    # Speeds of the next measurements, in order, before `speed` applies again (one busy set, say).
    queue: list[list[float]] = field(default_factory=list)
    identical: bool = False
    fail_start: bool = False
    fail_before: OperationFailed | None = None
    deployed: list[Profile] = field(default_factory=list)
    measured: int = 0
    fresh_server: list[bool] = field(default_factory=list)


@pytest.fixture()
def world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> World:
    monkeypatch.setenv("GH200_STATE", str(tmp_path / "state"))
    w = World()

    def fake_deploy(_client: Any, profile: Profile, *, progress: bool, smoke: Any) -> DeployResult:
        w.deployed.append(profile)
        if w.identical:
            return DeployResult(False, [])
        if w.fail_before is not None:
            raise w.fail_before
        if w.fail_start:
            raise DeployFailed("local-tiny: not ready after 3s; rolled back: restarted", "read the log")
        before = list(w.running)
        w.running = [f"gh200-{profile.name}-{profile_hash(profile)[:8]}"]
        try:
            smoke(None, None)
        except (OperationFailed, BadInput) as err:
            w.running = before
            kind = type(err) if isinstance(err, DeployFailed) else DeployFailed
            raise kind(err.message + "; rolled back: restarted and healthy", err.fix) from err
        return DeployResult(True, [])

    def fake_target(profile: Profile, _client: Any = None) -> BenchTarget:
        context = {
            "profile": profile.name,
            "profile_hash": profile_hash(profile),
            "image": profile.image.ref,
            "launch_args": ["llama-server", "--port", str(profile.port), *profile.settings.extra_args],
        }
        return BenchTarget(
            Endpoint("http://127.0.0.1:1", "tiny-llama", "llama_cpp"), profile.name, context, profile
        )

    def fake_run(
        target: BenchTarget, plans: list[SetPlan], *, results_path: Path, fresh_server: bool = False, **_: Any
    ) -> Outcome:
        w.measured += 1
        w.fresh_server.append(fresh_server)
        run_id = f"{w.measured:04d}abcd"
        speed = w.queue.pop(0) if w.queue else w.speed
        sets = []
        for plan in plans:
            assert plan.input_tokens is not None
            sets.append(run_set(speed[: plan.warm + 1], (plan.input_tokens, plan.output_tokens)))
        append_records(results_path, [make_record(s, target.context, run_id) for s in sets])
        return Outcome(target, sets, results_path, run_id=run_id)

    class Container:
        def __init__(self, name: str) -> None:
            self.name = name

    monkeypatch.setattr(rollout_module, "deploy", fake_deploy)
    monkeypatch.setattr(bench_run, "target_for_profile", fake_target)
    monkeypatch.setattr(bench_run, "run", fake_run)
    monkeypatch.setattr(
        rollout_module, "running_containers", lambda _c, _p: [Container(n) for n in w.running]
    )
    return w


class FakeImages:
    def __init__(self, present: set[str]) -> None:
        self.present = present

    def get(self, ref: str) -> object:
        from docker.errors import ImageNotFound

        if ref not in self.present:
            raise ImageNotFound(ref)
        return object()


class FakeClient:
    def __init__(self, images: set[str] | None = None) -> None:
        self.images = FakeImages(images or set())


def tiny(**settings: Any) -> Profile:
    base = load_profile("local-tiny")
    return base.model_copy(update={"settings": base.settings.model_copy(update=settings)})


def go(profile: Profile | None = None, **kwargs: Any) -> RolloutResult:
    kwargs.setdefault("shape", SHAPE)
    kwargs.setdefault("client", FakeClient())
    return rollout(profile or tiny(), progress=False, **kwargs)


def test_first_rollout_passes_without_a_baseline_and_says_how_to_make_one(world: World) -> None:
    result = go()
    assert result.outcome == "no_baseline" and result.exit_code == 0
    assert result.run_id == "0001abcd" and result.baseline_run_id is None
    assert "--accept" in result.message and "gh200 baseline accept 0001abcd" in result.message
    assert "64:128 c1" in result.message
    assert find_baseline(this_host(), "local-tiny", "64:128", 1) is None  # nothing accepted by itself


def test_accept_makes_the_run_the_baseline_then_an_unchanged_one_passes(world: World) -> None:
    first = go(accept=True)
    assert first.outcome == "accepted" and first.exit_code == 0
    base = find_baseline(this_host(), "local-tiny", "64:128", 1)
    assert base is not None and base.run_id == first.run_id
    world.speed = [s + 0.5 for s in STEADY]
    again = go()
    assert again.outcome == "passed" and again.exit_code == 0 and not again.regressions
    assert again.baseline_run_id == first.run_id and again.run_id != first.run_id
    assert f"baseline run {first.run_id}" in again.message and "tok/s" in again.message
    assert find_baseline(this_host(), "local-tiny", "64:128", 1).run_id == first.run_id  # type: ignore[union-attr]


def test_a_slower_version_is_rolled_back_with_the_metric_and_the_change_named(world: World) -> None:
    first = go(accept=True)
    world.running = ["gh200-local-tiny-first000"]
    world.speed = [s * 0.7 for s in STEADY]
    slowed = tiny(extra_args=["--spec-synth-rates", "0,0,0"])
    result = go(slowed)
    assert result.outcome == "rolled_back" and result.exit_code == 3
    assert result.restored == "gh200-local-tiny-first000" and world.running == [result.restored]
    assert result.baseline_run_id == first.run_id and result.run_id not in (None, first.run_id)
    metrics = {r.comparison.metric: r for r in result.regressions}
    assert "output_tok_s" in metrics and "ttft_ms" not in metrics
    row = metrics["output_tok_s"].as_json()
    assert row["change_pct"] == pytest.approx(-30.0, abs=0.5) and row["p_value"] < 0.05
    assert row["baseline_median"] == pytest.approx(305.5) and row["new_median"] == pytest.approx(213.85)
    assert (row["shape"], row["concurrency"]) == ("64:128", 1)
    assert set(result.changes) == {"profile_hash", "launch_args"}
    assert result.changes["launch_args"][1][-2:] == ["--spec-synth-rates", "0,0,0"]
    assert "output_tok_s fell 30.0% at 64:128 c1 (median 305.5 -> 213.8 tok/s" in result.message
    assert "launch args +--spec-synth-rates 0,0,0" in result.message
    assert "restored gh200-local-tiny-first000" in result.message
    assert "\n" not in result.message
    # The rolled-back run is recorded, never accepted.
    assert find_baseline(this_host(), "local-tiny", "64:128", 1).run_id == first.run_id  # type: ignore[union-attr]


def test_a_small_drift_is_not_a_regression(world: World) -> None:
    go(accept=True)
    world.speed = [s * 0.98 for s in STEADY]  # 2% slower: under the gate's 5% floor
    assert go().outcome == "passed"


def test_an_improvement_passes(world: World) -> None:
    go(accept=True)
    world.speed = [s * 1.5 for s in STEADY]
    result = go(tiny(threads=1))
    assert result.outcome == "passed" and "+50.0%" in result.message


def test_a_regression_with_accept_is_still_rolled_back_and_not_accepted(world: World) -> None:
    first = go(accept=True)
    world.speed = [s * 0.6 for s in STEADY]
    result = go(tiny(threads=1), accept=True)
    assert result.outcome == "rolled_back"
    assert find_baseline(this_host(), "local-tiny", "64:128", 1).run_id == first.run_id  # type: ignore[union-attr]


def test_slower_while_the_same_version_already_ran_is_a_failure_not_a_roll_back(world: World) -> None:
    go(accept=True)
    world.identical, world.speed = True, [s * 0.6 for s in STEADY]
    result = go()
    assert result.outcome == "failed" and result.exit_code == 1 and result.restored is None
    assert "already running" in result.message and "output_tok_s fell" in result.message
    assert result.regressions


def test_a_new_version_that_never_gets_healthy_is_failed_and_the_old_one_named(world: World) -> None:
    world.fail_start = True
    result = go()
    assert result.outcome == "failed" and result.exit_code == 1
    assert "not ready" in result.message and result.run_id is None
    assert result.restored == "gh200-local-tiny-old00000"


def test_a_deploy_that_fails_before_starting_anything_is_failed_not_an_exception(world: World) -> None:
    world.fail_before = OperationFailed("image gh200/x is not here and pulling it failed", "pull it")
    result = go()
    assert result.outcome == "failed" and result.exit_code == 1
    assert result.message.startswith("image gh200/x is not here") and world.measured == 0


def test_no_previous_container_means_nothing_restored(world: World) -> None:
    go(accept=True)
    world.running = []
    world.speed = [s * 0.6 for s in STEADY]

    result = go(tiny(threads=1))
    assert result.outcome == "rolled_back" and result.restored is None
    assert "nothing to restore" in result.message


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"warm_runs": 0}, "--warm 0"),
        ({"warm_runs": -3}, "--warm -3"),
        ({"warm_runs": 2}, "at least 3"),
        ({"shape": (2000, 100)}, "needs 2100 tokens"),
        ({"shape": (0, 100)}, "is empty"),
        ({"image": "Not A Ref"}, "not an image reference"),
        ({"image": "gh200-llama_cpp:missing"}, "not on this host"),
        ({"min_effect": 0.0}, "--min-effect 0.0"),
        ({"min_effect": 1.0}, "--min-effect 1.0"),
        ({"min_effect": -0.1}, "between 0 and 1"),
        ({"min_effect": float("nan")}, "--min-effect nan"),
    ],
)
def test_bad_input_fails_before_any_deploy(world: World, kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(BadInput) as caught:
        go(**kwargs)
    assert words in caught.value.message
    assert world.deployed == [] and world.measured == 0


def test_image_runs_as_given_without_the_recipe(world: World) -> None:
    result = go(image="localhost/gh200-llama_cpp:new", client=FakeClient({"localhost/gh200-llama_cpp:new"}))
    assert result.outcome == "no_baseline"
    (deployed,) = world.deployed
    assert deployed.image.ref == "localhost/gh200-llama_cpp:new" and deployed.image.recipe is None
    assert deployed.name == "local-tiny"


def test_default_shapes_come_from_the_profile() -> None:
    tiny_plans = rollout_plans(load_profile("local-tiny"), None, 10)
    # local-tiny has no expected values and 2048 tokens per slot: the posts' 2048->512 does not fit.
    assert [(p.shape, p.concurrency, p.warm) for p in tiny_plans] == [("256:512", 1, 10)]
    glm = load_profile("glm52-awq-mtp3-bench")
    expected = sorted({(e.input_tokens, e.output_tokens, e.concurrency) for e in glm.expected})
    assert [
        (p.input_tokens, p.output_tokens, p.concurrency) for p in rollout_plans(glm, None, 10)
    ] == expected


def test_json_has_exactly_the_documented_keys(world: World) -> None:
    go(accept=True)
    world.speed = [s * 0.7 for s in STEADY]
    doc = go(tiny(threads=1)).as_json()
    assert set(doc) == {
        "changed",
        "host",
        "profile",
        "outcome",
        "message",
        "run_id",
        "baseline_run_id",
        "restored",
        "min_effect",
        "flagged_runs",
        "regressions",
        "changes",
    }
    assert doc["min_effect"] == 0.05  # the gate's default floor, named since a host may need another
    # A new version was started and rolled back: Ansible reports the host changed.
    assert doc["outcome"] == "rolled_back" and doc["changed"] is True
    assert doc["regressions"] and set(doc["regressions"][0]) == {
        "metric",
        "shape",
        "concurrency",
        "baseline_median",
        "new_median",
        "change_pct",
        "p_value",
    }
    assert all(isinstance(v, list) and len(v) == 2 for v in doc["changes"].values())
    json.dumps(doc)


@pytest.mark.parametrize(
    ("outcome", "code"),
    [("passed", 0), ("accepted", 0), ("no_baseline", 0), ("rolled_back", 3), ("failed", 1)],
)
def test_cli_exit_codes_and_one_json_object(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], outcome: str, code: int
) -> None:
    from gh200.cli import main

    canned = RolloutResult(outcome, "local-tiny", "h", run_id="r1", message=f"it {outcome}")  # type: ignore[arg-type]
    monkeypatch.setattr(rollout_module, "rollout", lambda *a, **k: canned)
    for args, json_out in ((["--json"], True), ([], False)):
        monkeypatch.setattr(sys, "argv", ["gh200", "rollout", "local-tiny", *args])
        with pytest.raises(SystemExit) as done:
            main()
        assert done.value.code == code
        out, err = capsys.readouterr()
        if json_out:
            assert json.loads(out) == canned.as_json()
        else:
            assert out == "" and f"it {outcome}" in err


def test_cli_bad_input_exits_2_before_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gh200.cli import main

    def must_not_run(*_a: Any, **_k: Any) -> RolloutResult:
        raise AssertionError("rollout ran")

    for args in (["no-such-profile"], ["local-tiny", "--shape", "x"]):
        monkeypatch.setattr(rollout_module, "rollout", must_not_run)
        monkeypatch.setattr(sys, "argv", ["gh200", "rollout", *args, "--json"])
        with pytest.raises(SystemExit) as done:
            main()
        assert done.value.code == 2
        assert capsys.readouterr().out == ""


def test_a_new_container_is_measured_with_seeded_prompts_a_running_one_with_fresh_ones(world: World) -> None:
    # Seeded prompts are only safe on a server that has served nothing yet (its prefix cache is empty):
    # the container deploy just started, never the one measured in place.
    go(accept=True)
    world.identical = True
    go()
    assert world.fresh_server == [True, False]


# --- the floor (--min-effect) ---------------------------------------------------------------------


@pytest.fixture()
def cli(world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """`gh200 rollout ...` through the real CLI on the fake world; (exit code, stdout, stderr)."""
    from gh200 import engine
    from gh200.cli import main

    connected: list[bool] = []

    def connect() -> FakeClient:
        connected.append(True)
        return FakeClient()

    monkeypatch.setattr(engine, "connect", connect)

    def run(*args: str) -> tuple[int, str, str, bool]:
        monkeypatch.setattr(sys, "argv", ["gh200", "rollout", "local-tiny", "--shape", "64:128", *args])
        connected.clear()
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            main()
        out, err = capsys.readouterr()
        code = done.value.code if isinstance(done.value.code, int) else 1
        return code, out, err, bool(connected)

    return run


def test_a_floor_above_a_ten_percent_slowdown_passes_it_the_default_rolls_it_back(
    world: World, cli: Any
) -> None:
    # A host whose noise needs a 15% floor (`make bench-gate` says so) must be able to apply it: the
    # same 10% slower world is a regression at the default 5% and passes at --min-effect 0.15.
    first = go(accept=True)
    before = list(world.running)
    world.speed = [s * 0.9 for s in STEADY]
    code, out, err, _ = cli("--json")
    assert code == 3, err
    slowed = json.loads(out)
    assert slowed["outcome"] == "rolled_back" and slowed["min_effect"] == 0.05
    assert "gate floor 5%" in slowed["message"], slowed["message"]
    assert {r["metric"] for r in slowed["regressions"]} >= {"output_tok_s"}
    assert slowed["restored"] == before[0] and world.running == before

    code, out, err, _ = cli("--min-effect", "0.15", "--json")
    assert code == 0, err
    passed = json.loads(out)
    assert passed["outcome"] == "passed" and passed["regressions"] == []
    assert passed["min_effect"] == 0.15 and passed["baseline_run_id"] == first.run_id
    assert "passed the gate (floor 15%)" in passed["message"] and "-10.0%" in passed["message"]
    # The floor is only a floor: a 30% slowdown is still rolled back at 15%, and the message says so.
    world.speed = [s * 0.7 for s in STEADY]
    code, out, err, _ = cli("--min-effect", "0.15")
    assert code == 3 and out == ""
    assert "output_tok_s fell 30.0%" in err and "gate floor 15%" in err


@pytest.mark.parametrize("value", ["0", "1", "-0.1", "abc", "1.5", "nan", "inf"])
def test_a_bad_floor_exits_2_naming_the_option_before_any_deploy(world: World, cli: Any, value: str) -> None:
    code, out, err, connected = cli("--min-effect", value, "--json")
    assert code == 2 and out == "", err
    assert f"--min-effect {value}" in err and len(err.strip().splitlines()) == 1, err
    assert world.deployed == [] and world.measured == 0 and not connected


# --- confirmation (--confirm) ----------------------------------------------------------------------

SLOW = [s * 0.7 for s in STEADY]


def test_one_slow_set_that_the_next_does_not_confirm_passes_and_is_named(world: World) -> None:
    # One busy minute slows a whole set; the set measured right after is as fast as the baseline.
    first = go(accept=True)
    world.running = ["gh200-local-tiny-first000"]
    world.queue = [SLOW]
    result = go(tiny(threads=1))
    assert result.outcome == "passed" and result.exit_code == 0 and not result.regressions
    assert world.measured == 3 and result.run_id == "0003abcd" and result.flagged_runs == ["0002abcd"]
    assert "not confirmed: run 0002abcd: output_tok_s fell 30.0%" in result.message, result.message
    assert "then run 0003abcd passed" in result.message and "\n" not in result.message
    # The new container keeps running; the baseline is still the accepted one.
    assert world.running == [f"gh200-local-tiny-{profile_hash(tiny(threads=1))[:8]}"]
    assert find_baseline(this_host(), "local-tiny", "64:128", 1).run_id == first.run_id  # type: ignore[union-attr]
    # The second set ran on the container the first one had warmed: fresh prompts, not the seeded ones.
    assert world.fresh_server == [True, True, False]


def test_a_slowdown_every_set_confirms_is_rolled_back_naming_each_set(world: World) -> None:
    go(accept=True)
    world.running = ["gh200-local-tiny-first000"]
    world.speed = SLOW
    result = go(tiny(threads=1))
    assert result.outcome == "rolled_back" and result.exit_code == 3
    assert world.measured == 3 and result.run_id == "0003abcd" and result.flagged_runs == ["0002abcd"]
    assert result.restored == "gh200-local-tiny-first000" and world.running == [result.restored]
    assert "output_tok_s fell 30.0%" in result.message
    assert "confirms the 1 set(s) before (run 0002abcd: output_tok_s fell 30.0%" in result.message
    assert result.as_json()["flagged_runs"] == ["0002abcd"]


def test_a_set_that_passes_at_once_is_not_measured_again(world: World) -> None:
    go(accept=True)
    result = go(tiny(threads=1))
    assert result.outcome == "passed" and world.measured == 2 and result.flagged_runs == []
    assert "not confirmed" not in result.message


@pytest.mark.parametrize(
    ("confirm", "queue", "outcome", "measured"),
    [
        (0, [SLOW], "rolled_back", 2),  # the first flagged set decides
        (2, [SLOW, SLOW], "passed", 4),  # the third set overrules two
        (2, [SLOW, SLOW, SLOW], "rolled_back", 4),  # all three agree
        (1, [SLOW, SLOW, STEADY], "rolled_back", 3),  # never more sets than asked
    ],
)
def test_confirm_counts_the_further_sets_that_must_agree(
    world: World, confirm: int, queue: list[list[float]], outcome: str, measured: int
) -> None:
    go(accept=True)
    world.queue = [list(q) for q in queue]
    result = go(tiny(threads=1), confirm=confirm)
    assert result.outcome == outcome and world.measured == measured
    assert len(result.flagged_runs) == measured - 2  # every set but the accepted one and the last


def test_slower_in_place_is_confirmed_in_place_too(world: World) -> None:
    go(accept=True)
    world.identical, world.queue = True, [SLOW]
    result = go()
    assert result.outcome == "passed" and world.measured == 3 and result.flagged_runs == ["0002abcd"]
    assert world.fresh_server == [True, False, False]


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", ""])
def test_a_bad_confirm_exits_2_naming_the_option_before_any_deploy(
    world: World, cli: Any, value: str
) -> None:
    code, out, err, connected = cli("--confirm", value, "--json")
    assert code == 2 and out == "", err
    assert f"--confirm {value}" in err and len(err.strip().splitlines()) == 1, err
    assert world.deployed == [] and world.measured == 0 and not connected


def test_confirm_reaches_the_rollout_from_the_cli(world: World, cli: Any) -> None:
    go(accept=True)
    world.queue = [SLOW]
    code, out, err, _ = cli("--confirm", "0", "--json")
    assert code == 3 and json.loads(out)["outcome"] == "rolled_back", err
    world.queue = [SLOW]
    code, out, err, _ = cli("--json")  # the default confirms once: the slow set is overruled
    assert code == 0 and json.loads(out)["flagged_runs"], err
