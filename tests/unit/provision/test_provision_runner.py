"""gh200.provision.runner: events to task results, stats to host summaries, command lines, messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from gh200.provision.runner import (
    ProvisionInputError,
    RunResult,
    TaskResult,
    build_cmdline,
    check_inventory,
    classify,
    failure_message,
    idempotence_message,
    resolve_playbook,
    summarize,
)


def _event(kind: str, **data: object) -> dict[str, object]:
    base = {"host": "gh200-ws", "task": "Install the NVIDIA driver", "role": "gh200_nvidia_driver", "res": {}}
    base.update(data)
    return {"event": kind, "event_data": base}


def test_ok_changed_failed_skipped_unreachable_and_ignored_events() -> None:
    assert classify(_event("runner_on_ok", res={"changed": False})).status == "ok"  # type: ignore[union-attr]
    assert classify(_event("runner_on_ok", res={"changed": True})).status == "changed"  # type: ignore[union-attr]
    failed = classify(_event("runner_on_failed", res={"msg": "non-zero return code", "stderr": "E: boom"}))
    assert failed is not None and failed.status == "failed"
    assert failed.message == "non-zero return code: E: boom"
    ignored = classify(_event("runner_on_failed", ignore_errors=True, res={"msg": "x"}))
    assert ignored is not None and ignored.status == "ignored"
    skipped = classify(_event("runner_on_skipped", res={"skip_reason": "Conditional result was False"}))
    assert skipped is not None and (skipped.status, skipped.message) == (
        "skipped",
        "Conditional result was False",
    )
    unreachable = classify(_event("runner_on_unreachable", res={"msg": "ssh: connect refused"}))
    assert unreachable is not None and unreachable.status == "unreachable"


def test_debug_messages_are_kept_so_skipped_steps_say_why() -> None:
    result = classify(
        _event("runner_on_ok", task_action="ansible.builtin.debug", res={"msg": "skipped  x:\n y"})
    )
    assert result is not None and result.message == "skipped x: y"


def test_non_result_events_are_ignored() -> None:
    assert classify({"event": "playbook_on_task_start", "event_data": {}}) is None
    assert classify({"event": "verbose", "stdout": "..."}) is None


def test_stats_become_per_host_summaries() -> None:
    stats = {
        "ok": {"a": 10, "b": 3},
        "changed": {"a": 2},
        "failures": {"b": 1},
        "dark": {"c": 1},
        "skipped": {"a": 4},
        "processed": {"a": 1, "b": 1, "c": 1},
    }
    hosts = summarize(stats)
    assert (hosts["a"].ok, hosts["a"].changed, hosts["a"].skipped, hosts["a"].failed) == (10, 2, 4, 0)
    assert hosts["b"].failed == 1 and hosts["c"].unreachable == 1
    assert summarize(None) == {}


def test_cmdline_options_and_bad_extra_vars() -> None:
    line = build_cmdline(
        check=True, tags=["driver", "cuda"], skip_tags=["bundle"], extra_vars=["a=1", "@v.yml"]
    )
    assert line == "--check --tags driver,cuda --skip-tags bundle --extra-vars a=1 --extra-vars @v.yml"
    assert build_cmdline() == ""
    # ansible-playbook's JSON form, for lists and dicts on the command line.
    assert build_cmdline(extra_vars=['{"a": [1]}']) == """--extra-vars '{"a": [1]}'"""
    with pytest.raises(ProvisionInputError, match="KEY=VALUE"):
        build_cmdline(extra_vars=["novalue"])


def test_playbooks_by_name_or_path(tmp_path: Path) -> None:
    assert resolve_playbook("provision").name == "provision.yml"
    own = tmp_path / "mine.yml"
    own.write_text("---\n")
    assert resolve_playbook(str(own)) == own.resolve()
    with pytest.raises(ProvisionInputError) as err:
        resolve_playbook("nosuch")
    assert err.value.exit_code == 2 and "provision, site" in (err.value.fix or "")


def test_missing_inventory_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ProvisionInputError, match="does not exist"):
        check_inventory(tmp_path / "nope")


def _run(results: list[TaskResult], rc: int = 0) -> RunResult:
    return RunResult(
        playbook="provision",
        status="failed" if rc else "successful",
        rc=rc,
        artifacts_dir="/a",
        seconds=1.0,
        results=results,
    )


def test_failure_and_idempotence_messages_name_host_and_task() -> None:
    bad = TaskResult("h1", "Check the key of docker", "gh200_container_runtime", "failed", "not key 0123")
    run = _run([bad, TaskResult("h1", "t", "", "failed")], rc=2)
    assert failure_message(run) == (
        "provision failed on h1 at gh200_container_runtime : Check the key of docker: "
        "not key 0123 (and 1 more)"
    )
    assert "no failed task reported" in failure_message(_run([], rc=2))
    changed = _run([TaskResult("h1", f"task {i}", "r", "changed") for i in range(10)])
    text = idempotence_message(changed)
    assert text.startswith("the second run of provision changed 10 task(s): h1: r : task 0;")
    assert text.endswith("(and 2 more)")
    assert changed.changed is False  # no stats: hosts' counts, not results, decide "changed"


def test_an_unreachable_host_is_never_ok() -> None:
    """rc 0 with a host the runner could not reach (stats "dark") is a failed run, not a success."""
    hosts = summarize({"ok": {"h1": 3}, "dark": {"h1": 1}})
    unreachable = TaskResult("h1", "Gathering Facts", "", "unreachable", "ssh: connect refused")
    run = RunResult(
        playbook="provision",
        status="successful",
        rc=0,
        artifacts_dir="/a",
        seconds=1.0,
        hosts=hosts,
        results=[unreachable],
    )
    assert run.ok is False
    assert run.failed_tasks() == [unreachable]
    assert failure_message(run).startswith("provision failed on h1 at Gathering Facts")
    assert run.as_json()["ok"] is False


def test_reboot_pending_and_refusals_come_from_their_tasks() -> None:
    pending = TaskResult("h1", "Report a pending reboot", "gh200_nvidia_driver", "ok", "reboot pending: x")
    run = _run([pending, TaskResult("h2", "Report a pending reboot", "r", "skipped")])
    assert run.reboot_pending() == {"h1": "reboot pending: x"}
    assert run.refused() is None
    refusal = TaskResult("h1", "Refuse a driver pin apt cannot install", "r", "failed", "driver pin x")
    assert _run([refusal], rc=2).refused() == refusal
    assert _run([TaskResult("h1", "Install the NVIDIA driver", "r", "failed", "E:")], rc=2).refused() is None
