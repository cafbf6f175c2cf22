"""The carried patch series executed by the real vLLM 0.33.0 wheel (CPU), on tiny grafted GLM-5.2
checkpoints made by gh200's graft; the unpatched wheel (and the pre-fix 0001) as negative controls.

What this cannot prove without a GPU: SM90 kernels, CUDA graphs, TP2 sharding, acceptance rates
(the in-image runtime mode of containers/vllm/smoke_test.py runs the same check with GPU kernels).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gh200.images import vllm_venv

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MTP = "model.layers.3.mtp_block."
# conftest builds this module unquantized in the wrong-scheme checkpoint.
WRONG_MODULE = MTP + "self_attn.o_proj"
FP8_LINEARS = [
    "self_attn.fused_qkv_a_proj",
    "self_attn.q_b_proj",
    "self_attn.kv_b_proj",
    "self_attn.o_proj",
    "self_attn.indexer.wq_b",
    "mlp.shared_experts.gate_up_proj",
    "mlp.shared_experts.down_proj",
]


def _ok(report: dict[str, Any]) -> dict[str, Any]:
    assert "error" not in report, (report.get("error"), report.get("traceback"), report["log"][-3000:])
    return report


def test_draft_is_built_through_vllms_config_path_with_the_mtp_layers_own_scheme(
    runs: dict[str, Any],
) -> None:
    report = _ok(runs["patched"])
    assert report["model_class"] == "vllm.models.deepseek_v32.nvidia.mtp.DeepseekV32MTP"
    assert report["vllm_version"].startswith("0.33.0")
    # The graft's config.json (with mtp_quantization_config) is accepted by ModelConfig for GLM-5.2.
    assert report["target_config"]["architectures"] == ["GlmMoeDsaForCausalLM"]
    assert report["draft_config"]["mtp_quantization_config"]["quant_method"] == "fp8"
    methods = report["quant_methods"]
    for linear in FP8_LINEARS:
        assert methods[MTP + linear] == "Fp8LinearMethod", linear
    assert methods[MTP + "mlp.experts.routed_experts"] == "Fp8MoEMethod"
    assert methods[MTP + "mlp.gate"] == "UnquantizedLinearMethod"
    assert methods[MTP + "self_attn.indexer.wk_weights_proj"] == "UnquantizedLinearMethod"
    # eh_proj is a plain torch Linear in vLLM: no quant method, a BF16 weight.
    assert "model.layers.3.eh_proj" not in methods
    assert report["param_dtypes"]["model.layers.3.eh_proj.weight"] == "bfloat16"
    assert report["mixed_quant"] is True


def test_load_weights_loads_every_parameter_byte_exact(runs: dict[str, Any]) -> None:
    report = _ok(runs["patched"])
    assert "load_error" not in report, report["load_error"]
    # The proposer shares the target's lm_head into shared_head.head (llm_base_proposer), so the
    # checkpoint's MTP layer need not carry it; everything else comes from the shard.
    assert report["not_loaded"] == vllm_venv.shared_from_target(report)
    assert report["loaded"] == report["params"] - 1
    # 7 FP8 linears' weight+scale (q_a and kv_a separately) + 4 experts x 3 x 2 = 42 tensors.
    assert report["bytes"] == {"checked": 42, "mismatched": [], "unmapped": []}
    assert report["indexer_wk"]["ok"], report["indexer_wk"]
    assert report["attention"] == {
        "ok": True,
        "W_UK_T_equal": True,
        "W_UV_equal": True,
        "shape_W_UK_T": [2, 32, 512],
    }
    assert vllm_venv.verdicts(report)["glm52-mtp-quant"] == (True, "built FP8 and loaded byte-exact")


def test_unpatched_wheel_fails_on_the_same_checkpoint(runs: dict[str, Any]) -> None:
    report = _ok(runs["unpatched"])
    assert report["patched"] == {"glm52-mtp-quant": False, "dsv4-draft-hf-config-path": False}
    assert report["load_error"]["type"] == "KeyError"
    assert report["load_error"]["message"] == f"'{MTP}mlp.experts.routed_experts.w2_weight_scale_inv'"
    assert "Fp8LinearMethod" not in report["quant_methods"].values()
    verdicts = vllm_venv.verdicts(report)
    assert not verdicts["glm52-mtp-quant"][0] and not verdicts["dsv4-draft-hf-config-path"][0]


def test_wrong_scheme_layer_is_an_error_naming_the_module(wrong_scheme_runs: dict[str, Any]) -> None:
    report = _ok(wrong_scheme_runs["wrong_scheme"])
    assert report["param_dtypes"][WRONG_MODULE + ".weight"] == "bfloat16"
    error = report["load_error"]
    assert error["type"] == "ValueError"
    assert f"MTP layer module {WRONG_MODULE} was built without FP8" in error["message"]


def test_pre_fix_patch_loaded_the_wrong_scheme_layer_silently(wrong_scheme_runs: dict[str, Any]) -> None:
    report = _ok(wrong_scheme_runs["wrong_scheme_pre_fix"])
    assert "load_error" not in report  # the old behaviour: a garbage o_proj and no error
    assert report["param_dtypes"][WRONG_MODULE + ".weight"] == "bfloat16"
    # The FP8 codes went into the BF16 weight as values (not the shard's bytes) and the scale that
    # would make sense of them was skipped: a silently useless layer.
    assert report["bytes"]["mismatched"] == ["model.layers.3.self_attn.o_proj.weight"]
    assert report["bytes"]["unmapped"] == ["model.layers.3.self_attn.o_proj.weight_scale_inv"]


def test_draft_config_decides_both_scheme_and_mixed_loading(runs: dict[str, Any]) -> None:
    # The target reads a local config without mtp_quantization_config; the draft is a separate
    # path and reads its own, which has it. Both decisions must come from the draft's config.
    report = _ok(runs["two_sources"])
    assert report["target_config"]["mtp_quantization_config"] is None
    assert report["draft_config"]["mtp_quantization_config"]["quant_method"] == "fp8"
    assert report["quant_methods"][MTP + "self_attn.o_proj"] == "Fp8LinearMethod"
    assert report["mixed_quant"] is True
    assert "load_error" not in report


@pytest.mark.parametrize("scenario", ["patched", "patched_default_draft"])
def test_draft_reads_the_targets_hf_config_path(runs: dict[str, Any], scenario: str) -> None:
    report = _ok(runs[scenario])
    assert report["target_config"]["marker"] == "local-config"
    assert report["draft_config"]["marker"] == "local-config"
    assert report["draft_config"]["routed_scaling_factor"] == vllm_venv.MARKED_SCALING
    assert vllm_venv.verdicts(report)["dsv4-draft-hf-config-path"][0]


def test_unpatched_draft_reads_the_checkpoints_own_config(runs: dict[str, Any]) -> None:
    report = _ok(runs["unpatched"])
    assert report["target_config"]["marker"] == "local-config"
    assert report["draft_config"]["marker"] is None
    assert report["draft_config"]["routed_scaling_factor"] == 2.5
    assert report["draft_hf_config_path"] is None


def test_draft_hf_config_path_follows_model_weights_and_spelling(runs: dict[str, Any]) -> None:
    cases = _ok(runs["patched_default_draft"])["draft_hf_config_path_cases"]
    assert cases == {
        "same": "/cfg",
        "trailing_slash": "/cfg",
        "model_weights": "/cfg",
        "other_model": None,
    }


def test_cpu_shims_are_only_kernel_and_backend_choices(runs: dict[str, Any]) -> None:
    shims = {s["where"] for s in _ok(runs["patched"])["shims"]}
    assert shims <= {
        "fp8.init_fp8_linear_kernel",
        "CpuPlatform.get_attn_backend_cls",
        "workspace.init_workspace_manager(cpu)",
        "Fp8MoEMethod.process_weights_after_loading",
        "torch.accelerator.empty_cache",
        "torch.cpu._is_amx_tile_supported",
    }


def test_patches_check_reports_each_carried_patchs_runtime_test(venv: vllm_venv.VllmVenv) -> None:
    from typer.testing import CliRunner

    from gh200.cli import app

    done = CliRunner().invoke(app, ["patches", "check", "--vllm", "0.33.0", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["runtime"]["state"] == "ran"
    rows = {row["id"]: row for row in report["patches"]}
    assert rows["glm52-mtp-quant"]["runtime"] == "passed", rows["glm52-mtp-quant"]
    assert rows["dsv4-draft-hf-config-path"]["runtime"] == "passed", rows["dsv4-draft-hf-config-path"]
    assert "runtime" not in rows["dsv4-mtp-eh-proj-prefix"]  # upstream entries have no runtime test
