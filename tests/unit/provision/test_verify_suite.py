"""gh200 verify: command building, the report it follows, verdicts; and real --local runs of the suite."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from gh200.verify import suite
from gh200.verify.suite import SuiteResult, VerifyInputError, _read_report, build_command, failure_message


def test_inventory_and_local_commands(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yml"
    inv.write_text("all: {}\n")
    exp = tmp_path / "e.yml"
    exp.write_text("{}\n")
    report = tmp_path / "r.jsonl"
    cmd = build_command(
        inventory=inv, local=False, limit="gh200", expect=[exp], only="hardware", report=report
    )
    assert "--hosts=ansible://gh200" in cmd and f"--ansible-inventory={inv.resolve()}" in cmd
    assert cmd[cmd.index("-m", 3) + 1] == "gpu or gh200"  # after "python -m pytest"
    assert cmd[cmd.index("--gh200-expect") + 1] == str(exp.resolve())
    local = build_command(inventory=None, local=True, limit=None, expect=[], only="all", report=report)
    assert "--hosts=local://" in local and "-m" not in local[3:]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inventory": None, "local": False}, "nothing to verify"),
        ({"inventory": Path("/x"), "local": True}, "exclude each other"),
        ({"inventory": None, "local": True, "only": "disks"}, "not a selection"),
        ({"inventory": Path("/no/such/inventory"), "local": False}, "does not exist"),
        ({"inventory": None, "local": True, "expect": [Path("/no/such.yml")]}, "does not exist"),
    ],
)
def test_bad_input(kwargs: dict[str, object], message: str, tmp_path: Path) -> None:
    args: dict[str, object] = {"limit": None, "expect": [], "only": "all", "report": tmp_path / "r"}
    args.update(kwargs)
    with pytest.raises(VerifyInputError, match=message) as err:
        build_command(**args)  # type: ignore[arg-type]
    assert err.value.exit_code == 2


def test_report_lines_and_verdicts(tmp_path: Path) -> None:
    report = tmp_path / "r.jsonl"
    rows = [
        {"check": "A", "host": "local", "outcome": "passed", "detail": ""},
        {"check": "B", "host": "local", "outcome": "failed", "detail": "AssertionError: no"},
        {"check": "C", "host": "local", "outcome": "skipped", "detail": "why"},
    ]
    report.write_text(
        json.dumps({"collected": 3}) + "\n" + "\n".join(json.dumps(r) for r in rows) + '\n{"chec'
    )
    collected, checks = _read_report(report)
    assert collected == 3 and [c["check"] for c in checks] == [
        "A",
        "B",
        "C",
    ]  # a half-written line is skipped
    result = SuiteResult(target="local://", rc=1, seconds=1.0, checks=checks, collected=collected)
    assert not result.ok and result.summary() == {"passed": 1, "failed": 1, "skipped": 1, "error": 0}
    assert result.as_json()["changed"] is False
    assert failure_message(result) == "1 check(s) failed: local: B: AssertionError: no"
    assert not SuiteResult(target="local://", rc=0, seconds=0.0).ok  # no check ran: not a pass


def test_local_run_on_a_machine_not_provisioned_skips_everything_with_reasons(
    tmp_path: Path, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    expect = tmp_path / "not-provisioned.yml"
    expect.write_text(yaml.safe_dump({"gh200_verify_provisioned": False, "gh200_verify_gpu_count": 0}))
    code, out, err = gh200_cli(["verify", "--local", "--expect", str(expect), "--json"])
    assert code == 0, err[-2000:]
    result = json.loads(out)
    assert result["target"] == "local://" and result["summary"]["passed"] == 0
    assert result["summary"]["skipped"] == len(result["checks"]) > 20
    reasons = {c["detail"] for c in result["checks"]}
    assert any("gh200_verify_provisioned: false" in r for r in reasons)
    assert any("gh200_verify_gpu_count: 0" in r for r in reasons)


def test_local_run_reports_a_real_failure_with_exit_1(
    tmp_path: Path, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    expect = tmp_path / "wrong.yml"
    expect.write_text(yaml.safe_dump({"gh200_kernel_packages": ["gh200-test-no-such-package"]}))
    code, out, err = gh200_cli(["verify", "--local", "--expect", str(expect), "--only", "config", "--json"])
    assert code == 1
    checks = {c["check"]: c for c in json.loads(out)["checks"]}
    kernel = checks["Kernel packages installed (and held)"]
    assert kernel["outcome"] == "failed" and "gh200-test-no-such-package is not installed" in kernel["detail"]
    assert err.startswith("error: ") and "check(s) failed" in err


BAD_EXPECT = {
    # name: (content, or None for no file; what the one line must say)
    "malformed": ("gh200_verify_gpu_count: 2\nfoo: [1,\n", "is not valid YAML at line 3, column 1"),
    "missing": (None, "does not exist (fix: check the path)"),
    "not-a-mapping": (
        "- gh200_verify_gpu_count: 2\n",
        "holds a list, not a mapping (fix: write `name: value`",
    ),
    "scalar": ("just words\n", "holds a str, not a mapping"),
    "unknown-key": (
        "gh200_verify_gpu_cout: 2\n",
        "unknown variable 'gh200_verify_gpu_cout' (fix: did you mean",
    ),
    "not-a-gh200-variable": ("verify_gpu_count: 2\n", "unknown variable 'verify_gpu_count'"),
}


def _unreachable_inventory(tmp_path: Path) -> Path:
    # TEST-NET-1 (RFC 5737): contacting it would hang until a time-out, never answer.
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"gh200": {"ansible_host": "192.0.2.1"}}}}))
    return inventory


@pytest.mark.parametrize("case", sorted(BAD_EXPECT))
def test_bad_expectation_file_exits_2_with_one_line_naming_it(
    case: str, tmp_path: Path, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    content, message = BAD_EXPECT[case]
    path = tmp_path / f"{case}.yaml"
    if content is not None:
        path.write_text(content)
    code, out, err = gh200_cli(
        ["verify", "--inventory", str(_unreachable_inventory(tmp_path)), "--expect", str(path)]
    )
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: expectation file "), err
    assert str(path) in lines[0] and message in lines[0] and "(fix: " in lines[0], lines[0]
    assert out == ""  # no table, no progress: nothing ran


def test_bad_expectation_file_is_refused_before_any_host_is_contacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from gh200.cli import app

    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("the suite was started")

    monkeypatch.setattr(suite, "run_suite", tripwire)
    monkeypatch.setattr(suite.subprocess, "Popen", tripwire)
    good = tmp_path / "good.yml"
    good.write_text("gh200_verify_gpu_count: 2\n")
    bad = tmp_path / "bad.yml"
    bad.write_text("gh200_verify_gpu_count: [2\n")
    inventory = _unreachable_inventory(tmp_path)
    result = CliRunner().invoke(
        app, ["verify", "--inventory", str(inventory), "--expect", str(good), "--expect", str(bad)]
    )
    assert isinstance(result.exception, VerifyInputError), result.exception
    assert result.exception.exit_code == 2 and str(bad) in result.exception.one_line()
    # A good file passes the same gate and reaches the suite (the tripwire).
    result = CliRunner().invoke(app, ["verify", "--inventory", str(inventory), "--expect", str(good)])
    assert isinstance(result.exception, AssertionError) and "suite was started" in str(result.exception)
