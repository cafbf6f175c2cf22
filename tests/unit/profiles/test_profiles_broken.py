"""Broken profiles through the real CLI: exit 2, one line per problem naming file, field and fix.

Each file in broken/ starts with `# BROKEN: what is wrong` and `# expect: text` lines that the
error must contain (`# expect-lines: N` when one file has N problems). Files named ok-* are the
valid partners that broken files extend or stack with; they must validate clean, so that a
stack's error comes from the combination and not from a member.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from profiles_testlib import BROKEN, Run, run_gh200

from gh200.fsutil import atomic_write_text
from gh200.paths import profiles_dir


@dataclass(frozen=True)
class Case:
    path: Path
    what: str
    expects: list[str]
    lines: int


def _case(path: Path) -> Case:
    header = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    what = ""
    expects: list[str] = []
    lines = 1
    for line in header:
        if not line.startswith("#"):
            break
        key, _, value = line.lstrip("# ").partition(": ")
        if key == "BROKEN":
            what = value
        elif key == "expect":
            expects.append(value)
        elif key == "expect-lines":
            lines = int(value)
    return Case(path, what, expects, lines)


BROKEN_CASES = [_case(p) for p in sorted(BROKEN.glob("*.yaml")) if not p.name.startswith("ok-")]
PARTNERS = sorted(BROKEN.glob("ok-*.yaml"))


def test_the_suite_is_big_enough_and_documented() -> None:
    assert len(BROKEN_CASES) >= 20
    for case in BROKEN_CASES:
        assert case.what, f"{case.path.name}: no '# BROKEN:' line saying what is wrong"
        assert case.expects, f"{case.path.name}: no '# expect:' line"


@pytest.fixture(scope="module")
def all_at_once() -> dict[str, dict[str, object]]:
    """One CLI call validates every broken file (--json); keyed by file name."""
    run = run_gh200(["profiles", "validate", "--json", *[str(c.path) for c in BROKEN_CASES]])
    assert run.code == 2, f"exit {run.code}: {run.stderr}"
    assert "Traceback" not in run.stderr, run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] is False
    return {Path(r["target"]).name: r for r in report["results"]}


@pytest.mark.parametrize("case", BROKEN_CASES, ids=lambda c: c.path.stem)
def test_broken_profile_gets_one_line_per_problem(
    all_at_once: dict[str, dict[str, object]], case: Case
) -> None:
    result = all_at_once[case.path.name]
    problems = result["problems"]
    assert isinstance(problems, list)
    assert result["ok"] is False
    assert len(problems) == case.lines, f"{case.path.name} ({case.what}): {problems}"
    for line in problems:
        assert "\n" not in line
        assert str(BROKEN) in line, f"the line does not name the file: {line}"
        message, sep, fix = line.rpartition(" (fix: ")
        assert sep and message and fix.rstrip(")").strip(), f"no fix in: {line}"
        assert "Traceback" not in line and "Error(" not in line, line
    joined = " | ".join(problems)
    for expected in case.expects:
        assert expected in joined, f"{case.path.name}: {expected!r} not in {joined}"


def test_partners_validate_clean() -> None:
    run = run_gh200(["profiles", "validate", "--json", *[str(p) for p in PARTNERS]])
    assert run.code == 0, run.stdout + run.stderr
    assert all(r["ok"] for r in json.loads(run.stdout)["results"])


def _plain_text_lines(run: Run) -> list[str]:
    """Without --json: exit 2, nothing on stdout, one `error` line per problem on stderr."""
    assert run.code == 2
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    return run.stderr.splitlines()


def test_single_file_in_plain_text_subprocess() -> None:
    path = BROKEN / "tp2-one-rank.yaml"
    lines = _plain_text_lines(run_gh200(["profiles", "validate", str(path)]))
    assert lines == [
        f"error {path}: settings.tensor_parallel_size: tensor parallel 2 but 1 rank(s) placed "
        "(fix: place one GPU per rank under placement.ranks, or change tensor_parallel_size)"
    ]


@pytest.mark.parametrize(
    "stem", ["bad-yaml-syntax", "stack-member-bad-cpus", "not-utf8", "unknown-host", "huge-cpu-range"]
)
def test_single_file_in_plain_text(gh200: Callable[..., Run], stem: str) -> None:
    path = BROKEN / f"{stem}.yaml"
    lines = _plain_text_lines(gh200(["profiles", "validate", str(path)]))
    assert len(lines) == 1, lines
    assert lines[0].startswith("error ")
    assert str(BROKEN) in lines[0] and "(fix: " in lines[0]


def test_render_refuses_a_broken_profile_by_path(gh200: Callable[..., Run]) -> None:
    """render runs the same checks: a broken profile never reaches argv."""
    run = gh200(["profiles", "render", str(BROKEN / "rank-numa-mismatch.yaml")])
    assert run.code == 2
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and "placement.ranks[1].numa_node" in run.stderr


UPDATE = os.environ.get("GH200_UPDATE_GOLDEN") == "1"
PROBLEMS_GOLDEN = BROKEN / "problems.golden.json"


def test_every_broken_profile_is_reported_word_for_word(gh200: Callable[..., Run]) -> None:
    """The whole corpus in this process (what mutation testing sees), each line exactly as reviewed.

    The `# expect:` lines pin what matters most; this pins the rest of the wording, the fix
    included, so that a changed message is a reviewed diff of problems.golden.json (regenerate with
    GH200_UPDATE_GOLDEN=1 like the render goldens; an update run never passes).
    """
    run = gh200(["profiles", "validate", "--json", *[str(c.path) for c in BROKEN_CASES]])
    assert run.code == 2, run.stderr
    # The bundle's profiles (GH200_HOME) differ per checkout: a placeholder, like the corpus's own path.
    bundled = str(profiles_dir())

    def portable(line: str) -> str:
        return line.replace(str(BROKEN), "$BROKEN").replace(bundled, "$GH200_HOME/profiles")

    got = {
        Path(r["target"]).name: [portable(line) for line in r["problems"]]
        for r in json.loads(run.stdout)["results"]
    }
    assert sorted(got) == sorted(c.path.name for c in BROKEN_CASES)
    text = json.dumps(got, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if UPDATE:
        if PROBLEMS_GOLDEN.exists() and PROBLEMS_GOLDEN.read_text() == text:
            pytest.skip("GH200_UPDATE_GOLDEN=1: problems.golden.json unchanged; rerun without it to test")
        atomic_write_text(PROBLEMS_GOLDEN, text)
        pytest.fail("GH200_UPDATE_GOLDEN=1: rewrote problems.golden.json; review the diff, rerun without it")
    assert PROBLEMS_GOLDEN.exists(), "no problems.golden.json: run with GH200_UPDATE_GOLDEN=1 and review it"
    assert got == json.loads(PROBLEMS_GOLDEN.read_text())
