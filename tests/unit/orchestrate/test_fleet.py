"""The fleet summary (per-host JSON -> passed / accepted / regressed / failed / not attempted), its
exit codes, and bad input refused before Ansible runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gh200.cli import app
from gh200.orchestrate import fleet
from gh200.provision import runner as runner_mod
from gh200.provision.runner import HostSummary, RunResult, TaskResult

REGRESSION = {
    "metric": "output_tok_s",
    "shape": "128x64",
    "concurrency": 1,
    "baseline_median": 301.5,
    "new_median": 240.2,
    "change_pct": -20.33,
    "p_value": 0.0002,
}


def _rollout(outcome: str, **kw: Any) -> dict[str, Any]:
    return {
        "changed": outcome != "failed",
        "host": "h",
        "profile": "local-tiny",
        "outcome": outcome,
        "message": kw.pop("message", f"{outcome} message"),
        "run_id": "abcd1234",
        "baseline_run_id": "0123abcd",
        "restored": None,
        "regressions": [],
        "changes": {},
        **kw,
    }


def _keep(results: Path, host: str, rc: int, result: dict[str, Any] | None, stderr: str = "") -> None:
    record = {"host": host, "rc": rc, "argv": ["rollout", "local-tiny"], "result": result, "stderr": stderr}
    (results / f"{host}.json").write_text(json.dumps(record))


def test_regression_stops_the_fleet_and_later_hosts_are_not_attempted(tmp_path: Path) -> None:
    _keep(tmp_path, "ws1", 0, _rollout("passed"))
    _keep(tmp_path, "ws2", 0, _rollout("accepted"))
    regressed = _rollout(
        "rolled_back",
        regressions=[REGRESSION],
        changes={"image": ["sha256:aaa", "sha256:bbb"]},
        restored="local-tiny-1234abcd",
    )
    _keep(tmp_path, "ws3", 3, regressed)
    summary = fleet.summarize("rollout", "local-tiny", ["ws1", "ws2", "ws3", "ws4", "ws5"], tmp_path)
    assert [h.outcome for h in summary.hosts] == [
        "passed",
        "accepted",
        "regressed",
        "not_attempted",
        "not_attempted",
    ]
    assert summary.stopped_at is not None and summary.stopped_at.host == "ws3"
    assert summary.exit_code() == 3
    out = summary.as_json()
    assert (
        out["stopped_at"] == "ws3" and out["stopped_because"] == "regressed" and out["outcome"] == "stopped"
    )
    assert out["counts"] == {"passed": 1, "accepted": 1, "regressed": 1, "failed": 0, "not_attempted": 2}
    ws3 = out["hosts"][2]
    assert ws3["regressions"] == [REGRESSION] and ws3["changes"] == {"image": ["sha256:aaa", "sha256:bbb"]}
    assert ws3["restored"] == "local-tiny-1234abcd" and ws3["rollout_outcome"] == "rolled_back"
    with pytest.raises(fleet.FleetStopped) as err:
        fleet.raise_for(summary)
    assert err.value.exit_code == 3
    line = err.value.one_line()
    assert "ws3" in line and "output_tok_s 128x64 c1: 301.5 -> 240.2 (-20.3%)" in line
    assert "not attempted: ws4, ws5" in line


def test_no_baseline_counts_as_passed_and_a_completed_fleet_exits_zero(tmp_path: Path) -> None:
    _keep(tmp_path, "a", 0, _rollout("no_baseline"))
    _keep(tmp_path, "b", 0, _rollout("passed"))
    summary = fleet.summarize("rollout", "local-tiny", ["a", "b"], tmp_path)
    assert [(h.outcome, h.rollout_outcome) for h in summary.hosts] == [
        ("passed", "no_baseline"),
        ("passed", "passed"),
    ]
    assert summary.stopped_at is None and summary.exit_code() == 0 and summary.changed
    fleet.raise_for(summary)  # does not raise


def test_the_exit_code_is_the_contract_over_the_outcome_word(tmp_path: Path) -> None:
    # A rollout that says "passed" but exited 3 rolled back; one that exited 1 failed.
    _keep(tmp_path, "a", 3, _rollout("passed"))
    _keep(tmp_path, "b", 1, _rollout("passed"))
    summary = fleet.summarize("rollout", "p", ["a", "b"], tmp_path)
    assert [h.outcome for h in summary.hosts] == ["regressed", "failed"]


def test_failure_without_json_keeps_the_error_line(tmp_path: Path) -> None:
    _keep(tmp_path, "a", 1, None, stderr="error: engine gone (fix: start podman)\n")
    summary = fleet.summarize("rollout", "p", ["a", "b"], tmp_path)
    assert summary.hosts[0].outcome == "failed" and "engine gone" in summary.hosts[0].message
    assert summary.hosts[1].outcome == "not_attempted"
    assert summary.exit_code() == 1
    with pytest.raises(fleet.FleetFailed) as err:
        fleet.raise_for(summary)
    assert err.value.exit_code == 1 and "fleet stopped at a: error: engine gone" in err.value.one_line()


def test_a_host_that_failed_before_its_command_is_failed_not_unattempted(tmp_path: Path) -> None:
    summary = fleet.summarize("rollout", "p", ["a", "b"], tmp_path, {"a": "gh200_fleet : Check: unreachable"})
    assert [h.outcome for h in summary.hosts] == ["failed", "not_attempted"]


def test_upgrade_takes_the_worst_of_its_rollouts(tmp_path: Path) -> None:
    upgrade = {
        "changed": True,
        "rollouts": [_rollout("passed"), _rollout("rolled_back", regressions=[REGRESSION])],
        "message": "vLLM 0.33.1: 1 of 2 profiles rolled back",
    }
    _keep(tmp_path, "a", 3, upgrade)
    summary = fleet.summarize("upgrade", "0.33.1", ["a"], tmp_path)
    assert summary.hosts[0].outcome == "regressed" and summary.hosts[0].rollout_outcome == "rolled_back"
    assert summary.hosts[0].regressions == [REGRESSION]


def _inventory(path: Path, groups: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"all": {"children": groups}}, sort_keys=False))
    return path


def test_inventory_hosts_in_serial_order_with_child_groups(tmp_path: Path) -> None:
    inv = _inventory(
        tmp_path / "hosts.yml",
        {
            "gh200": {
                "hosts": {"ws-b": {}, "ws-a": {}},
                "children": {"lab": {"hosts": {"ws-c": {}, "ws-a": {}}}},
            },
            "other": {"hosts": {"db": {}}},
        },
    )
    assert fleet.inventory_hosts(inv) == ["ws-b", "ws-a", "ws-c"]
    empty = _inventory(tmp_path / "empty.yml", {"other": {"hosts": {"db": {}}}})
    with pytest.raises(fleet.FleetInputError, match="no hosts in group 'gh200'"):
        fleet.inventory_hosts(empty)


def _no_playbook(*_: Any, **__: Any) -> RunResult:
    raise AssertionError("the playbook must not run on bad input")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["rollout", "no-such-profile"], "no profile named 'no-such-profile'"),
        (["rollout", "local-tiny", "-i", "/nonexistent/inv"], "inventory /nonexistent/inv does not exist"),
        (["upgrade", "vllm", "latest"], "vLLM version 'latest' is not a version number"),
        (
            ["rollout", "local-tiny", "--warm", "2"],
            "--warm 2: the gate compares warm runs and needs at least 3",
        ),
        (["rollout", "local-tiny", "--shape", "512"], "bad shape '512'"),
        (["rollout", "local-tiny", "--min-effect", "1"], "--min-effect 1: the gate's floor is a fraction"),
        (["rollout", "local-tiny", "--min-effect", "abc"], "--min-effect abc:"),
        (["upgrade", "vllm", "0.33.1", "--min-effect", "0"], "--min-effect 0:"),
    ],
)
def test_bad_input_exits_2_before_ansible(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], expected: str
) -> None:
    monkeypatch.setattr(runner_mod, "run_playbook", _no_playbook)
    inv = _inventory(tmp_path / "hosts.yml", {"gh200": {"hosts": {"ws1": {}}}})
    if "-i" not in args:
        args = [*args, "-i", str(inv)]
    out = CliRunner().invoke(app, ["fleet", *args, "--results", str(tmp_path / "r")], standalone_mode=False)
    assert out.exception is not None and getattr(out.exception, "exit_code", None) == 2, out.exception
    assert expected in str(out.exception)
    assert not (tmp_path / "r").exists()


def test_cli_runs_the_playbook_and_exits_3_with_the_summary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    inv = _inventory(tmp_path / "hosts.yml", {"gh200": {"hosts": {"ws1": {}, "ws2": {}, "ws3": {}}}})
    seen: dict[str, Any] = {}

    def fake(inventory: Path, playbook: str = "provision", **kw: Any) -> RunResult:
        variables = json.loads(kw["extra_vars"][0])
        seen.update(playbook=playbook, **variables)
        results = Path(variables["gh200_fleet_results_dir"])
        _keep(results, "ws1", 0, _rollout("passed"))
        _keep(
            results, "ws2", 3, _rollout("rolled_back", regressions=[REGRESSION], changes={"threads": [2, 1]})
        )
        return RunResult(
            playbook=playbook,
            status="failed",
            rc=2,
            artifacts_dir="/artifacts/x",
            seconds=5.0,
            hosts={"ws1": HostSummary(ok=4), "ws2": HostSummary(ok=3, failed=1)},
            results=[
                TaskResult(
                    "ws2", "Stop the fleet at a host that regressed or failed", "gh200_fleet", "failed"
                )
            ],
        )

    monkeypatch.setattr(runner_mod, "run_playbook", fake)
    results = tmp_path / "results"
    out = CliRunner().invoke(
        app,
        [
            "fleet",
            "rollout",
            "local-tiny",
            "-i",
            str(inv),
            "--accept",
            "--shape",
            "256:64",
            "--warm",
            "4",
            "--results",
            str(results),
            "--json",
        ],
        standalone_mode=False,
    )
    assert getattr(out.exception, "exit_code", None) == 3, out.exception
    assert seen["playbook"] == "upgrade" and seen["gh200_fleet_profile"] == "local-tiny"
    assert seen["gh200_fleet_accept"] is True and seen["gh200_fleet_action"] == "rollout"
    assert seen["gh200_fleet_rollout_args"] == ["--shape", "256:64", "--warm", "4"]
    summary = json.loads(out.stdout)
    assert [(h["host"], h["outcome"]) for h in summary["hosts"]] == [
        ("ws1", "passed"),
        ("ws2", "regressed"),
        ("ws3", "not_attempted"),
    ]
    assert summary["hosts"][1]["changes"] == {"threads": [2, 1]}
    # The table says the same to a person.
    monkeypatch.setattr(runner_mod, "run_playbook", fake)
    table = CliRunner().invoke(
        app,
        ["fleet", "rollout", "local-tiny", "-i", str(inv), "--results", str(tmp_path / "r2")],
        standalone_mode=False,
    )
    assert getattr(table.exception, "exit_code", None) == 3
    text = " ".join(table.output.split())
    for needle in ("ws1", "passed", "ws2", "regressed", "-20.3%", "threads: 2 -> 1", "ws3", "not attempted"):
        assert needle in text, (needle, text)


def test_a_non_empty_results_directory_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(runner_mod, "run_playbook", _no_playbook)
    inv = _inventory(tmp_path / "hosts.yml", {"gh200": {"hosts": {"ws1": {}}}})
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "ws1.json").write_text("{}")
    with pytest.raises(fleet.FleetInputError, match="is not empty"):
        fleet.run_fleet(inv, "rollout", profile="local-tiny", results_dir=tmp_path / "r")


def test_the_rollout_json_the_fleet_reads_carries_changed() -> None:
    # gh200_run fails a task whose JSON has no top-level `changed` (rc 0): the fleet's contract.
    from gh200.orchestrate.rollout import RolloutResult

    keys = set(RolloutResult("passed", "local-tiny", "ws1").as_json())
    assert {"changed", "host", "profile", "outcome", "message", "regressions", "changes", "restored"} <= keys


@pytest.mark.parametrize(
    ("args", "floor"),
    [
        (["rollout", "local-tiny", "--min-effect", "0.2"], "0.2"),
        # Unset: no extra var, so a floor set in the inventory (per host, per group) still applies.
        (["rollout", "local-tiny"], None),
        (["upgrade", "vllm", "0.33.1", "--min-effect", "0.25"], "0.25"),
    ],
)
def test_the_floor_reaches_the_playbook_only_when_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], floor: str | None
) -> None:
    inv = _inventory(tmp_path / "hosts.yml", {"gh200": {"hosts": {"ws1": {}}}})
    seen: dict[str, Any] = {}

    def fake(inventory: Path, playbook: str = "provision", **kw: Any) -> RunResult:
        variables = json.loads(kw["extra_vars"][0])
        seen.update(variables)
        _keep(Path(variables["gh200_fleet_results_dir"]), "ws1", 0, _rollout("passed"))
        return RunResult(
            playbook=playbook,
            status="successful",
            rc=0,
            artifacts_dir="/a",
            seconds=1.0,
            hosts={},
            results=[],
        )

    monkeypatch.setattr(runner_mod, "run_playbook", fake)
    out = CliRunner().invoke(
        app,
        ["fleet", *args, "-i", str(inv), "--results", str(tmp_path / "r"), "--json"],
        standalone_mode=False,
    )
    assert out.exception is None, out.exception
    assert seen.get("gh200_fleet_min_effect") == floor
