#!/usr/bin/env python3
"""Run in the vLLM test venv: DeepSeek V4 profiles' rendered `vllm serve` lines through vLLM's own
CLI parser and config path, on tiny DeepSeek V4 config.json files; one JSON report on stdout.

Per case: the rendered argv with its model path replaced by a tiny checkpoint directory ->
`vllm serve`'s own argument parser and validation -> AsyncEngineArgs.create_engine_config()
(ModelConfig -> ParallelConfig -> SpeculativeConfig from the --speculative-config exactly as
rendered -> VllmConfig, with the platform's checks), then the draft architecture through vLLM's
model registry. A refusal anywhere is reported with the stage
it happened at; it is what the negative cases look for. All cases share one process: importing
vLLM costs most of the run.

Usage: python dsv4_draft_check.py CASES.json   (a list of {"case", "checkpoint", "argv"})
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")


def _parser() -> Any:
    """`vllm serve`'s argument parser and check, as vllm/entrypoints/cli/serve.py builds them (its
    module itself imports the HTTP server stack, which the test venv does not carry)."""
    from vllm.entrypoints.common.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    make_arg_parser(subparsers.add_parser("serve", usage="vllm serve [model_tag] [options]"))
    return parser, validate_parsed_serve_args


def _cuda_class() -> dict[str, Any]:
    """The class vllm.models.deepseek_v4 exports on CUDA (nvidia/mtp.py), imported here only to
    show it exists under the registered name; on the CPU its kernels' imports may be missing."""
    try:
        from vllm.models.deepseek_v4.nvidia import mtp

        cls = mtp.DeepSeekV4MTP
        return {"class": f"{cls.__module__}.{cls.__qualname__}"}
    except Exception as err:
        return {"import_error": f"{type(err).__name__}: {err}"[:300]}


def check(case: dict[str, Any], parser: Any, validate: Any) -> dict[str, Any]:
    import contextlib
    import io

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.model_executor.models.registry import ModelRegistry

    out: dict[str, Any] = {"case": case["case"], "stage": "parse"}
    argv = list(case["argv"])
    if argv[:2] != ["vllm", "serve"]:
        raise ValueError(f"not a `vllm serve` line: {argv[:3]}")
    stderr = io.StringIO()
    try:
        # argparse reports a refused argument on stderr and exits 2.
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(["serve", case["checkpoint"], *argv[3:]])
        validate(args)
        args.model = args.model_tag
        engine_args = AsyncEngineArgs.from_cli_args(args)
        out["speculative_config_arg"] = engine_args.speculative_config
        # What `vllm serve` does next: ModelConfig -> ParallelConfig -> SpeculativeConfig ->
        # VllmConfig (with the platform's checks), all in one call.
        out["stage"] = "engine_config"
        config = engine_args.create_engine_config()
        target = config.model_config
        out["target"] = {
            "model_type": target.hf_config.model_type,
            "architectures": list(target.architectures),
            "quantization": target.quantization,
            "max_model_len": target.max_model_len,
        }
        out["settings"] = {
            "tensor_parallel_size": config.parallel_config.tensor_parallel_size,
            "distributed_executor_backend": str(config.parallel_config.distributed_executor_backend),
            "disable_custom_all_reduce": config.parallel_config.disable_custom_all_reduce,
            "block_size": config.cache_config.block_size,
            "gpu_memory_utilization": config.cache_config.gpu_memory_utilization,
            "kv_cache_dtype": str(config.cache_config.cache_dtype),
            "max_model_len": target.max_model_len,
            "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
            "max_num_seqs": config.scheduler_config.max_num_seqs,
            "generation_config": target.generation_config,
            "quant_config": type(config.quant_config).__name__ if config.quant_config else None,
        }
        spec = config.speculative_config
        if spec is None:
            out["speculative"] = None
        else:
            draft = spec.draft_model_config
            out["stage"] = "draft_class"
            # The class the registry maps the draft architecture to: the module it imports (which
            # picks nvidia/ on CUDA, cpu/ here) and the class resolved on this platform.
            registered = ModelRegistry.models[draft.architectures[0]]
            cls, _ = ModelRegistry.resolve_model_cls(draft.architectures, model_config=draft)
            out["speculative"] = {
                "method": spec.method,
                "num_speculative_tokens": spec.num_speculative_tokens,
                "model": spec.model,
                "draft_model_type": draft.hf_config.model_type,
                "draft_architectures": list(draft.architectures),
                "n_predict": getattr(draft.hf_config, "n_predict", None),
                "draft_quantization": draft.quantization,
                "draft_tensor_parallel_size": spec.draft_tensor_parallel_size,
                "draft_max_model_len": draft.max_model_len,
                "registry_entry": [registered.module_name, registered.class_name],
                "resolved_class": f"{cls.__module__}.{cls.__qualname__}",
            }
        out["stage"] = "done"
    except BaseException as err:  # a refusal is the finding (argparse's is SystemExit)
        message = str(err) if not isinstance(err, SystemExit) else stderr.getvalue().strip()
        out["error"] = {"type": type(err).__name__, "message": message[-2000:]}
    return out


def main(argv: list[str]) -> int:
    started = time.monotonic()
    with open(argv[1]) as handle:
        cases = json.load(handle)
    report: dict[str, Any] = {"cases": {}}
    try:
        import vllm

        report["vllm_version"] = vllm.__version__
        report["vllm_file"] = vllm.__file__
        parser, validate = _parser()
        report["cuda_draft_class"] = _cuda_class()
        for case in cases:
            report["cases"][case["case"]] = check(case, parser, validate)
    except Exception as err:
        import traceback

        report["error"] = {"type": type(err).__name__, "message": str(err)}
        report["traceback"] = traceback.format_exc().strip().splitlines()[-12:]
    report["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
