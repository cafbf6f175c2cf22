"""upgrade.yml's own logic, run for real by ansible-playbook on local-connection hosts whose
`gh200` is a script printing a chosen rollout JSON and exit code: serial order, the stop at the
first regression or failure, each host's JSON kept on the controller, later hosts untouched.
(The real rollout on two booting test hosts is tests/ansible/test_fleet_hosts.py.)"""

from __future__ import annotations

import json
import os
import pwd
import shutil
from pathlib import Path

import pytest
import yaml

from gh200.orchestrate import fleet

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("su") is None,
    reason="the role runs gh200 with become; local hosts need root and su to become without a password",
)

SCRIPT = """#!/bin/sh
echo "$0 $*" >> {calls}
case {mode} in
  pass) printf '%s\\n' '{{"changed": true, "outcome": "passed", "message": "ok",
    "regressions": [], "changes": {{}}}}'; exit 0;;
  regress) printf '%s\\n' '{{"changed": true, "outcome": "rolled_back", "message": "output_tok_s fell 20%",
    "regressions": [{{"metric": "output_tok_s", "change_pct": -20.0}}],
    "changes": {{"threads": [2, 1]}}}}'; exit 3;;
  fail) echo "error: engine gone (fix: start it)" >&2; exit 1;;
esac
"""


def _fleet(tmp_path: Path, modes: list[str], **host_vars: object) -> tuple[Path, Path]:
    calls = tmp_path / "calls.log"
    calls.touch()
    hosts = {}
    for n, mode in enumerate(modes, 1):
        script = tmp_path / f"gh200-{n}"
        script.write_text(SCRIPT.format(calls=calls, mode=mode))
        script.chmod(0o755)
        hosts[f"ws{n}"] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "ansible_become_method": "su",
            "gh200_run_command": str(script),
            "gh200_run_user": pwd.getpwuid(os.geteuid()).pw_name,
            **host_vars,
        }
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {"gh200": {"hosts": hosts}}}}, sort_keys=False))
    return inv, calls


def test_the_play_stops_at_the_first_regression(tmp_path: Path) -> None:
    inv, calls = _fleet(tmp_path, ["pass", "regress", "pass"])
    results = tmp_path / "results"
    summary = fleet.run_fleet(
        inv,
        "rollout",
        profile="local-tiny",
        accept=True,
        shape="128:32",
        results_dir=results,
        artifacts=tmp_path / "art",
    )
    assert [(h.host, h.outcome) for h in summary.hosts] == [
        ("ws1", "passed"),
        ("ws2", "regressed"),
        ("ws3", "not_attempted"),
    ]
    # ws3's gh200 never ran; the others ran once each, in order, with the rollout's arguments.
    ran = calls.read_text().splitlines()
    assert [line.split()[0].rsplit("-", 1)[1] for line in ran] == ["1", "2"]
    assert ran[0].split()[1:] == ["rollout", "local-tiny", "--accept", "--shape", "128:32", "--json"]
    kept = json.loads((results / "ws2.json").read_text())
    assert kept["rc"] == 3 and kept["result"]["changes"] == {"threads": [2, 1]}
    assert sorted(p.name for p in results.iterdir()) == ["ws1.json", "ws2.json"]
    assert summary.exit_code() == 3 and summary.hosts[1].regressions[0]["change_pct"] == -20.0


def test_a_failure_stops_the_play_with_its_error_kept(tmp_path: Path) -> None:
    inv, calls = _fleet(tmp_path, ["fail", "pass"])
    summary = fleet.run_fleet(
        inv, "upgrade", version="0.33.1", results_dir=tmp_path / "r", artifacts=tmp_path / "a"
    )
    assert [(h.host, h.outcome) for h in summary.hosts] == [("ws1", "failed"), ("ws2", "not_attempted")]
    assert "engine gone" in summary.hosts[0].message and summary.exit_code() == 1
    assert calls.read_text().split()[1:] == ["upgrade", "vllm", "0.33.1", "--json"]


def test_every_host_runs_when_all_pass(tmp_path: Path) -> None:
    inv, calls = _fleet(tmp_path, ["pass", "pass"])
    summary = fleet.run_fleet(
        inv, "rollout", profile="local-tiny", results_dir=tmp_path / "r", artifacts=tmp_path / "a"
    )
    assert [h.outcome for h in summary.hosts] == ["passed", "passed"] and summary.exit_code() == 0
    assert len(calls.read_text().splitlines()) == 2


def test_the_floor_is_passed_on_only_when_set(tmp_path: Path) -> None:
    inv, calls = _fleet(tmp_path, ["pass"])
    fleet.run_fleet(
        inv,
        "rollout",
        profile="local-tiny",
        min_effect=0.2,
        results_dir=tmp_path / "r1",
        artifacts=tmp_path / "a1",
    )
    fleet.run_fleet(
        inv,
        "upgrade",
        version="0.33.1",
        min_effect="0.25",
        results_dir=tmp_path / "r2",
        artifacts=tmp_path / "a2",
    )
    rollout, upgrade = (line.split()[1:] for line in calls.read_text().splitlines())
    assert rollout == ["rollout", "local-tiny", "--min-effect", "0.2", "--json"]
    assert upgrade == ["upgrade", "vllm", "0.33.1", "--min-effect", "0.25", "--json"]


def test_a_floor_set_in_the_inventory_applies_when_the_fleet_gives_none(tmp_path: Path) -> None:
    inv, calls = _fleet(tmp_path, ["pass"], gh200_fleet_min_effect=0.3)
    fleet.run_fleet(
        inv, "rollout", profile="local-tiny", results_dir=tmp_path / "r", artifacts=tmp_path / "a"
    )
    assert calls.read_text().split()[1:] == ["rollout", "local-tiny", "--min-effect", "0.3", "--json"]


@pytest.mark.parametrize("floor", ["abc", "1"])
def test_the_role_refuses_a_floor_that_is_not_a_fraction(tmp_path: Path, floor: str) -> None:
    # The playbook run directly (a variable set in an inventory), not through `gh200 fleet`, which
    # checks it first: the host's gh200 never runs.
    inv, calls = _fleet(tmp_path, ["pass", "pass"])
    summary = fleet.run_fleet(
        inv,
        "rollout",
        profile="local-tiny",
        results_dir=tmp_path / "r",
        artifacts=tmp_path / "a",
        extra_vars={"gh200_fleet_min_effect": floor},
    )
    assert [h.outcome for h in summary.hosts] == ["failed", "not_attempted"]
    assert "gh200_fleet_min_effect" in summary.hosts[0].message, summary.hosts[0].message
    assert calls.read_text() == ""
