#!/usr/bin/env python3
"""Build the GLM-5.2 MTP draft through vLLM's own config path, load a grafted checkpoint, report JSON.

One run checks many things, so that a test suite (tests/vllm, the real vLLM 0.33.0 wheel on the CPU)
and the in-image runtime smoke test (smoke_test.py --mode runtime, GPU kernels) start vLLM rarely:

  ModelConfig(checkpoint[, hf_config_path]) -> SpeculativeConfig(method "mtp") -> VllmConfig
  -> DeepseekV32MTP (vllm.models.deepseek_v32.nvidia.mtp, the class the CUDA registry picks)
  -> load_weights(every tensor the default loader yields) -> byte checks against the shards
  -> process_weights_after_loading -> the MLA attention's W_UK_T / W_UV against a blockwise
     dequantization of the FP8 kv_b_proj.

Prints one JSON object on stdout (the last line); exit 0 whenever that object was written, also
when vLLM refused the checkpoint (the object says how), 2 for bad arguments. Standard library,
torch, safetensors and vLLM only: it runs in the vLLM image as well as in the test venv.

On the CPU a few device kernel and backend choices have no CPU implementation for these layers;
`cpu_shims` replaces exactly those, each with its reason, and reports them in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def cpu_shims() -> list[dict[str, str]]:
    """The only places where the CPU run departs from vLLM: device kernel/backend selection.

    Nothing here touches config plumbing, quantization method choice, name mapping or loading.
    """
    import torch

    applied: list[dict[str, str]] = []

    # 1. FP8 GEMM kernel choice: the CPU FP8 block-scaled kernel requires AMX (absent on most CI
    #    CPUs). A stand-in kernel keeps the weights exactly as loaded and refuses to run a GEMM.
    from vllm.model_executor.layers.quantization import fp8

    class NoGemmFp8Kernel:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def process_weights_after_loading(self, layer: Any) -> None:
            return None

        def apply_weights(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("gh200 CPU shim: no FP8 GEMM on this device")

    fp8.init_fp8_linear_kernel = lambda *a, **k: NoGemmFp8Kernel()  # type: ignore[assignment]
    applied.append({"where": "fp8.init_fp8_linear_kernel", "why": "the CPU FP8 block GEMM kernel needs AMX"})

    # 2. Sparse-attention backend: CpuPlatform refuses sparse MLA; return the FlashMLA sparse
    #    backend's class path, which the CUDA platform picks for GLM-5.2 (its impl is not run).
    from vllm.platforms.cpu import CpuPlatform

    original = CpuPlatform.get_attn_backend_cls.__func__  # type: ignore[attr-defined]

    def get_attn_backend_cls(cls: Any, selected_backend: Any, attn_selector_config: Any, **kw: Any) -> str:
        if attn_selector_config.use_sparse:
            from vllm.v1.attention.backends.registry import AttentionBackendEnum

            return AttentionBackendEnum.FLASHMLA_SPARSE.get_path()
        return str(original(cls, selected_backend, attn_selector_config, **kw))

    CpuPlatform.get_attn_backend_cls = classmethod(get_attn_backend_cls)  # type: ignore[method-assign,assignment]
    applied.append(
        {
            "where": "CpuPlatform.get_attn_backend_cls",
            "why": "CPU has no sparse-MLA backend; the CUDA platform picks FLASHMLA_SPARSE",
        }
    )

    # 3. Workspace: the sparse-attention layers reserve scratch through the workspace manager,
    #    which the GPU model runner initialises; do the same on the CPU device.
    from vllm.v1.worker import workspace

    workspace.init_workspace_manager(torch.device("cpu"))
    applied.append(
        {"where": "workspace.init_workspace_manager(cpu)", "why": "the GPU model runner does this"}
    )

    # 4. MoE backend after loading: Fp8MoEMethod picks a GPU MoE kernel (and repacks the experts
    #    for it) in process_weights_after_loading; there is none on the CPU.
    fp8.Fp8MoEMethod.process_weights_after_loading = lambda self, layer: None  # type: ignore[method-assign]
    applied.append(
        {"where": "Fp8MoEMethod.process_weights_after_loading", "why": "no FP8 MoE backend on the CPU"}
    )

    # 5. torch CPU builds without an accelerator: vLLM's memory bookkeeping empties its cache.
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and not torch.cuda.is_available():
        accelerator.empty_cache = lambda: None
        applied.append(
            {"where": "torch.accelerator.empty_cache", "why": "no accelerator to empty on the CPU"}
        )

    # 6. AMX kernel choices: on a CPU with AMX tiles vLLM picks kernels (sgl weight-packed GEMM,
    #    AMX MLA) whose packing lives in its CPU build (torch.ops._C), absent from the CUDA wheel.
    #    Report no AMX so every test machine takes the same (reference) kernel choices.
    if getattr(torch.cpu, "_is_amx_tile_supported", None) is not None and torch.cpu._is_amx_tile_supported():
        torch.cpu._is_amx_tile_supported = lambda: False
        applied.append(
            {"where": "torch.cpu._is_amx_tile_supported", "why": "AMX kernels need vLLM's CPU build"}
        )
    return applied


def _module_quant(model: Any) -> dict[str, str]:
    """Quantization method class per module that has one (linear and MoE layers)."""
    out: dict[str, str] = {}
    for name, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        if method is not None and hasattr(method, "create_weights"):
            out[name] = type(method).__name__
    return out


def _fp8_blocks(weight: Any, scale: Any, block: tuple[int, int]) -> Any:
    """Blockwise dequantization of an FP8 [out, in] weight with [ceil(out/b0), ceil(in/b1)] scales."""

    rows, cols = weight.shape
    expanded = scale.float().repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    return weight.float() * expanded[:rows, :cols]


def _same_bytes(a: Any, b: Any) -> bool:
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)))


def _checkpoint_tensors(root: Path, layer: int) -> dict[str, Any]:
    from safetensors import safe_open

    index = json.loads((root / "model.safetensors.index.json").read_text())
    prefix = f"model.layers.{layer}."
    out: dict[str, Any] = {}
    for shard in sorted({s for n, s in index["weight_map"].items() if n.startswith(prefix)}):
        with safe_open(str(root / shard), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - a safe_open handle, not a dict
                if name.startswith(prefix):
                    out[name] = handle.get_tensor(name)
    return out


def byte_checks(model: Any, ckpt: dict[str, Any], layer: int, hf: Any) -> dict[str, Any]:
    """Every FP8 weight and weight_scale_inv of the MTP layer against the parameter it loaded into.

    Fused parameters hold their shards in row order (gate|up, q_a|kv_a, experts' w13 = gate|up per
    expert); the indexer wk is dequantized on load, so it is compared by value instead.
    """
    import torch

    params = dict(model.named_parameters())
    base = f"model.layers.{layer}."
    mtp = f"model.layers.{layer}.mtp_block."
    block = (128, 128)
    checked: list[str] = []
    mismatched: list[str] = []
    unmapped: list[str] = []
    q_lora = int(hf.q_lora_rank)
    mi = int(hf.moe_intermediate_size) * int(getattr(hf, "n_shared_experts", 1) or 1)

    def rows(name: str, start: int, count: int, scale: bool) -> tuple[int, int]:
        if scale:
            return start // block[0], -(-count // block[0])
        return start, count

    for name, tensor in sorted(ckpt.items()):
        is_scale = name.endswith(".weight_scale_inv")
        if not (is_scale or (name.endswith(".weight") and tensor.dtype == torch.float8_e4m3fn)):
            continue
        rel = name[len(base) :]
        module, suffix = rel.rsplit(".", 1)
        target: Any = None
        if module == "self_attn.indexer.wk":
            continue  # dequantized on load: see indexer_check
        if module.startswith("mlp.experts."):
            _, _, expert, proj = module.split(".")
            e = int(expert)
            leaf = f"{'w2' if proj == 'down_proj' else 'w13'}_{suffix}"
            p = params.get(f"{mtp}mlp.experts.{leaf}", params.get(f"{mtp}mlp.experts.routed_experts.{leaf}"))
            if p is not None:
                n = int(hf.moe_intermediate_size)
                if proj == "down_proj":
                    target = p.data[e]
                else:
                    start, count = rows(name, 0 if proj == "gate_proj" else n, n, is_scale)
                    target = p.data[e][start : start + count]
        elif module in ("mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj"):
            p = params.get(f"{mtp}mlp.shared_experts.gate_up_proj.{suffix}")
            if p is not None:
                start, count = rows(name, 0 if module.endswith("gate_proj") else mi, mi, is_scale)
                target = p.data[start : start + count]
        elif module in ("self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa"):
            p = params.get(f"{mtp}self_attn.fused_qkv_a_proj.{suffix}")
            if p is not None:
                if module.endswith("q_a_proj"):
                    start, count = rows(name, 0, q_lora, is_scale)
                else:
                    start, count = rows(name, q_lora, tensor.shape[0] if not is_scale else 0, is_scale)
                    count = tensor.shape[0]
                target = p.data[start : start + count]
        else:
            p = params.get(f"{mtp}{module}.{suffix}")
            if p is not None:
                target = p.data
        if target is None:
            unmapped.append(name)
            continue
        checked.append(name)
        if not _same_bytes(tensor, target):
            mismatched.append(name)
    return {"checked": len(checked), "mismatched": mismatched, "unmapped": unmapped}


def indexer_check(model: Any, ckpt: dict[str, Any], layer: int, hf: Any) -> dict[str, Any]:
    """The indexer's fused wk|weights_proj: wk rows are the blockwise dequantization of FP8 wk."""
    import torch

    base = f"model.layers.{layer}.self_attn.indexer."
    param = dict(model.named_parameters()).get(
        f"model.layers.{layer}.mtp_block.self_attn.indexer.wk_weights_proj.weight"
    )
    if param is None or f"{base}wk.weight" not in ckpt:
        return {"ok": False, "why": "no wk_weights_proj parameter or no FP8 wk in the checkpoint"}
    wk = ckpt[f"{base}wk.weight"]
    # vLLM dequantizes the FP8 wk to BF16 (then the fused parameter's dtype) before fusing it.
    expected = _fp8_blocks(wk, ckpt[f"{base}wk.weight_scale_inv"], (128, 128))
    expected = expected.to(torch.bfloat16).to(param.dtype)
    got = param.data[: wk.shape[0]]
    weights_proj = ckpt[f"{base}weights_proj.weight"]
    tail = param.data[wk.shape[0] : wk.shape[0] + weights_proj.shape[0]]
    return {
        "ok": bool(torch.equal(got, expected)) and _same_bytes(tail, weights_proj.to(param.dtype)),
        "param_dtype": str(param.dtype).removeprefix("torch."),
        "wk_equal": bool(torch.equal(got, expected)),
        "weights_proj_equal": _same_bytes(tail, weights_proj.to(param.dtype)),
    }


def attention_check(model: Any, ckpt: dict[str, Any], layer: int, hf: Any, dtype: Any) -> dict[str, Any]:
    """After process_weights_after_loading: W_UK_T and W_UV against a blockwise dequant of kv_b_proj."""
    import torch

    found = [m for _, m in model.named_modules() if hasattr(m, "W_UK_T") and hasattr(m, "W_UV")]
    if not found:
        return {"ok": False, "why": "no module with W_UK_T/W_UV after process_weights_after_loading"}
    attn = found[0]
    name = f"model.layers.{layer}.self_attn.kv_b_proj"
    deq = _fp8_blocks(ckpt[f"{name}.weight"], ckpt[f"{name}.weight_scale_inv"], (128, 128)).to(dtype)
    lora, heads = int(hf.kv_lora_rank), int(hf.num_attention_heads)
    nope, v = int(hf.qk_nope_head_dim), int(hf.v_head_dim)
    w = deq.T.reshape(lora, heads, nope + v)
    w_uk, w_uv = w.split([nope, v], dim=-1)
    exp_uk_t = w_uk.permute(1, 2, 0)
    exp_uv = w_uv.transpose(0, 1)
    got_uk_t = attn.W_UK_T.detach().to("cpu")
    got_uv = attn.W_UV.detach().to("cpu")
    uk = got_uk_t.shape == exp_uk_t.shape and bool(torch.equal(got_uk_t, exp_uk_t))
    uv = got_uv.shape == exp_uv.shape and bool(torch.equal(got_uv, exp_uv))
    return {"ok": uk and uv, "W_UK_T_equal": uk, "W_UV_equal": uv, "shape_W_UK_T": list(got_uk_t.shape)}


def _draft_config_facts(hf: Any, marker: str | None) -> dict[str, Any]:
    return {
        "marker": getattr(hf, marker, None) if marker else None,
        "routed_scaling_factor": getattr(hf, "routed_scaling_factor", None),
        "mtp_quantization_config": getattr(hf, "mtp_quantization_config", None),
        "model_type": getattr(hf, "model_type", None),
        "architectures": getattr(hf, "architectures", None),
    }


def run(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    import torch

    started = time.monotonic()
    result.update({"device": args.device, "stage": "import"})
    if args.device == "cpu":
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    import vllm

    result["vllm_file"] = vllm.__file__
    result["vllm_version"] = getattr(vllm, "__version__", None)
    result["shims"] = cpu_shims() if args.device == "cpu" else []

    # Which patches the vLLM under test carries (by their public symbols).
    import vllm.models.deepseek_v32.nvidia.mtp as mtp_module
    from vllm.config import (
        DeviceConfig,
        LoadConfig,
        ModelConfig,
        ParallelConfig,
        SpeculativeConfig,
        VllmConfig,
        speculative,
    )

    result["patched"] = {
        "glm52-mtp-quant": hasattr(mtp_module, "mtp_quantization_choice"),
        "dsv4-draft-hf-config-path": hasattr(speculative, "draft_hf_config_path"),
    }
    if hasattr(speculative, "draft_hf_config_path"):
        # Defect 4: the same checkpoint spelled differently, or named through model_weights.
        f = speculative.draft_hf_config_path
        try:
            result["draft_hf_config_path_cases"] = {
                "same": f("/m/ckpt", "/m/ckpt", "", "/cfg"),
                "trailing_slash": f("/m/ckpt/", "/m/ckpt", "", "/cfg"),
                "model_weights": f("/w/ckpt", "/m/ckpt", "/w/ckpt", "/cfg"),
                "other_model": f("/m/draft", "/m/ckpt", "", "/cfg"),
            }
        except TypeError as err:
            result["draft_hf_config_path_cases"] = {"error": str(err)}

    result["stage"] = "config"
    model_kwargs: dict[str, Any] = {
        "model": str(args.checkpoint),
        "dtype": "bfloat16",
        "skip_tokenizer_init": True,
        "max_model_len": 4096,
        "enforce_eager": True,
    }
    if args.hf_config_path:
        model_kwargs["hf_config_path"] = str(args.hf_config_path)
    target = ModelConfig(**model_kwargs)
    result["target_config"] = _draft_config_facts(target.hf_config, args.marker)
    parallel = ParallelConfig(tensor_parallel_size=1, pipeline_parallel_size=1)
    spec_kwargs: dict[str, Any] = {
        "method": "mtp",
        "num_speculative_tokens": 1,
        "target_model_config": target,
        "target_parallel_config": parallel,
    }
    if args.draft_model:
        spec_kwargs["model"] = args.draft_model
    spec = SpeculativeConfig(**spec_kwargs)
    draft = spec.draft_model_config
    result["draft_hf_config_path"] = draft.hf_config_path
    result["draft_config"] = _draft_config_facts(draft.hf_config, args.marker)
    if args.config_only:
        result["stage"] = "done"
        result["seconds"] = round(time.monotonic() - started, 2)
        return result

    vllm_config = VllmConfig(
        model_config=target,
        speculative_config=spec,
        parallel_config=parallel,
        device_config=DeviceConfig(device=args.device),
        load_config=LoadConfig(),
    )

    result["stage"] = "distributed"
    from vllm.config import set_current_vllm_config
    from vllm.distributed import (
        ensure_model_parallel_initialized,
        init_distributed_environment,
    )

    with set_current_vllm_config(vllm_config):
        init_distributed_environment(
            world_size=1,
            rank=0,
            local_rank=0,
            distributed_init_method=f"tcp://127.0.0.1:{args.port}",
            backend="gloo" if args.device == "cpu" else "nccl",
        )
        ensure_model_parallel_initialized(1, 1)

    result["stage"] = "build"
    from vllm.model_executor.model_loader import DefaultModelLoader
    from vllm.model_executor.model_loader.utils import (
        initialize_model,
        process_weights_after_loading,
    )

    device = torch.device(args.device)
    draft_vllm_config = spec.apply_draft_overrides(vllm_config)
    from vllm.utils.torch_utils import set_default_torch_dtype

    # As BaseModelLoader.load_model builds a model: the model's dtype as default, on the device.
    with (
        set_current_vllm_config(draft_vllm_config),
        set_default_torch_dtype(draft.dtype),
        torch.device(device),
    ):
        model = initialize_model(draft_vllm_config, model_class=mtp_module.DeepseekV32MTP, model_config=draft)
    result["model_class"] = f"{type(model).__module__}.{type(model).__qualname__}"
    result["quant_methods"] = _module_quant(model)
    result["param_dtypes"] = {n: str(p.dtype).removeprefix("torch.") for n, p in model.named_parameters()}
    result["mixed_quant"] = getattr(model, "mixed_quant", None)

    result["stage"] = "load"
    loader = DefaultModelLoader(LoadConfig())
    layer = int(draft.hf_config.num_hidden_layers)
    result["mtp_layer"] = layer
    try:
        with set_current_vllm_config(draft_vllm_config):
            loaded = model.load_weights(loader.get_all_weights(draft, model))
    except Exception as err:  # the refusal is the finding: report it
        result["load_error"] = {
            "type": type(err).__name__,
            "message": str(err),
            "where": traceback.format_exc().strip().splitlines()[-3:],
        }
        result["stage"] = "done"
        result["seconds"] = round(time.monotonic() - started, 2)
        return result
    names = {n for n, _ in model.named_parameters()}
    result["params"] = len(names)
    result["loaded"] = len(loaded)
    result["not_loaded"] = sorted(names - set(loaded))
    ckpt = _checkpoint_tensors(Path(args.checkpoint), layer)
    hf = draft.hf_config
    result["bytes"] = byte_checks(model, ckpt, layer, hf)
    result["indexer_wk"] = indexer_check(model, ckpt, layer, hf)

    result["stage"] = "process_weights_after_loading"
    with set_current_vllm_config(draft_vllm_config):
        process_weights_after_loading(model, draft, device)
    result["attention"] = attention_check(model, ckpt, layer, hf, draft.dtype)
    result["stage"] = "done"
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


# The marker the hf_config_path checks look for in the draft's config (and a changed value).
MARKER = "gh200_config_marker"
MARKED_SCALING = 3.25


def verdicts(report: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    """Per carried patch: did its runtime check pass in this report (a run with a marked
    --hf-config-path on a tiny graft)? (passed, one-line reason)."""
    out: dict[str, tuple[bool, str]] = {}
    if "error" in report:
        why = f"{report['error']['type']} at stage {report.get('stage')}: {report['error']['message'][:160]}"
        return {"glm52-mtp-quant": (False, why), "dsv4-draft-hf-config-path": (False, why)}
    draft = report.get("draft_config") or {}
    marker_ok = draft.get("marker") == "local-config" and draft.get("routed_scaling_factor") == MARKED_SCALING
    out["dsv4-draft-hf-config-path"] = (
        marker_ok,
        "the draft read the target's --hf-config-path"
        if marker_ok
        else "the draft read the checkpoint's own config.json, not the target's --hf-config-path",
    )
    if "load_error" in report:
        err = report["load_error"]
        out["glm52-mtp-quant"] = (False, f"loading failed: {err['type']}: {err['message'][:160]}")
        return out
    problems = []
    if report.get("bytes", {}).get("mismatched") or report.get("bytes", {}).get("unmapped"):
        problems.append("FP8 bytes differ from the shard")
    if not report.get("indexer_wk", {}).get("ok"):
        problems.append("indexer wk is not the dequantized FP8 wk")
    if not report.get("attention", {}).get("ok"):
        problems.append("attention W_UK_T/W_UV differ from the dequantized kv_b_proj")
    if set(report.get("not_loaded", [])) - set(shared_from_target(report)):
        problems.append(f"parameters not loaded: {report['not_loaded'][:3]}")
    out["glm52-mtp-quant"] = (not problems, "; ".join(problems) or "built FP8 and loaded byte-exact")
    return out


def shared_from_target(report: dict[str, Any]) -> list[str]:
    """Draft parameters vLLM's proposer replaces with the target's (llm_base_proposer shares the
    target lm_head into every MTP layer's shared_head.head), so the checkpoint need not hold them."""
    layer = report.get("mtp_layer")
    return [f"model.layers.{layer}.shared_head.head.weight"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a grafted GLM-5.2 checkpoint")
    parser.add_argument("--hf-config-path", type=Path, help="serve the target with this config dir")
    parser.add_argument("--draft-model", help="name the draft model explicitly (default: the target)")
    parser.add_argument("--marker", help="config field to report from the target's and draft's config")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--config-only", action="store_true", help="stop after the config path")
    parser.add_argument("--port", type=int, default=0, help="gloo/nccl rendezvous port (0: pick one)")
    args = parser.parse_args(argv)
    if not (args.checkpoint / "config.json").is_file():
        print(f"error: {args.checkpoint} has no config.json", file=sys.stderr)
        return 2
    if args.port == 0:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.port = sock.getsockname()[1]
    result: dict[str, Any] = {}
    try:
        run(args, result)
    except Exception as err:  # reported, not raised: the caller asserts on the stage it reached
        result["error"] = {"type": type(err).__name__, "message": str(err)}
        result["traceback"] = traceback.format_exc().strip().splitlines()[-12:]
    print(json.dumps(result, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
