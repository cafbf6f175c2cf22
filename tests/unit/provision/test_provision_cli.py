"""`gh200 provision` decisions on top of the runner: idempotence verdict, exit codes, JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gh200.cli import app
from gh200.provision import runner as runner_mod
from gh200.provision.runner import HostSummary, RunResult, TaskResult


def _fake_runs(changes: list[int], rc: int = 0) -> Any:
    calls: list[dict[str, Any]] = []

    def fake(inventory: Path, playbook: str = "provision", **kw: Any) -> RunResult:
        n = len(calls)
        calls.append(kw)
        changed = changes[n]
        results = [TaskResult("h1", f"task {i}", "gh200_tuning", "changed") for i in range(changed)]
        return RunResult(
            playbook=playbook,
            status="successful" if rc == 0 else "failed",
            rc=rc,
            artifacts_dir=f"/artifacts/run{n + 1}",
            seconds=2.0,
            hosts={"h1": HostSummary(ok=40, changed=changed, failed=1 if rc else 0)},
            results=results + ([TaskResult("h1", "boom", "", "failed", "E: x")] if rc else []),
        )

    fake.calls = calls  # type: ignore[attr-defined]
    return fake


def _invoke(monkeypatch: pytest.MonkeyPatch, fake: Any, *args: str) -> Any:
    monkeypatch.setattr(runner_mod, "run_playbook", fake)
    return CliRunner().invoke(app, ["provision", *args], standalone_mode=False, catch_exceptions=True)


def test_idempotent_when_the_second_run_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = _fake_runs([12, 0])
    out = _invoke(monkeypatch, fake, "-i", str(tmp_path), "--idempotence", "--json")
    assert out.exception is None, out.exception
    result = json.loads(out.stdout)
    assert result["ok"] and result["idempotent"] is True and result["changed"] is True
    assert [r["artifacts_dir"] for r in result["runs"]] == ["/artifacts/run1", "/artifacts/run2"]
    assert [c["ident"].rsplit("-", 1)[1] for c in fake.calls] == ["run1", "run2"]


def test_second_run_with_changes_fails_naming_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = _invoke(monkeypatch, _fake_runs([12, 2]), "-i", str(tmp_path), "--idempotence", "--json")
    result = json.loads(out.stdout)
    assert result["ok"] is False and result["idempotent"] is False
    assert out.exception is not None and getattr(out.exception, "exit_code", None) == 1
    assert "changed 2 task(s): h1: gh200_tuning : task 0; h1: gh200_tuning : task 1" in str(out.exception)


def test_a_failed_first_run_stops_before_the_second(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _fake_runs([3, 0], rc=2)
    out = _invoke(monkeypatch, fake, "-i", str(tmp_path), "--idempotence", "--json")
    assert len(fake.calls) == 1
    assert json.loads(out.stdout)["idempotent"] is None
    assert "failed on h1 at boom: E: x" in str(out.exception)


def test_check_and_idempotence_together_is_bad_input(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = _invoke(monkeypatch, _fake_runs([0]), "-i", str(tmp_path), "--idempotence", "--check")
    assert getattr(out.exception, "exit_code", None) == 2


def test_tags_are_split_and_passed_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _fake_runs([0])
    out = _invoke(
        monkeypatch,
        fake,
        "-i",
        str(tmp_path),
        "--tags",
        "driver,cuda",
        "--tags",
        "tuning",
        "--check",
        "--json",
    )
    assert out.exception is None
    assert fake.calls[0]["tags"] == ["driver", "cuda", "tuning"] and fake.calls[0]["check"] is True
