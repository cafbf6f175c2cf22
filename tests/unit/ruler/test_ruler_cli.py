"""`gh200 ruler` and `gh200 probe` through the CLI edge: inputs, sources, verdicts, errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gh200.ruler import ruler as r

DATA = Path(__file__).parent / "data"
POST_FLAGS = ["--routed-expert-bytes", "684GiB", "--experts", "256", "--active-experts", "8"]


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No topology file from the user's own state, and an empty model store."""
    state = tmp_path / "state"
    monkeypatch.setenv("GH200_STATE", str(state))
    monkeypatch.setenv("GH200_MODELS", str(tmp_path / "models"))
    return state


def as_json(out: str) -> dict[str, Any]:
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def test_post_figures_from_flags(gh200_cli: Callable[..., tuple[int, str, str]]) -> None:
    code, out, _ = gh200_cli(["ruler", *POST_FLAGS, "--json"])
    assert code == 0
    data = as_json(out)
    assert data["topology"] is None
    assert data["model"]["active_expert_gib"] == pytest.approx(21.375)
    assert {bw["source"] for bw in data["bandwidths"].values()} == {r.POSTS_SOURCE}
    bands = {row["key"]: row["band_text"] for row in data["rows"]}
    assert bands == {
        "serialised": "16-18",
        "split_no_overlap": "16-18",
        "split_pipeline": "32-36",
        "remote": "about 6",
        "staged": "2-3",
    }
    assert data["missing_rows"] == []


def test_profile_uses_the_posts_model_when_not_on_disk(
    gh200_cli: Callable[..., tuple[int, str, str]],
) -> None:
    code, out, _ = gh200_cli(
        ["ruler", "glm52-fp8-offload270", "--measured", "20.31", "--measured", "2.39", "--json"]
    )
    assert code == 0
    data = as_json(out)
    assert "GLM-5.2 post" in data["model"]["source"]
    assert data["model"]["routed_expert_bytes"] == 684 * r.GIB
    assert [v["verdict"] for v in data["verdicts"]] == ["partial_overlap", "remote_or_cross_module"]


def test_table_output(
    monkeypatch: pytest.MonkeyPatch, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = gh200_cli(["ruler", *POST_FLAGS, "--measured", "20.31"])
    assert code == 0 and out == ""
    assert "21.38 GiB (22.95 GB) of experts per token" in err
    assert "17.64-17.78" in err and "16.43-16.56" in err and "about 6" in err
    assert "partial pipeline overlap" in err


def test_unknown_model_not_on_disk_names_the_flags(gh200_cli: Callable[..., tuple[int, str, str]]) -> None:
    code, out, err = gh200_cli(["ruler", "glm52-awq"])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "cyankiwi/GLM-5.2-AWQ-INT4 is not on disk" in lines[0]
    assert "--routed-expert-bytes" in lines[0] and "--experts" in lines[0] and "--active-experts" in lines[0]


def test_flags_complete_an_unknown_profile(gh200_cli: Callable[..., tuple[int, str, str]]) -> None:
    code, out, _ = gh200_cli(["ruler", "glm52-awq", *POST_FLAGS, "--json"])
    assert code == 0
    assert as_json(out)["model"]["source"] == "flags"


def test_override_beats_the_posts_model(gh200_cli: Callable[..., tuple[int, str, str]]) -> None:
    args = ["ruler", "--model", "zai-org/GLM-5.2-FP8@main", "--routed-expert-bytes", "342GiB", "--json"]
    code, out, _ = gh200_cli(args)
    assert code == 0
    model = as_json(out)["model"]
    assert model["routed_expert_bytes"] == 342 * r.GIB and model["n_routed_experts"] == 256
    assert "overridden by --routed-expert-bytes" in model["source"]


def test_topology_file_replaces_the_posts_table(
    isolated_state: Path, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    # The default location is read when present.
    isolated_state.mkdir(parents=True)
    shutil.copy(DATA / "topology-h200x1.json", isolated_state / "topology.json")
    code, out, _ = gh200_cli(["ruler", *POST_FLAGS, "--json"])
    assert code == 0
    data = as_json(out)
    assert data["topology"] == str(isolated_state / "topology.json")
    assert data["bandwidths"]["local"]["low_gbps"] == 54.31
    assert [row["key"] for row in data["rows"]] == ["serialised", "split_no_overlap", "split_pipeline"]
    assert data["missing_rows"] == [{"row": "remote", "path": "remote"}, {"row": "staged", "path": "staged"}]
    # A flag fills the gap and beats the file.
    args = ["ruler", *POST_FLAGS, "--bandwidth", "remote=20", "--bandwidth", "local=60:61", "--json"]
    code, out, _ = gh200_cli(args)
    data = as_json(out)
    assert data["bandwidths"]["remote"] == {"low_gbps": 20.0, "high_gbps": 20.0, "source": "--bandwidth"}
    assert data["bandwidths"]["local"]["high_gbps"] == 61.0
    assert [row["key"] for row in data["rows"]][-1] == "remote"


def test_results_file(tmp_path: Path, gh200_cli: Callable[..., tuple[int, str, str]]) -> None:
    results = tmp_path / "smoke.jsonl"
    results.write_text(
        '{"shape": "256:512", "concurrency": 1, "median_output_tok_s": 20.31}\n'
        "\n"
        '{"shape": "2048:512", "concurrency": 1, "output_tok_s": {"median": 16.9, "best": 17.2}}\n'
        '{"shape": "256:512", "concurrency": 4, "note": "no value"}\n'
    )
    code, out, _ = gh200_cli(["ruler", *POST_FLAGS, "--results", str(results), "--json"])
    assert code == 0
    verdicts = as_json(out)["verdicts"]
    assert [(v["label"], v["verdict"]) for v in verdicts] == [
        ("256:512 c1", "partial_overlap"),
        ("2048:512 c1", "local_streaming"),
    ]
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"shape": "1:1"}\n')
    code, _, err = gh200_cli(["ruler", *POST_FLAGS, "--results", str(empty)])
    assert code == 2 and "no record with a median output tok/s" in err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"median_output_tok_s": 3}\n{oops\n')
    code, _, err = gh200_cli(["ruler", *POST_FLAGS, "--results", str(broken)])
    assert code == 2 and "line 2 is not JSON" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["--routed-expert-bytes", "12XB", "--experts", "256", "--active-experts", "8"],
            "cannot read the size",
        ),
        ([*POST_FLAGS, "--bandwidth", "foo=1"], "cannot read the bandwidth"),
        (["--routed-expert-bytes", "1GiB", "--experts", "8", "--active-experts", "9"], "exceed"),
        (["glm52-fp8-offload270", "--model", "x/y@main"], "both PROFILE and --model"),
        (["--model", "not-a-repo"], "neither a directory nor REPO@REV"),
        ([], "needs the model's expert geometry"),
        ([*POST_FLAGS, "--measured", "0"], "not a positive number"),
        ([*POST_FLAGS, "--topology", "/nonexistent/topology.json"], "does not exist"),
        (["no-such-profile"], "no-such-profile"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    args: list[str], needle: str, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, out, err = gh200_cli(["ruler", *args])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(fix: " in lines[0]
    assert needle in lines[0]


def test_model_directory_is_inspected(tmp_path: Path, gh200_cli: Callable[..., tuple[int, str, str]]) -> None:
    if importlib.util.find_spec("gh200.checkpoints.inspect") is None:
        pytest.skip("needs gh200.checkpoints.inspect (the checkpoints issue)")
    from gh200.checkpoints import testdata

    directory = testdata.write_fp8_artifact(tmp_path / "ckpt")
    from gh200.checkpoints.inspect import inspect_checkpoint

    summary = inspect_checkpoint(directory)
    code, out, _ = gh200_cli(["ruler", "--model", str(directory), "--json"])
    assert code == 0
    model = as_json(out)["model"]
    assert model["source"] == f"checkpoint headers in {directory}"
    assert (model["routed_expert_bytes"], model["n_routed_experts"], model["n_active_experts"]) == (
        summary.routed_expert_bytes,
        testdata.Dims().n_routed_experts,
        testdata.Dims().num_experts_per_tok,
    )
    assert model["dense_bytes"] == summary.dense_bytes > 0
    rows = as_json(out)["rows"]
    assert all(row["tok_s_with_dense"] is not None for row in rows)
    assert rows[0]["tok_s_with_dense"][0] < rows[0]["tok_s_exact"][0]


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is importable here")
def test_probe_without_torch(tmp_path: Path, gh200_cli: Callable[..., tuple[int, str, str]]) -> None:
    code, out, err = gh200_cli(["probe", "--out", str(tmp_path / "t.json"), "--json"])
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "PyTorch (torch)" in lines[0] and "probe_main" in lines[0]
    assert not (tmp_path / "t.json").exists()


def test_probe_bad_size(gh200_cli: Callable[..., tuple[int, str, str]]) -> None:
    code, _, err = gh200_cli(["probe", "--size", "lots", "--json"])
    assert code == 2 and "cannot read the size" in err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--reps", "-2"], "--reps -2"),
        (["--reps", "0"], "--reps 0"),
        (["--warmup", "-1"], "--warmup -1"),
        (["--size", "4KiB"], "--size 4096 bytes"),
        (["--copy-size", "1KiB"], "--copy-size 1024 bytes"),
        (["--gpus", "a"], "--gpus 'a'"),
        (["--nodes", "4096"], "--nodes: NUMA node(s) [4096]"),
        (["--out", "."], "--out . is a directory"),
    ],
)
def test_probe_refuses_bad_options_before_drawing_anything(
    args: list[str], named: str, isolated_state: Path, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    """Without --json the progress bar is on; a bad option must end the command before it draws."""
    code, out, err = gh200_cli(["probe", *args])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], err
    assert not (isolated_state / "topology.json").exists()
