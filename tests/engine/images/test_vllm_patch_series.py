"""The patch series against the real vLLM 0.33.0 source (the PyPI sdist), and the patched code run.

No GPU and no torch: the functions under test are executed from the patched files themselves
(see conftest.exec_from_source); their torch-bound collaborators are small fakes.
"""

from __future__ import annotations

import ast
import os
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gh200.images.patches import check_series

pytestmark = pytest.mark.slow

MTP = "vllm/models/deepseek_v32/nvidia/mtp.py"
SPEC = "vllm/config/speculative.py"
UTILS = "vllm/model_executor/models/utils.py"


def test_check_reports_two_applying_and_two_upstream() -> None:
    report = check_series("0.33.0", runtime=False)  # tests/vllm runs the runtime side
    results = {row["id"]: row["result"] for row in report["patches"]}
    assert results == {
        "glm52-mtp-quant": "applies",
        "dsv4-draft-hf-config-path": "applies",
        "dsv4-mtp-wo-a-bf16-fallback": "upstream",
        "dsv4-mtp-eh-proj-prefix": "upstream",
    }
    assert report["ok"] is True
    cited = {row["id"]: row["detail"] for row in report["patches"]}
    assert cited["dsv4-mtp-wo-a-bf16-fallback"].startswith(
        "vllm/models/deepseek_v4/nvidia/ops/o_proj.py:deep_gemm_fp8_o_proj"
    )
    assert cited["dsv4-mtp-eh-proj-prefix"].startswith(
        "vllm/models/deepseek_v4/nvidia/mtp.py:DeepSeekV4MultiTokenPredictorLayer.__init__"
    )


def test_pristine_source_lacks_what_the_patches_add(vllm_pristine: Path) -> None:
    # The patches are not already upstream in 0.33.0 (else the check would say so).
    assert "mtp_quantization_config" not in (vllm_pristine / MTP).read_text()
    call = (vllm_pristine / SPEC).read_text()
    assert "hf_config_path" not in call


# --- GLM-5.2: the MTP layer's quantization choice ------------------------------------------------


class _QuantConfig:
    def __init__(self, name: str, source: dict[str, Any] | None = None) -> None:
        self.name = name
        self.source = source
        self.packed_modules_mapping: dict[str, list[str]] = {"fused_qkv_a_proj": ["q_a_proj", "kv_a_proj"]}

    def get_name(self) -> str:
        return self.name


class _Logger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str, *args: Any) -> None:
        self.lines.append(msg % args)

    warning_once = debug_once = warning = info


@pytest.fixture
def fake_quant_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """vllm.model_executor.layers.quantization.get_quantization_config, recording what is asked."""
    asked: list[str] = []

    def get_quantization_config(method: str) -> type:
        asked.append(method)

        class Built:
            @staticmethod
            def from_config(config: dict[str, Any]) -> _QuantConfig:
                return _QuantConfig(method, config)

        return Built

    module = types.ModuleType("vllm.model_executor.layers.quantization")
    module.get_quantization_config = get_quantization_config  # type: ignore[attr-defined]
    for name in ("vllm", "vllm.model_executor", "vllm.model_executor.layers"):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.model_executor.layers.quantization", module)
    yield asked


@pytest.fixture
def mtp_funcs(vllm_patched: Path, extract: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    import copy

    return extract(
        vllm_patched / MTP,
        ["MIXED_QUANT_ONLY_SUFFIXES", "mtp_quantization_choice", "skip_mixed_quant_name", "_mtp_vllm_config"],
        {"Any": Any, "Container": Any, "VllmConfig": Any, "copy": copy, "logger": _Logger()},
    )


FP8 = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


def test_no_mtp_quantization_config_keeps_the_target_scheme(mtp_funcs: dict[str, Any]) -> None:
    assert mtp_funcs["mtp_quantization_choice"](SimpleNamespace(model_type="glm_moe_dsa")) is None
    vllm_config = SimpleNamespace(quant_config=_QuantConfig("compressed-tensors"))
    assert mtp_funcs["_mtp_vllm_config"](vllm_config, SimpleNamespace()) is vllm_config


def test_mtp_quantization_config_is_read_from_the_model_config(mtp_funcs: dict[str, Any]) -> None:
    choose = mtp_funcs["mtp_quantization_choice"]
    assert choose(SimpleNamespace(mtp_quantization_config=dict(FP8))) == FP8
    as_object = SimpleNamespace(to_dict=lambda: dict(FP8))
    assert choose(SimpleNamespace(mtp_quantization_config=as_object)) == FP8
    with pytest.raises(ValueError, match="quant_method"):
        choose(SimpleNamespace(mtp_quantization_config={"weight_block_size": [128, 128]}))
    with pytest.raises(ValueError, match="mapping"):
        choose(SimpleNamespace(mtp_quantization_config="fp8"))


def test_mtp_layer_is_built_with_its_own_quantization(
    mtp_funcs: dict[str, Any], fake_quant_registry: list[str]
) -> None:
    base = _QuantConfig("compressed-tensors")
    compilation = object()
    vllm_config = SimpleNamespace(quant_config=base, compilation_config=compilation)
    view = mtp_funcs["_mtp_vllm_config"](vllm_config, SimpleNamespace(mtp_quantization_config=dict(FP8)))
    assert fake_quant_registry == ["fp8"]
    assert view is not vllm_config
    assert view.quant_config.name == "fp8" and view.quant_config.source == FP8
    assert vllm_config.quant_config is base  # the target keeps compressed-tensors WNA16
    assert view.compilation_config is compilation  # shared forward-context registry
    assert view.quant_config.packed_modules_mapping is base.packed_modules_mapping


def test_patched_mtp_layer_and_model_use_the_choice(vllm_patched: Path) -> None:
    tree = ast.parse((vllm_patched / MTP).read_text())
    layer = next(
        n
        for n in tree.body
        if isinstance(n, ast.ClassDef) and n.name == "DeepseekV32MultiTokenPredictorLayer"
    )
    init = next(n for n in layer.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    source = ast.unparse(init)
    # The view replaces vllm_config before anything reads quant_config or builds the decoder layer.
    assert (
        source.index("vllm_config = _mtp_vllm_config(vllm_config, config)")
        < source.index("quant_config = vllm_config.quant_config")
        < source.index("DeepseekV32DecoderLayer(")
    )


# --- GLM-5.2: the loader's name filter, run through the real patched load_weights ---------------


class _Param:
    dtype = "bf16"

    def __init__(self, name: str, log: list[tuple[str, Any]]) -> None:
        self.name = name
        self._log = log

    def weight_loader(self, param: _Param, tensor: Any, *rest: Any, **kw: Any) -> bool:
        self._log.append((param.name, rest[0] if rest else kw.get("shard_id")))
        return True


class _Tensor:
    dtype = "bf16"


def _fake_mtp(funcs: dict[str, Any], params: list[str], mixed: bool) -> Any:
    log: list[tuple[str, Any]] = []
    table = {name: _Param(name, log) for name in params}
    config = SimpleNamespace(num_hidden_layers=78, num_nextn_predict_layers=1, n_routed_experts=4)
    model = SimpleNamespace(mtp_start_layer_idx=78, num_mtp_layers=1)

    class FakeMTP:
        def __init__(self) -> None:
            self.config = config
            self.model = model
            self.mixed_quant = mixed
            self.loaded = log

        def named_parameters(self) -> Any:
            return table.items()

    for name in ("_rewrite_spec_layer_name", "is_unused_checkpoint_weight", "load_weights"):
        setattr(FakeMTP, name, funcs[f"DeepseekV32MTP.{name}"])
    return FakeMTP()


@pytest.fixture
def loader(vllm_patched: Path, extract: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    import re
    import typing
    from collections.abc import Callable as Call

    logger = _Logger()
    env: dict[str, Any] = {
        "typing": typing,
        "Callable": Call,
        "Iterable": Any,
        "Container": Any,
        "torch": SimpleNamespace(
            Tensor=object, float8_e4m3fn="fp8", float8_e4m3fnuz="fp8fnuz", float8_e5m2="fp8e5"
        ),
        "re": re,
        "logger": logger,
        # torch-bound collaborators: no experts and no FP8 indexer in these weights.
        "fused_moe_make_expert_params_mapping": lambda *a, **k: [],
        "get_pp_missing_layer_names": lambda model: [],
        "_try_load_fp8_indexer_wk": lambda *a: False,
        "default_weight_loader": lambda param, tensor: param.weight_loader(param, tensor),
        "is_mtp_completeness_check_enabled": lambda: True,
    }
    # Real vLLM helpers, from the same source tree.
    env.update(
        extract(vllm_patched / UTILS, ["get_spec_layer_idx_from_weight_name"], {"PreTrainedConfig": Any})
    )
    env.update(
        extract(
            vllm_patched / "vllm/model_executor/model_loader/weight_utils.py",
            ["maybe_remap_kv_scale_name"],
            {"re": re, "logger": logger},
        )
    )
    env.update(
        extract(
            vllm_patched / MTP,
            [
                "MIXED_QUANT_ONLY_SUFFIXES",
                "skip_mixed_quant_name",
                "fp8_into_plain",
                "DeepseekV32MTP._rewrite_spec_layer_name",
                "DeepseekV32MTP.is_unused_checkpoint_weight",
                "DeepseekV32MTP.load_weights",
            ],
            env,
        )
    )
    env["DeepseekV32MTP._rewrite_spec_layer_name"] = env.pop("_rewrite_spec_layer_name")
    env["DeepseekV32MTP.is_unused_checkpoint_weight"] = env.pop("is_unused_checkpoint_weight")
    env["DeepseekV32MTP.load_weights"] = env.pop("load_weights")
    env["_logger"] = logger
    return env


# The MTP layer as built with FP8 (block scales) next to a WNA16 base.
FP8_PARAMS = [
    "model.layers.78.enorm.weight",
    "model.layers.78.hnorm.weight",
    "model.layers.78.eh_proj.weight",
    "model.layers.78.mtp_block.self_attn.fused_qkv_a_proj.weight",
    "model.layers.78.mtp_block.self_attn.fused_qkv_a_proj.weight_scale_inv",
    "model.layers.78.mtp_block.mlp.shared_experts.down_proj.weight",
    "model.layers.78.mtp_block.mlp.shared_experts.down_proj.weight_scale_inv",
]
T = _Tensor()


def test_loader_skips_names_of_the_other_scheme_with_one_log_line(loader: dict[str, Any]) -> None:
    mtp = _fake_mtp(loader, FP8_PARAMS, mixed=True)
    weights = [
        ("model.layers.78.enorm.weight", T),
        ("model.layers.78.self_attn.q_a_proj.weight", T),
        ("model.layers.78.self_attn.q_a_proj.weight_scale_inv", T),
        # compressed-tensors WNA16 names: no such parameters under FP8.
        ("model.layers.78.mlp.shared_experts.down_proj.weight_packed", T),
        ("model.layers.78.mlp.shared_experts.down_proj.weight_shape", T),
        # eh_proj is an unquantized nn.Linear in vLLM; the FP8 artifact ships a scale for it.
        ("model.layers.78.eh_proj.weight_scale_inv", T),
        ("model.layers.78.mlp.shared_experts.down_proj.weight", T),
        ("model.layers.3.mlp.down_proj.weight", T),  # not an MTP weight: ignored upstream already
    ]
    loaded = mtp.load_weights(iter(weights))
    assert ("model.layers.78.mtp_block.self_attn.fused_qkv_a_proj.weight", 0) in mtp.loaded
    assert ("model.layers.78.mtp_block.self_attn.fused_qkv_a_proj.weight_scale_inv", 0) in mtp.loaded
    assert ("model.layers.78.enorm.weight", None) in mtp.loaded
    assert "model.layers.78.mtp_block.mlp.shared_experts.down_proj.weight" in loaded
    skipped_lines = [line for line in loader["_logger"].lines if "mixed quantization" in line]
    assert len(skipped_lines) == 1
    assert "skipped 3 checkpoint tensors" in skipped_lines[0]


def test_without_a_mixed_scheme_a_missing_name_still_raises(loader: dict[str, Any]) -> None:
    mtp = _fake_mtp(loader, FP8_PARAMS, mixed=False)
    with pytest.raises(KeyError, match=r"eh_proj\.weight_scale_inv"):
        mtp.load_weights(iter([("model.layers.78.eh_proj.weight_scale_inv", T)]))


def test_mixed_scheme_does_not_hide_a_missing_plain_weight(loader: dict[str, Any]) -> None:
    mtp = _fake_mtp(loader, FP8_PARAMS, mixed=True)
    with pytest.raises(KeyError, match="hnorm_typo"):
        mtp.load_weights(iter([("model.layers.78.mtp_block.hnorm_typo.weight", T)]))


def test_name_filter_rules(mtp_funcs: dict[str, Any]) -> None:
    skip = mtp_funcs["skip_mixed_quant_name"]
    params = {"a.weight", "a.weight_scale_inv"}
    assert skip("b.weight_scale_inv", params, True) is True
    assert skip("b.weight_packed", params, True) is True
    assert skip("a.weight_scale_inv", params, True) is False  # exists: load it
    assert skip("b.weight_scale_inv", params, False) is False  # no mixed scheme: upstream behaviour
    assert skip("b.weight", params, True) is False  # a real parameter name is never skipped


# --- DeepSeek V4: hf_config_path for the draft ---------------------------------------------------


def test_draft_gets_the_target_hf_config_path(
    vllm_patched: Path, extract: Callable[..., dict[str, Any]]
) -> None:
    pick = extract(vllm_patched / SPEC, ["draft_hf_config_path"], {"os": os})["draft_hf_config_path"]
    cfg = "/configs/dsv4-sanitized"
    assert pick("/models/dsv4", "/models/dsv4", "", cfg) == cfg
    assert pick("/models/dsv4/", "/models/dsv4", "", cfg) == cfg  # same checkpoint, other spelling
    assert pick("/weights/dsv4", "/models/dsv4", "/weights/dsv4", cfg) == cfg  # MTP takes model_weights
    assert pick("org/eagle-draft", "/models/dsv4", "", cfg) is None
    assert pick("org/eagle-draft", "/models/dsv4", "/weights/dsv4", cfg) is None
    assert pick(None, "/models/dsv4", "", "/configs/x") is None
    assert pick("/models/dsv4", "/models/dsv4", "", None) is None


def test_draft_model_config_call_passes_hf_config_path(vllm_patched: Path) -> None:
    tree = ast.parse((vllm_patched / SPEC).read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "ModelConfig"
        and any(
            k.arg == "runner" and isinstance(k.value, ast.Constant) and k.value.value == "draft"
            for k in node.keywords
        )
    ]
    assert len(calls) == 1
    keyword = next(k for k in calls[0].keywords if k.arg == "hf_config_path")
    assert ast.unparse(keyword.value).startswith(
        "draft_hf_config_path(self.model, self.target_model_config.model, "
        "self.target_model_config.model_weights"
    )
