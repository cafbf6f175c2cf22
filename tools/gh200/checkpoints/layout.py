"""What a tensor name means in a DeepSeek-V3/V3.2-family checkpoint (GLM-5.x `GlmMoeDsaForCausalLM`).

Names follow the Hugging Face layout: `model.layers.N.self_attn.*` (MLA projections and the DSA
indexer), `model.layers.N.mlp.experts.E.{gate,up,down}_proj`, `mlp.shared_experts.*`, `mlp.gate`
(router, with `e_score_correction_bias`), dense `mlp.{gate,up,down}_proj` in the first layers, and the
MTP layer at index `num_hidden_layers` with `enorm`, `hnorm`, `eh_proj` and `shared_head`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")
_EXPERT_RE = re.compile(r"\.(?:mlp|ffn|block_sparse_moe)\.experts\.(\d+)\.")
_SHARED_RE = re.compile(r"\.(?:mlp|ffn)\.shared_experts?\.")
_ROUTER_RE = re.compile(r"\.(?:mlp|ffn|block_sparse_moe)\.gate\.(?:weight|bias|e_score_correction_bias)$")
_DENSE_MLP_RE = re.compile(r"\.(?:mlp|ffn)\.(?:gate_proj|up_proj|down_proj|w1|w2|w3)\.")
_ATTENTION_RE = re.compile(r"\.(?:self_attn|attn|attention)\.")

PARTS = (
    "routed_experts",
    "shared_experts",
    "attention",
    "dense_mlp",
    "router",
    "norms",
    "embeddings",
    "lm_head",
    "mtp",
    "other",
)

# Suffixes of the FP8 block-quantization scales (DeepSeek/GLM FP8 artifacts).
SCALE_INV = "weight_scale_inv"
FP8_DTYPES = ("F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ")


def _int(cfg: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


@dataclass(frozen=True)
class ModelConfig:
    """The config.json fields the checkpoint tools use; every field is optional in the file."""

    raw: dict[str, Any] = field(repr=False)
    architectures: tuple[str, ...]
    model_type: str | None
    num_hidden_layers: int | None
    hidden_size: int | None
    vocab_size: int | None
    n_routed_experts: int | None
    num_experts_per_tok: int | None
    n_shared_experts: int | None
    moe_intermediate_size: int | None
    intermediate_size: int | None
    first_k_dense_replace: int | None
    num_nextn_predict_layers: int | None
    num_attention_heads: int | None
    q_lora_rank: int | None
    kv_lora_rank: int | None
    qk_rope_head_dim: int | None
    qk_nope_head_dim: int | None
    v_head_dim: int | None
    index_n_heads: int | None
    index_head_dim: int | None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        archs = raw.get("architectures") or []
        return cls(
            raw=raw,
            architectures=tuple(str(a) for a in archs) if isinstance(archs, list) else (),
            model_type=raw.get("model_type") if isinstance(raw.get("model_type"), str) else None,
            num_hidden_layers=_int(raw, "num_hidden_layers", "n_layers", "num_layers"),
            hidden_size=_int(raw, "hidden_size", "dim"),
            vocab_size=_int(raw, "vocab_size"),
            n_routed_experts=_int(raw, "n_routed_experts", "num_experts", "num_local_experts"),
            num_experts_per_tok=_int(raw, "num_experts_per_tok", "n_activated_experts", "moe_topk"),
            n_shared_experts=_int(raw, "n_shared_experts", "num_shared_experts"),
            moe_intermediate_size=_int(raw, "moe_intermediate_size", "moe_inter_dim"),
            intermediate_size=_int(raw, "intermediate_size", "inter_dim"),
            first_k_dense_replace=_int(raw, "first_k_dense_replace", "n_dense_layers"),
            num_nextn_predict_layers=_int(raw, "num_nextn_predict_layers", "n_mtp_layers"),
            num_attention_heads=_int(raw, "num_attention_heads", "n_heads"),
            q_lora_rank=_int(raw, "q_lora_rank"),
            kv_lora_rank=_int(raw, "kv_lora_rank"),
            qk_rope_head_dim=_int(raw, "qk_rope_head_dim"),
            qk_nope_head_dim=_int(raw, "qk_nope_head_dim"),
            v_head_dim=_int(raw, "v_head_dim"),
            index_n_heads=_int(raw, "index_n_heads"),
            index_head_dim=_int(raw, "index_head_dim"),
        )

    @property
    def quantization_config(self) -> dict[str, Any] | None:
        value = self.raw.get("quantization_config")
        return value if isinstance(value, dict) else None


def layer_of(name: str) -> int | None:
    match = LAYER_RE.match(name)
    return int(match.group(1)) if match else None


def expert_of(name: str) -> int | None:
    match = _EXPERT_RE.search(name)
    return int(match.group(1)) if match else None


def classify(name: str, num_hidden_layers: int | None) -> str:
    """Which part of the model a tensor belongs to (one of PARTS)."""
    layer = layer_of(name)
    if layer is not None and num_hidden_layers is not None and layer >= num_hidden_layers:
        return "mtp"
    if _EXPERT_RE.search(name):
        return "routed_experts"
    if _SHARED_RE.search(name):
        return "shared_experts"
    if _ROUTER_RE.search(name):
        return "router"
    if _ATTENTION_RE.search(name):
        return "attention"
    if _DENSE_MLP_RE.search(name):
        return "dense_mlp"
    if "embed_tokens." in name or name.startswith(("tok_embeddings.", "embed.")):
        return "embeddings"
    if name.startswith(("lm_head.", "output.", "head.")):
        return "lm_head"
    module = name.rsplit(".", 1)[0]
    if "norm" in module.rsplit(".", 1)[-1]:
        return "norms"
    return "other"


def suffix_key(name: str) -> str:
    """A layer tensor's name without its layer prefix, expert index replaced by '*' (for counting)."""
    rest = LAYER_RE.sub("", name)
    return re.sub(r"\.experts\.\d+\.", ".experts.*.", rest)


def fp8_scale_shape(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, ...]:
    """Expected weight_scale_inv shape for an FP8 block-quantized weight: [ceil(out/b0), ceil(in/b1)]."""
    if len(shape) != 2:
        return tuple(math.ceil(d / block[0]) for d in shape)
    return (math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1]))


def layer_tensor_shapes(cfg: ModelConfig, mtp: bool) -> tuple[dict[str, tuple[int, ...] | None], set[str]]:
    """Expected logical shapes (None: shape not derivable from the config) of one MoE decoder layer.

    Keys are suffixes after `model.layers.N.`; `experts.*` stands for every expert index. Returns
    (expected, optional): tensors in `optional` may be absent (GLM shares embeddings and head with the
    main model; DeepSeek-V3 artifacts repeat them in the MTP layer).
    """
    h = cfg.hidden_size
    e = cfg.n_routed_experts
    i = cfg.moe_intermediate_size
    s = cfg.n_shared_experts
    v = cfg.vocab_size
    heads = cfg.num_attention_heads
    rope, nope, vdim = cfg.qk_rope_head_dim, cfg.qk_nope_head_dim, cfg.v_head_dim

    def shape(*dims: int | None) -> tuple[int, ...] | None:
        return None if any(d is None for d in dims) else tuple(d for d in dims if d is not None)

    def mul(a: int | None, b: int | None) -> int | None:
        return None if a is None or b is None else a * b

    def add(a: int | None, b: int | None) -> int | None:
        return None if a is None or b is None else a + b

    expected: dict[str, tuple[int, ...] | None] = {
        "input_layernorm.weight": shape(h),
        "post_attention_layernorm.weight": shape(h),
        "self_attn.kv_a_proj_with_mqa.weight": shape(add(cfg.kv_lora_rank, rope), h),
        "self_attn.kv_a_layernorm.weight": shape(cfg.kv_lora_rank),
        "self_attn.kv_b_proj.weight": shape(mul(heads, add(nope, vdim)), cfg.kv_lora_rank),
        "self_attn.o_proj.weight": shape(h, mul(heads, vdim)),
        "mlp.gate.weight": shape(e, h),
        "mlp.gate.e_score_correction_bias": shape(e),
        "mlp.experts.*.gate_proj.weight": shape(i, h),
        "mlp.experts.*.up_proj.weight": shape(i, h),
        "mlp.experts.*.down_proj.weight": shape(h, i),
    }
    if cfg.q_lora_rank is not None:
        expected["self_attn.q_a_proj.weight"] = shape(cfg.q_lora_rank, h)
        expected["self_attn.q_a_layernorm.weight"] = shape(cfg.q_lora_rank)
        expected["self_attn.q_b_proj.weight"] = shape(mul(heads, add(nope, rope)), cfg.q_lora_rank)
    else:
        expected["self_attn.q_proj.weight"] = shape(mul(heads, add(nope, rope)), h)
    if cfg.index_n_heads is not None and cfg.index_head_dim is not None:
        ih, idim = cfg.index_n_heads, cfg.index_head_dim
        q_in = cfg.q_lora_rank if cfg.q_lora_rank is not None else h
        expected["self_attn.indexer.wq_b.weight"] = shape(ih * idim, q_in)
        expected["self_attn.indexer.wk.weight"] = shape(idim, h)
        expected["self_attn.indexer.k_norm.weight"] = shape(idim)
        expected["self_attn.indexer.k_norm.bias"] = shape(idim)
        expected["self_attn.indexer.weights_proj.weight"] = shape(ih, h)
    if s:
        expected["mlp.shared_experts.gate_proj.weight"] = shape(mul(i, s), h)
        expected["mlp.shared_experts.up_proj.weight"] = shape(mul(i, s), h)
        expected["mlp.shared_experts.down_proj.weight"] = shape(h, mul(i, s))
    optional: set[str] = set()
    if mtp:
        expected["enorm.weight"] = shape(h)
        expected["hnorm.weight"] = shape(h)
        expected["eh_proj.weight"] = shape(h, mul(h, 2))
        expected["shared_head.norm.weight"] = shape(h)
        expected["shared_head.head.weight"] = shape(v, h)
        expected["embed_tokens.weight"] = shape(v, h)
        optional = {"shared_head.head.weight", "embed_tokens.weight"}
    return expected, optional
