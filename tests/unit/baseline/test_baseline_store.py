"""`gh200 baseline accept|show|check`: records written by the real results code, a state dir per test.

Bad input must be one line, exit 2, and leave the baselines directory exactly as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from baseline_fakes import CONTEXT, STEADY, record_run, run_set

from gh200.bench.results import append_records, make_record


@pytest.fixture()
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GH200_STATE", str(tmp_path / "state"))
    return tmp_path / "state"


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".lock")


def test_accept_by_run_id_keeps_one_file_per_shape_with_its_runs(
    state: Path, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    results = state / "results" / "smoke.jsonl"
    record_run(results, "aaaa1111bbbb", [run_set(STEADY), run_set(STEADY, (128, 64))])
    record_run(results, "cccc2222dddd", [run_set(STEADY)])
    code, out, err = gh200_cli(["baseline", "accept", "aaaa11", "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["changed"] is True
    host = result["baselines"][0]["host"]
    assert files(state / "baselines") == [
        f"{host}/local-tiny/128-64-c1.json",
        f"{host}/local-tiny/64-128-c1.json",
    ]
    doc = json.loads((state / "baselines" / host / "local-tiny" / "64-128-c1.json").read_text())
    assert doc["run_id"] == "aaaa1111bbbb" and len(doc["record"]["runs"]) == 11
    code, out, _ = gh200_cli(["baseline", "show", "local-tiny", "--json"])
    shown = json.loads(out)["baselines"]
    assert code == 0 and [b["shape"] for b in shown] == ["128:64", "64:128"]
    assert shown[1]["medians"]["output_tok_s"] == pytest.approx(305.0)
    # `latest` takes the newest run: it replaces the 64:128 baseline and leaves 128:64 alone.
    assert gh200_cli(["baseline", "accept", "latest"])[0] == 0
    doc = json.loads((state / "baselines" / host / "local-tiny" / "64-128-c1.json").read_text())
    assert doc["run_id"] == "cccc2222dddd"
    assert len(files(state / "baselines")) == 2  # no temporaries left behind


def test_accept_a_results_file_of_one_run(
    state: Path, tmp_path: Path, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    one = tmp_path / "one.jsonl"
    record_run(one, "eeee3333ffff", [run_set(STEADY)])
    code, _, err = gh200_cli(["baseline", "accept", str(one)])
    assert code == 0, err
    assert len(files(state / "baselines")) == 1


@pytest.mark.parametrize(
    ("setup", "arg", "needle"),
    [
        ("two-runs", "FILE", "holds 2 runs"),
        ("incomplete", "abcd", "stopped early (connection dropped)"),
        ("url", "abcd", "benchmarked a URL, not a profile"),
        ("other-host", "abcd", "was recorded on elsewhere"),
        ("few-runs", "abcd", "has 2 warm runs; the gate needs at least 3"),
        ("one", "0123", "no run 0123"),
        ("one", "not-a-run", "neither a results file nor a run id"),
    ],
)
def test_bad_runs_exit_2_with_one_line_and_write_nothing(  # noqa: PLR0917 (parametrised)
    setup: str,
    arg: str,
    needle: str,
    state: Path,
    tmp_path: Path,
    gh200_cli: Callable[..., tuple[int, str, str]],
) -> None:
    results = state / "results" / "smoke.jsonl"
    good = run_set(STEADY)
    if setup == "two-runs":
        record_run(results, "abcd00000001", [good])
        record_run(results, "abcd00000002", [good])
    elif setup == "incomplete":
        # The first set is fine: it must not be written either (all checks come before any write).
        record_run(
            results, "abcd00000001", [good, run_set(STEADY[:4], (128, 64), error="connection dropped")]
        )
    elif setup == "url":
        record_run(results, "abcd00000001", [good], profile=None)
    elif setup == "other-host":
        record = make_record(good, CONTEXT, "abcd00000001")
        record["host"]["hostname"] = "elsewhere"
        append_records(results, [record])
    elif setup == "few-runs":
        record_run(results, "abcd00000001", [run_set(STEADY[:3])])
    else:
        record_run(results, "abcd00000001", [good])
    code, _, err = gh200_cli(["baseline", "accept", str(results) if arg == "FILE" else arg])
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (state / "baselines").exists() or files(state / "baselines") == []


def test_show_of_a_profile_without_baseline_is_bad_input(
    state: Path, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, _, err = gh200_cli(["baseline", "show", "glm52-awq"])
    assert code == 2 and "no baseline of profile glm52-awq" in err
    code, out, _ = gh200_cli(["baseline", "show", "--json"])
    assert code == 0 and json.loads(out)["baselines"] == []


def test_check_fails_a_slower_run_naming_the_metric_and_passes_an_equal_one(
    state: Path, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    results = state / "results" / "smoke.jsonl"
    record_run(results, "aaaa00000001", [run_set(STEADY)])
    assert gh200_cli(["baseline", "accept", "aaaa"])[0] == 0
    record_run(results, "bbbb00000002", [run_set([t * 1.01 for t in STEADY])])
    record_run(results, "cccc00000003", [run_set([t * 0.88 for t in STEADY])], image="gh200/llama_cpp:new")
    code, out, err = gh200_cli(["baseline", "check", "bbbb", "--json"])
    assert code == 0, err
    assert json.loads(out)["verdicts"][0]["status"] == "pass"
    code, out, err = gh200_cli(["baseline", "check", "cccc", "--json"])
    assert code == 1
    (verdict,) = json.loads(out)["verdicts"]
    assert verdict["status"] == "regression" and verdict["metric"] == "output_tok_s"
    assert verdict["worse_by"] == pytest.approx(0.12, abs=1e-6)
    assert verdict["changes"] == ["image gh200/llama_cpp:abc -> gh200/llama_cpp:new"]
    assert "output_tok_s fell 12.0%" in err and len(err.strip().splitlines()) == 1


def test_check_applies_the_floor_given_to_every_metric(
    state: Path, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    # 12% slower: a regression at the default 5%, not at a 15% floor (a host noisier than that).
    results = state / "results" / "smoke.jsonl"
    record_run(results, "aaaa00000001", [run_set(STEADY)])
    assert gh200_cli(["baseline", "accept", "aaaa"])[0] == 0
    record_run(results, "cccc00000003", [run_set([t * 0.88 for t in STEADY])])
    code, out, err = gh200_cli(["baseline", "check", "cccc", "--min-effect", "0.15", "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True and doc["min_effect"] == 0.15
    (verdict,) = doc["verdicts"]
    assert verdict["status"] == "pass"
    assert {c["metric"]: c["min_effect"] for c in verdict["comparisons"]} == {
        "output_tok_s": 0.15,
        "tpot_ms": 0.15,
        "ttft_ms": 0.15,
    }
    code, _, err = gh200_cli(["baseline", "check", "cccc"])
    assert code == 1 and "gate floor 5%" in err and "output_tok_s fell 12.0%" in err


@pytest.mark.parametrize("value", ["0", "1", "-0.1", "abc"])
def test_check_refuses_a_floor_that_is_not_a_fraction(
    state: Path, gh200_cli: Callable[..., tuple[int, str, str]], value: str
) -> None:
    results = state / "results" / "smoke.jsonl"
    record_run(results, "aaaa00000001", [run_set(STEADY)])
    code, out, err = gh200_cli(["baseline", "check", "aaaa", "--min-effect", value, "--json"])
    assert code == 2 and out == ""
    assert f"--min-effect {value}" in err and len(err.strip().splitlines()) == 1, err


def test_a_corrupt_baseline_is_named(state: Path, gh200_cli: Callable[..., tuple[int, str, str]]) -> None:
    results = state / "results" / "smoke.jsonl"
    record_run(results, "aaaa00000001", [run_set(STEADY)])
    assert gh200_cli(["baseline", "accept", "aaaa"])[0] == 0
    (path,) = (state / "baselines").rglob("*.json")
    path.write_text("{not json")
    code, _, err = gh200_cli(["baseline", "show"])
    assert code == 1 and str(path) in err and "delete it and accept a run again" in err


@pytest.mark.parametrize("form", ["file", "run id"])
def test_accept_records_the_file_the_run_was_read_from(
    form: str, state: Path, tmp_path: Path, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    # `accept` and `check` share one loader: the source must be the file the records came from,
    # whether RUN is a file of one run or an id looked up in --results (not the id, not the default).
    results = tmp_path / "elsewhere.jsonl"
    record_run(results, "abab1212cdcd", [run_set(STEADY)])
    args = [str(results)] if form == "file" else ["abab12", "--results", str(results)]
    code, out, err = gh200_cli(["baseline", "accept", *args, "--json"])
    assert code == 0, err
    assert json.loads(out)["baselines"][0]["source"] == str(results.resolve())
    code, out, err = gh200_cli(["baseline", "check", *args, "--json"])
    assert code == 0, err
    assert json.loads(out)["run_id"] == "abab1212cdcd"
