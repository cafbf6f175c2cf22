"""The real vLLM 0.33.0 wheel on the CPU: one cached venv, patched and unpatched twins, few runs.

Each vLLM start costs 15-90 s on a busy 2-core machine, so every scenario is one run of
containers/vllm/mtp_check.py whose JSON many tests assert on; the runs go two at a time.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gh200.images import vllm_venv
from gh200.images.patches import series_path

PRE_FIX_SERIES = Path(__file__).parent / "data" / "pre-fix" / "series.yaml"
# The module the wrong-scheme checkpoint builds unquantized (named in the FP8 config's ignore list).
WRONG_MODULE = "model.layers.3.mtp_block.self_attn.o_proj"  # the tests name it too


def _link_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=os.link)
    (dst / "config.json").unlink()  # replaced by the caller, never edited through the link
    return dst


def _write_config(ckpt: Path, config: dict[str, Any]) -> None:
    (ckpt / "config.json").write_text(json.dumps(config, indent=2) + "\n")


@pytest.fixture(scope="session")
def venv() -> vllm_venv.VllmVenv:
    return vllm_venv.ensure_venv()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vllm-ckpt")
    graft = vllm_venv.tiny_graft(root / "inputs")
    config = json.loads((graft / "config.json").read_text())
    out = {"graft": graft, "marked_config": vllm_venv.marked_config_dir(graft, root / "local-config")}
    # Wrong scheme: the FP8 config ignores o_proj, so vLLM builds it BF16 while the shard is FP8.
    wrong = _link_copy(graft, root / "wrong-scheme")
    bad = dict(config)
    # FP8 ignore lists name checkpoint modules; the MTP block's layers carry that prefix in vLLM.
    ignored = WRONG_MODULE.replace(".mtp_block.", ".")
    bad["mtp_quantization_config"] = dict(config["mtp_quantization_config"], ignored_layers=[ignored])
    _write_config(wrong, bad)
    out["wrong_scheme"] = wrong
    # Two config sources: the target reads a local config without mtp_quantization_config, the
    # draft (a separate path to the same weights) its own config.json, which has it.
    out["plain_config"] = vllm_venv.marked_config_dir(graft, root / "plain-config")
    marked_plain = json.loads((out["plain_config"] / "config.json").read_text())
    marked_plain.pop("mtp_quantization_config")
    _write_config(out["plain_config"], marked_plain)
    draft_copy = _link_copy(graft, root / "draft-copy")
    _write_config(draft_copy, config)
    out["draft_copy"] = draft_copy
    return out


@pytest.fixture(scope="session")
def runs(venv: vllm_venv.VllmVenv, checkpoints: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Every scenario, run once per session (two at a time)."""
    patched = vllm_venv.overlay(venv, series_path())
    graft = checkpoints["graft"]
    reports = checkpoints["graft"].parent.parent / "reports"
    reports.mkdir(exist_ok=True)
    marked = ["--hf-config-path", str(checkpoints["marked_config"]), "--marker", vllm_venv.MARKER]
    scenarios: dict[str, tuple[Path | None, Path, list[str]]] = {
        # The draft named with a trailing slash: still the target checkpoint (defect 4).
        "patched": (patched, graft, [*marked, "--draft-model", f"{graft}/"]),
        "unpatched": (None, graft, [*marked, "--draft-model", f"{graft}/"]),
        "patched_default_draft": (patched, graft, [*marked, "--config-only"]),
        "two_sources": (
            patched,
            graft,
            [
                "--hf-config-path",
                str(checkpoints["plain_config"]),
                "--draft-model",
                str(checkpoints["draft_copy"]),
            ],
        ),
    }

    return _run_all(venv, scenarios, reports)


@pytest.fixture(scope="session")
def wrong_scheme_runs(venv: vllm_venv.VllmVenv, checkpoints: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """The wrong-scheme checkpoint on the patched twin and on the pre-fix 0001 (a separate pair,
    so that `-k wrong_scheme` runs only these two)."""
    reports = checkpoints["graft"].parent.parent / "reports"
    reports.mkdir(exist_ok=True)
    scenarios: dict[str, tuple[Path | None, Path, list[str]]] = {
        "wrong_scheme": (vllm_venv.overlay(venv, series_path()), checkpoints["wrong_scheme"], []),
        "wrong_scheme_pre_fix": (vllm_venv.overlay(venv, PRE_FIX_SERIES), checkpoints["wrong_scheme"], []),
    }
    return _run_all(venv, scenarios, reports)


def _run_all(
    venv: vllm_venv.VllmVenv, scenarios: dict[str, tuple[Path | None, Path, list[str]]], reports: Path
) -> dict[str, dict[str, Any]]:
    def one(item: tuple[str, tuple[Path | None, Path, list[str]]]) -> tuple[str, dict[str, Any]]:
        name, (overlay_dir, ckpt, args) = item
        report = vllm_venv.run_check(venv, overlay_dir, ckpt, *args)
        # Kept for reading after a failure (the assertion messages show only a part).
        (reports / f"{name}.json").write_text(json.dumps(report, indent=1, sort_keys=True))
        return name, report

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, scenarios.items()))
