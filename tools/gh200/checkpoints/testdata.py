"""Tiny (or benchmark-sized) checkpoints in the real GLM-5 layouts, for tests and `bench_graft`.

Three layouts, with the tensor names of the real artifacts:
- the AWQ base: compressed-tensors `pack-quantized` W4A16 (`weight_packed` int32 [out, in/8],
  `weight_scale` bf16 [out, in/group], `weight_zero_point` int32 [out/8, in/group], `weight_shape`
  int32 [2]), an `ignore` list, config `GlmMoeDsaForCausalLM`, several shards and an index; it lists
  no MTP layer (optionally a stub of one, as a base that lists a few unusable layer-N entries);
- the FP8 artifact: `float8_e4m3fn` weights with `float32` `weight_scale_inv` [ceil(out/128),
  ceil(in/128)], `quantization_config.weight_block_size` [128, 128], the MTP layer spread over two
  shards that also hold other layers;
- the delta repo: just the MTP layer (one shard, an index and the FP8 config).

Tensor bytes are deterministic per name (numpy RNG seeded from the name), or come from a caller's
`fill` (the benchmark streams a reused random block so that GiBs are written quickly).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gh200.checkpoints.safetensors_io import Chunk, tensor_nbytes, write_file

Spec = tuple[str, str, tuple[int, ...]]
Fill = Callable[[str, int], Iterable[Chunk]]

ARCH = "GlmMoeDsaForCausalLM"
FP8_QUANT = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
}


@dataclass(frozen=True)
class Dims:
    """Model dimensions. Defaults are tiny but keep every rule the real model follows (alignment,
    FP8 blocks of 128 that do not divide every dimension, packed int4 with groups of 32)."""

    hidden_size: int = 160
    num_hidden_layers: int = 3
    n_routed_experts: int = 4
    num_experts_per_tok: int = 2
    n_shared_experts: int = 1
    moe_intermediate_size: int = 64
    intermediate_size: int = 192
    first_k_dense_replace: int = 1
    vocab_size: int = 320
    num_attention_heads: int = 2
    q_lora_rank: int = 96
    kv_lora_rank: int = 64
    qk_rope_head_dim: int = 16
    qk_nope_head_dim: int = 32
    v_head_dim: int = 32
    index_n_heads: int = 2
    index_head_dim: int = 32
    group_size: int = 32

    @property
    def mtp_layer(self) -> int:
        return self.num_hidden_layers


# GLM-5-shaped but scaled: the real MTP layer's tensor count (256 experts) with 1 MiB FP8 experts.
BENCH_DIMS = Dims(
    hidden_size=2048,
    num_hidden_layers=12,
    n_routed_experts=256,
    num_experts_per_tok=8,
    n_shared_experts=1,
    moe_intermediate_size=512,
    intermediate_size=4096,
    first_k_dense_replace=1,
    vocab_size=8192,
    num_attention_heads=16,
    q_lora_rank=768,
    kv_lora_rank=256,
    qk_rope_head_dim=64,
    qk_nope_head_dim=64,
    v_head_dim=64,
    index_n_heads=16,
    index_head_dim=64,
    group_size=128,
)


def glm_config(dims: Dims, quantization_config: dict[str, Any] | None) -> dict[str, Any]:
    """A GLM-5-style config.json (the fields vLLM's GlmMoeDsa model reads, at `dims` sizes)."""
    config: dict[str, Any] = {
        "architectures": [ARCH],
        "model_type": "glm_moe_dsa",
        "attention_bias": False,
        "bos_token_id": 0,
        "eos_token_id": [1, 2],
        "pad_token_id": 1,
        "first_k_dense_replace": dims.first_k_dense_replace,
        "hidden_act": "silu",
        "hidden_size": dims.hidden_size,
        "index_head_dim": dims.index_head_dim,
        "index_n_heads": dims.index_n_heads,
        "index_topk": 2048,
        "intermediate_size": dims.intermediate_size,
        "kv_lora_rank": dims.kv_lora_rank,
        "max_position_embeddings": 202752,
        "moe_intermediate_size": dims.moe_intermediate_size,
        "n_group": 1,
        "n_routed_experts": dims.n_routed_experts,
        "n_shared_experts": dims.n_shared_experts,
        "norm_topk_prob": True,
        "num_attention_heads": dims.num_attention_heads,
        "num_experts_per_tok": dims.num_experts_per_tok,
        "num_hidden_layers": dims.num_hidden_layers,
        "num_key_value_heads": dims.num_attention_heads,
        "num_nextn_predict_layers": 1,
        "q_lora_rank": dims.q_lora_rank,
        "qk_nope_head_dim": dims.qk_nope_head_dim,
        "qk_rope_head_dim": dims.qk_rope_head_dim,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000,
        "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid",
        "tie_word_embeddings": False,
        "topk_group": 1,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "v_head_dim": dims.v_head_dim,
        "vocab_size": dims.vocab_size,
    }
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    return config


def awq_quantization_config(dims: Dims) -> dict[str, Any]:
    """compressed-tensors W4A16 (asymmetric int4, groups) as llm-compressor writes it."""
    return {
        "config_groups": {
            "group_0": {
                "format": "pack-quantized",
                "input_activations": None,
                "output_activations": None,
                "targets": ["Linear"],
                "weights": {
                    "actorder": None,
                    "block_structure": None,
                    "dynamic": False,
                    "group_size": dims.group_size,
                    "num_bits": 4,
                    "observer": "mse",
                    "observer_kwargs": {},
                    "strategy": "group",
                    "symmetric": False,
                    "type": "int",
                },
            }
        },
        "format": "pack-quantized",
        "global_compression_ratio": None,
        "ignore": [
            "lm_head",
            "re:.*mlp\\.gate$",
            "re:.*self_attn\\.kv_a_proj_with_mqa$",
            "re:.*self_attn\\.indexer.*",
            f"re:model\\.layers\\.{dims.mtp_layer}\\..*",
        ],
        "kv_cache_scheme": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "version": "0.12.2",
    }


def _linears(dims: Dims, prefix: str, moe: bool) -> list[tuple[str, int, int, bool]]:
    """(module, out, in, quantizable) for the Linear layers of one decoder layer."""
    d = dims
    h = d.hidden_size
    heads = d.num_attention_heads
    out: list[tuple[str, int, int, bool]] = [
        (f"{prefix}self_attn.q_a_proj", d.q_lora_rank, h, True),
        (
            f"{prefix}self_attn.q_b_proj",
            heads * (d.qk_nope_head_dim + d.qk_rope_head_dim),
            d.q_lora_rank,
            True,
        ),
        (f"{prefix}self_attn.kv_a_proj_with_mqa", d.kv_lora_rank + d.qk_rope_head_dim, h, True),
        (f"{prefix}self_attn.kv_b_proj", heads * (d.qk_nope_head_dim + d.v_head_dim), d.kv_lora_rank, True),
        (f"{prefix}self_attn.o_proj", h, heads * d.v_head_dim, True),
        (f"{prefix}self_attn.indexer.wq_b", d.index_n_heads * d.index_head_dim, d.q_lora_rank, True),
        (f"{prefix}self_attn.indexer.wk", d.index_head_dim, h, True),
        # The indexer head weights stay in high precision in every published artifact.
        (f"{prefix}self_attn.indexer.weights_proj", d.index_n_heads, h, False),
    ]
    if moe:
        mi = d.moe_intermediate_size
        for e in range(d.n_routed_experts):
            out += [
                (f"{prefix}mlp.experts.{e}.gate_proj", mi, h, True),
                (f"{prefix}mlp.experts.{e}.up_proj", mi, h, True),
                (f"{prefix}mlp.experts.{e}.down_proj", h, mi, True),
            ]
        si = mi * d.n_shared_experts
        out += [
            (f"{prefix}mlp.shared_experts.gate_proj", si, h, True),
            (f"{prefix}mlp.shared_experts.up_proj", si, h, True),
            (f"{prefix}mlp.shared_experts.down_proj", h, si, True),
        ]
    else:
        out += [
            (f"{prefix}mlp.gate_proj", d.intermediate_size, h, True),
            (f"{prefix}mlp.up_proj", d.intermediate_size, h, True),
            (f"{prefix}mlp.down_proj", h, d.intermediate_size, True),
        ]
    return out


def _awq_ignored(module: str, dims: Dims) -> bool:
    return (
        module.endswith(("self_attn.kv_a_proj_with_mqa", "mlp.gate"))
        or ".indexer." in module
        or module == "lm_head"
    )


def layer_specs(dims: Dims, layer: int, scheme: str) -> list[Spec]:
    """Every tensor of decoder layer `layer` ("awq" base layout, or "fp8" block-quantized), in a
    deterministic order; layer == dims.mtp_layer adds the MTP-only tensors."""
    h = dims.hidden_size
    p = f"model.layers.{layer}."
    moe = layer >= dims.first_k_dense_replace
    mtp = layer == dims.mtp_layer
    specs: list[Spec] = []
    if mtp:
        specs += [(f"{p}enorm.weight", "BF16", (h,)), (f"{p}hnorm.weight", "BF16", (h,))]
        specs.append((f"{p}eh_proj.weight", "BF16", (h, 2 * h)))
        specs.append((f"{p}shared_head.norm.weight", "BF16", (h,)))
    specs += [
        (f"{p}input_layernorm.weight", "BF16", (h,)),
        (f"{p}post_attention_layernorm.weight", "BF16", (h,)),
    ]
    specs += [
        (f"{p}self_attn.q_a_layernorm.weight", "BF16", (dims.q_lora_rank,)),
        (f"{p}self_attn.kv_a_layernorm.weight", "BF16", (dims.kv_lora_rank,)),
        (f"{p}self_attn.indexer.k_norm.weight", "BF16", (dims.index_head_dim,)),
        (f"{p}self_attn.indexer.k_norm.bias", "BF16", (dims.index_head_dim,)),
    ]
    if moe:
        specs += [
            (f"{p}mlp.gate.weight", "BF16", (dims.n_routed_experts, h)),
            (f"{p}mlp.gate.e_score_correction_bias", "F32", (dims.n_routed_experts,)),
        ]
    for module, out_f, in_f, quantizable in _linears(dims, p, moe):
        if scheme == "fp8" and quantizable:
            specs.append((f"{module}.weight", "F8_E4M3", (out_f, in_f)))
            specs.append((f"{module}.weight_scale_inv", "F32", (-(-out_f // 128), -(-in_f // 128))))
        elif scheme == "awq" and quantizable and not _awq_ignored(module, dims):
            g = dims.group_size
            specs += [
                (f"{module}.weight_packed", "I32", (out_f, in_f // 8)),
                (f"{module}.weight_scale", "BF16", (out_f, in_f // g)),
                (f"{module}.weight_shape", "I32", (2,)),
                (f"{module}.weight_zero_point", "I32", (out_f // 8, in_f // g)),
            ]
        else:
            specs.append((f"{module}.weight", "BF16", (out_f, in_f)))
    return specs


def global_specs(dims: Dims) -> tuple[list[Spec], list[Spec]]:
    """(head-of-model, tail-of-model) tensors: embeddings; final norm and lm_head."""
    h, v = dims.hidden_size, dims.vocab_size
    return [("model.embed_tokens.weight", "BF16", (v, h))], [
        ("model.norm.weight", "BF16", (h,)),
        ("lm_head.weight", "BF16", (v, h)),
    ]


def seeded_fill(seed: int = 0) -> Fill:
    """Deterministic bytes per tensor name (numpy RNG): tests can compare spliced bytes exactly.

    `weight_shape` tensors hold the real logical [out, in] values, as compressed-tensors writes them.
    """

    def fill(name: str, nbytes: int) -> Iterator[Chunk]:
        rng = np.random.default_rng(zlib.crc32(name.encode()) ^ seed)
        yield rng.integers(0, 256, size=nbytes, dtype=np.uint8).tobytes()

    return fill


def block_fill(block_bytes: int = 8 * 1024 * 1024) -> Fill:
    """Fast fill for GiB-sized checkpoints: one random block repeated (no tensor-sized RAM)."""
    import os

    block = memoryview(os.urandom(block_bytes))

    def fill(_: str, nbytes: int) -> Iterator[Chunk]:
        left = nbytes
        while left > 0:
            take = min(left, len(block))
            yield block[:take]  # a view: no copy of the block per chunk
            left -= take

    return fill


def _with_weight_shapes(specs: Sequence[Spec], fill: Fill) -> Fill:
    shapes: dict[str, bytes] = {}
    by_module: dict[str, tuple[int, ...]] = {}
    for name, _, shape in specs:
        if name.endswith(".weight_packed"):
            by_module[name.removesuffix(".weight_packed")] = (shape[0], shape[1] * 8)
    for module, logical in by_module.items():
        shapes[f"{module}.weight_shape"] = np.asarray(logical, dtype="<i4").tobytes()

    def wrapped(name: str, nbytes: int) -> Iterable[Chunk]:
        if name in shapes:
            return [shapes[name]]
        return fill(name, nbytes)

    return wrapped


def write_repo(
    root: Path,
    shards: Sequence[Sequence[Spec]],
    config: dict[str, Any] | None,
    fill: Fill,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write HF-style shards `model-0000i-of-0000n.safetensors`, the index and config.json."""
    root.mkdir(parents=True, exist_ok=True)
    n = len(shards)
    weight_map: dict[str, str] = {}
    total = 0
    all_specs = [spec for shard in shards for spec in shard]
    data = _with_weight_shapes(all_specs, fill)
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        write_file(root / name, shard, data, {"format": "pt"})
        for tensor, dtype, shape in shard:
            weight_map[tensor] = name
            total += tensor_nbytes(dtype, shape)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if config is not None:
        (root / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for rel, text in (extra_files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def tokenizer_files() -> dict[str, str]:
    """Small stand-ins for the files a graft must carry over untouched."""
    return {
        "tokenizer.json": json.dumps(
            {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}
        ),
        "tokenizer_config.json": json.dumps(
            {"model_max_length": 202752, "tokenizer_class": "PreTrainedTokenizer"}
        ),
        "generation_config.json": json.dumps({"do_sample": True, "temperature": 1.0, "top_p": 0.95}),
        "chat_template.jinja": "{% for m in messages %}{{ m.content }}{% endfor %}",
    }


def write_awq_base(
    root: Path,
    dims: Dims = Dims(),
    *,
    fill: Fill | None = None,
    mtp_stub: bool = False,
) -> Path:
    """The AWQ INT4 base: one shard per decoder layer (+ embeddings first, norm and head last)."""
    head, tail = global_specs(dims)
    shards: list[list[Spec]] = [list(head)]
    for layer in range(dims.num_hidden_layers):
        shards[-1] += layer_specs(dims, layer, "awq")
        shards.append([])
    shards[-1] += tail
    if mtp_stub:
        # A base that lists a few unusable MTP entries (high-precision norms only): graft drops them.
        p = f"model.layers.{dims.mtp_layer}."
        shards[-1] += [
            (f"{p}enorm.weight", "BF16", (dims.hidden_size,)),
            (f"{p}hnorm.weight", "BF16", (dims.hidden_size,)),
        ]
    return write_repo(
        root,
        shards,
        glm_config(dims, awq_quantization_config(dims)),
        fill or seeded_fill(),
        tokenizer_files(),
    )


def write_fp8_artifact(
    root: Path,
    dims: Dims = Dims(),
    *,
    fill: Fill | None = None,
    other_layers: Sequence[int] | None = None,
    with_embeddings: bool = True,
) -> Path:
    """The FP8 artifact: its MTP layer is split over the last two shards, which hold other layers too."""
    head, tail = global_specs(dims)
    layers = list(range(dims.num_hidden_layers)) if other_layers is None else list(other_layers)
    shards: list[list[Spec]] = []
    if with_embeddings:
        shards.append(list(head))
    for layer in layers[:-1]:
        shards.append(layer_specs(dims, layer, "fp8"))
    mtp = layer_specs(dims, dims.mtp_layer, "fp8")
    half = len(mtp) // 2
    shards.append((layer_specs(dims, layers[-1], "fp8") if layers else []) + mtp[:half])
    shards.append(mtp[half:] + (tail if with_embeddings else tail[:1]))
    shards = [s for s in shards if s]
    return write_repo(
        root, shards, glm_config(dims, dict(FP8_QUANT)), fill or seeded_fill(), tokenizer_files()
    )


def write_mtp_delta(
    root: Path, dims: Dims = Dims(), *, fill: Fill | None = None, with_config: bool = True
) -> Path:
    """The delta repo: only the MTP layer's tensors (same bytes as the FP8 artifact's), one shard."""
    specs = layer_specs(dims, dims.mtp_layer, "fp8")
    config = glm_config(dims, dict(FP8_QUANT)) if with_config else None
    return write_repo(root, [specs], config, fill or seeded_fill())


def dims_dict(dims: Dims) -> dict[str, int]:
    return asdict(dims)


__all__ = [
    "BENCH_DIMS",
    "FP8_QUANT",
    "Dims",
    "block_fill",
    "glm_config",
    "layer_specs",
    "seeded_fill",
    "write_awq_base",
    "write_fp8_artifact",
    "write_mtp_delta",
    "write_repo",
]
