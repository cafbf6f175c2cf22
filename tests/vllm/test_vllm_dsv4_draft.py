"""The DeepSeek V4 profiles' draft path, as the real vLLM 0.33.0 wheel (patched as the image is)
builds it from their rendered `vllm serve` lines: vLLM's own argument parser, then
create_engine_config (ModelConfig -> ParallelConfig -> SpeculativeConfig -> VllmConfig), on tiny
config.json files with DeepSeek V4's real architecture and fields (tests/vllm/data/dsv4-*: the
official FP8 layout with MXFP4 experts, and the Canada-Quant compressed-tensors W4A16/FP8 layout).

Config path only: no weights are built or loaded, no GPU kernel runs, and TP2 is a configuration
here (nothing is started). One vLLM process runs every case (tests/vllm/dsv4_draft_check.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gh200.images import vllm_venv
from gh200.images.patches import series_path
from gh200.profiles import render
from gh200.profiles.loader import list_names, load_any
from gh200.profiles.schema import Profile, SpeculativeSpec

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

HERE = Path(__file__).parent
PROFILES = HERE.parents[1] / "profiles"
# A tiny config.json per checkpoint the profiles name (their layouts differ: quantization).
CHECKPOINTS = {
    "deepseek-ai/DeepSeek-V4-Flash": HERE / "data" / "dsv4-official",
    "canada-quant/DeepSeek-V4-Flash-W4A16-FP8-MTP": HERE / "data" / "dsv4-canada",
}
QUANTIZATION = {
    "deepseek-ai/DeepSeek-V4-Flash": ("deepseek_v4_fp8", "DeepseekV4FP8Config"),
    "canada-quant/DeepSeek-V4-Flash-W4A16-FP8-MTP": ("compressed-tensors", "CompressedTensorsConfig"),
}
# The registry's entry for the draft architecture vLLM 0.33.0 picks for DeepSeek V4 MTP
# (model_executor/models/registry.py); the package exports nvidia/mtp.py's class on CUDA.
DRAFT_ARCH = "DeepSeekV4MTPModel"
REGISTRY_ENTRY = ["vllm.models.deepseek_v4", "DeepSeekV4MTP"]
CUDA_CLASS = "vllm.models.deepseek_v4.nvidia.mtp.DeepSeekV4MTP"


def dsv4_profiles() -> list[Profile]:
    found = []
    for name in list_names(PROFILES):
        item = load_any(name, PROFILES)
        if isinstance(item, Profile) and item.model.repo in CHECKPOINTS:
            found.append(item)
    return found


def _with_speculative(profile: Profile, spec: SpeculativeSpec) -> Profile:
    return profile.model_copy(update={"settings": profile.settings.model_copy(update={"speculative": spec})})


def _unvalidated(method: str, tokens: int) -> SpeculativeSpec:
    # Past our own schema on purpose: what vLLM itself does with such a render.
    return SpeculativeSpec.model_construct(method=method, num_speculative_tokens=tokens)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def dsv4(venv: vllm_venv.VllmVenv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("dsv4")
    # A checkpoint whose config ships two MTP layers: 3 draft tokens cannot reuse them evenly.
    two_layers = root / "dsv4-canada-2mtp"
    shutil.copytree(CHECKPOINTS["canada-quant/DeepSeek-V4-Flash-W4A16-FP8-MTP"], two_layers)
    config = json.loads((two_layers / "config.json").read_text())
    config["num_nextn_predict_layers"] = 2
    config["compress_ratios"] = [*config["compress_ratios"], 0]
    (two_layers / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    cases = [
        {"case": p.name, "checkpoint": str(CHECKPOINTS[p.model.repo]), "argv": render.argv(p)}
        for p in dsv4_profiles()
    ]
    base = load_any("dsv4-flash-canada-mtp3", PROFILES)
    assert isinstance(base, Profile)
    canada = str(CHECKPOINTS[base.model.repo])
    wrong = {
        "method-typo": _with_speculative(base, _unvalidated("mtpp", 3)),
        # llama.cpp's method name on a vLLM profile: vLLM's is draft_model (and needs a model).
        "method-draft": _with_speculative(base, _unvalidated("draft", 3)),
        "zero-tokens": _with_speculative(base, _unvalidated("mtp", 0)),
    }
    cases += [{"case": name, "checkpoint": canada, "argv": render.argv(p)} for name, p in wrong.items()]
    cases.append(
        {"case": "three-tokens-two-mtp-layers", "checkpoint": str(two_layers), "argv": render.argv(base)}
    )
    (root / "cases.json").write_text(json.dumps(cases, indent=1))

    patched = vllm_venv.overlay(venv, series_path())
    report = vllm_venv.run_script(venv, patched, HERE / "dsv4_draft_check.py", str(root / "cases.json"))
    (root / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    assert "error" not in report, (report.get("error"), report.get("traceback"), report["log"][-3000:])
    return report


def _case(report: dict[str, Any], name: str) -> dict[str, Any]:
    case = report["cases"][name]
    assert "error" not in case, (name, case["stage"], case["error"])
    return dict(case)


def test_every_dsv4_profile_is_checked() -> None:
    names = {p.name for p in dsv4_profiles()}
    assert names == {
        "dsv4-flash-canada",
        "dsv4-flash-canada-mtp3",
        "dsv4-flash-canada-mtp3-fastslow",
        "dsv4-flash-official",
        "dsv4-flash-official-mtp3",
    }


@pytest.mark.parametrize("profile", dsv4_profiles(), ids=lambda p: p.name)
def test_vllm_accepts_the_profile_and_keeps_its_settings(dsv4: dict[str, Any], profile: Profile) -> None:
    case = _case(dsv4, profile.name)
    assert dsv4["vllm_version"].startswith("0.33.0")
    assert case["target"]["model_type"] == "deepseek_v4"
    assert case["target"]["architectures"] == ["DeepseekV4ForCausalLM"]
    quantization, quant_config = QUANTIZATION[profile.model.repo]
    assert case["target"]["quantization"] == quantization
    s = profile.settings
    # What vLLM made of each rendered setting (nothing silently replaced).
    assert case["settings"] == {
        "tensor_parallel_size": s.tensor_parallel_size,
        "distributed_executor_backend": s.distributed_executor_backend,
        "disable_custom_all_reduce": s.disable_custom_all_reduce,
        "block_size": s.block_size,
        "gpu_memory_utilization": s.gpu_memory_utilization,
        "kv_cache_dtype": s.kv_cache_dtype,
        "max_model_len": s.max_model_len,
        "max_num_batched_tokens": s.max_num_batched_tokens,
        "max_num_seqs": s.max_num_seqs,
        "generation_config": s.generation_config,
        "quant_config": quant_config,
    }


@pytest.mark.parametrize(
    "profile", [p for p in dsv4_profiles() if p.settings.speculative is not None], ids=lambda p: p.name
)
def test_the_mtp_profiles_get_deepseek_v4s_mtp_draft(dsv4: dict[str, Any], profile: Profile) -> None:
    spec = _case(dsv4, profile.name)["speculative"]
    assert profile.settings.speculative is not None
    # The posts' best point: MTP-3 on both checkpoints.
    assert (profile.settings.speculative.method, profile.settings.speculative.num_speculative_tokens) == (
        "mtp",
        3,
    )
    assert spec["method"] == "mtp"
    assert spec["num_speculative_tokens"] == 3
    # The draft is the target checkpoint's own MTP layer, as DeepSeek V4's MTP architecture.
    assert spec["model"] == str(CHECKPOINTS[profile.model.repo])
    assert spec["draft_model_type"] == "deepseek_mtp"
    assert spec["draft_architectures"] == [DRAFT_ARCH]
    assert spec["n_predict"] == profile.model.mtp_layers == 1
    assert spec["registry_entry"] == REGISTRY_ENTRY
    assert spec["resolved_class"] == "vllm.models.deepseek_v4.cpu.mtp.DeepSeekV4MTP"  # the CPU twin
    # Same quantization and tensor parallelism as the target; the draft's context is the target's.
    assert spec["draft_quantization"] == QUANTIZATION[profile.model.repo][0]
    assert spec["draft_tensor_parallel_size"] == profile.settings.tensor_parallel_size
    assert spec["draft_max_model_len"] == profile.settings.max_model_len


def test_the_registry_entry_is_the_class_cuda_serves(dsv4: dict[str, Any]) -> None:
    found = dsv4["cuda_draft_class"]
    if "import_error" in found:
        pytest.skip(f"nvidia/mtp.py does not import on the CPU: {found['import_error']}")
    assert found["class"] == CUDA_CLASS


@pytest.mark.parametrize(
    "profile", [p for p in dsv4_profiles() if p.settings.speculative is None], ids=lambda p: p.name
)
def test_the_plain_profiles_get_no_draft(dsv4: dict[str, Any], profile: Profile) -> None:
    case = _case(dsv4, profile.name)
    assert case["speculative_config_arg"] is None
    assert case["speculative"] is None


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("method-typo", "Input should be 'ngram', 'draft_model'"),
        ("method-typo", "input_value='mtpp'"),
        ("method-draft", "input_value='draft'"),
        ("zero-tokens", "num_speculative_tokens\n  Input should be greater than 0"),
        ("three-tokens-two-mtp-layers", "num_speculative_tokens:3 must be divisible by n_predict=2"),
    ],
)
def test_a_wrong_method_or_token_count_is_refused(dsv4: dict[str, Any], case: str, message: str) -> None:
    found = dsv4["cases"][case]
    assert "error" in found, f"vLLM accepted {case}: {found.get('speculative')}"
    # Refused by SpeculativeConfig, the step the good profiles pass through.
    assert (found["stage"], found["error"]["type"]) == ("engine_config", "ValidationError"), found
    assert message in found["error"]["message"], found["error"]
