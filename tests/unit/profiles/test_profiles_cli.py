"""`gh200 profiles list|show|validate|render` through the installed console script."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from profiles_testlib import PROFILES, REFERENCE_PROFILES, Run, run_gh200

from gh200.profiles.loader import list_names


@pytest.fixture()
def unlocked_home(tmp_path: Path) -> dict[str, str]:
    """GH200_HOME with the real profiles and empty lock files: 'unlocked' whatever was locked."""
    shutil.copytree(PROFILES, tmp_path / "profiles", ignore=shutil.ignore_patterns("*.lock"))
    for name, section in (("images.lock", "images"), ("models.lock", "models")):
        (tmp_path / "profiles" / name).write_text(f"schema: 1\n{section}: {{}}\n")
    return {"GH200_HOME": str(tmp_path), "GH200_CACHE": str(tmp_path / "cache")}


def _one_error_line(run: Run) -> str:
    assert run.code == 2, (run.code, run.stderr)
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error: ") and "(fix: " in lines[0]
    return lines[0]


def test_list_json_has_every_reference_profile() -> None:
    """The issue's check, as a user runs it: the installed script in its own process."""
    run = run_gh200(["profiles", "list", "--json"])
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    items = {item["name"]: item for item in report["profiles"]}
    assert set(REFERENCE_PROFILES) <= set(items)
    assert set(items) == set(list_names(PROFILES))
    assert items["fast-slow"]["kind"] == "stack"
    assert items["fast-slow"]["profiles"] == ["dsv4-flash-canada-mtp3-fastslow", "glm52-iq2xxs-cpu"]
    assert items["local-tiny"]["engine"] == "llama_cpp" and items["local-tiny"]["lock"] == "local"
    assert items["glm52-iq2xxs-cpu"]["engine"] == "ik_llama"
    assert items["glm52-awq-mtp3"]["headline"] == "43.39 output_tok_s @2048:512"
    assert report["changed"] is False


def test_list_table_keeps_each_profile_on_one_line(gh200: Callable[..., Run]) -> None:
    """Piped (not a terminal), every name appears whole, on one row with its engine and lock."""
    run = gh200(["profiles", "list"])
    assert run.code == 0, run.stderr
    assert "…" not in run.stdout
    rows = [line for line in run.stdout.splitlines() if line.startswith("│")]
    names = list_names(PROFILES)
    assert len(rows) == len(names)
    for row, name in zip(rows, names, strict=True):
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells[0] == name
        assert cells[1] in ("vllm", "ik_llama", "llama_cpp", "stack")


def test_show_says_unlocked(gh200: Callable[..., Run], unlocked_home: dict[str, str]) -> None:
    run = gh200(["profiles", "show", "glm52-awq-mtp3"], unlocked_home)
    assert run.code == 0, run.stderr
    assert "max_model_len: 635904" in run.stdout  # extends merged in
    pins = [line for line in run.stdout.splitlines() if line.startswith(("image ", "model "))]
    assert len(pins) == 3  # image, AWQ base, MTP delta
    assert all(line.rstrip().endswith("unlocked") for line in pins), pins
    shown = json.loads(gh200(["profiles", "show", "glm52-awq-mtp3", "--json"], unlocked_home).stdout)
    assert shown["lock"] == "unlocked"
    assert {p["state"] for p in shown["pins"]} == {"unlocked"}
    assert all(p["pinned"] is None for p in shown["pins"])


@pytest.mark.parametrize("name", ["glm52-awq-mtp3", "fast-slow"])
def test_show_prints_yaml_that_parses_back(gh200: Callable[..., Run], name: str) -> None:
    """The text output is the resolved profile as YAML, unwrapped, whatever the line lengths."""
    text = gh200(["profiles", "show", name]).stdout
    shown = json.loads(gh200(["profiles", "show", name, "--json"]).stdout)
    expected = shown.get("profile", shown.get("stack"))
    document = text.split("\nimage ", 1)[0]  # the pin lines follow the YAML
    assert yaml.safe_load(document) == expected


def test_show_a_stack(gh200: Callable[..., Run]) -> None:
    run = gh200(["profiles", "show", "fast-slow", "--json"])
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["stack"]["profiles"] == [
        "dsv4-flash-canada-mtp3-fastslow",
        "glm52-iq2xxs-cpu",
    ]


@pytest.mark.parametrize("name", ["glm52-awq-mtp3", "dsv4-flash-canada-mtp3", "fast-slow"])
def test_render_locked_refuses_when_unlocked(
    gh200: Callable[..., Run], unlocked_home: dict[str, str], name: str
) -> None:
    line = _one_error_line(gh200(["profiles", "render", name, "--locked"], unlocked_home))
    assert "is unlocked" in line and "gh200 lock" in line


def test_render_locked_accepts_a_local_profile(
    gh200: Callable[..., Run], unlocked_home: dict[str, str]
) -> None:
    """local-tiny is pinned by content (local image, generated model): nothing to lock."""
    run = gh200(["profiles", "render", "local-tiny", "--locked"], unlocked_home)
    assert run.code == 0, run.stderr
    assert run.stdout.startswith("llama-server ")


def test_unknown_profile_is_one_line(gh200: Callable[..., Run]) -> None:
    for args in (["profiles", "render", "nope"], ["profiles", "show", "nope"]):
        line = _one_error_line(gh200(args))
        assert "no profile named 'nope'" in line and "glm52-awq-mtp3" in line


def test_render_a_stack_as_argv_is_refused(gh200: Callable[..., Run]) -> None:
    line = _one_error_line(gh200(["profiles", "render", "fast-slow", "--as", "argv"]))
    assert "fast-slow is a stack" in line and "compose" in line


def test_validate_everything_in_profiles(gh200: Callable[..., Run]) -> None:
    run = gh200(["profiles", "validate", "--json"])
    assert run.code == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] is True
    assert sorted(r["target"] for r in report["results"]) == list_names(PROFILES)
