"""`gh200 models inspect`: what a checkpoint is made of, from safetensors headers only.

The bandwidth ruler imports `inspect_checkpoint` and reads `CheckpointSummary` (routed_expert_bytes,
n_routed_experts, n_active_experts, dense_bytes, ...): keep those names stable.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gh200.checkpoints import hub
from gh200.checkpoints.layout import PARTS, ModelConfig, classify, expert_of, layer_of
from gh200.checkpoints.local import open_checkpoint
from gh200.checkpoints.safetensors_io import tensor_nbytes
from gh200.errors import BadInput


class CheckpointSummary(BaseModel):
    """Bytes by part and the model's shape, as the headers and config.json describe them.

    dense_bytes: bytes every decoded token reads besides the routed experts and the MTP layer:
    attention, shared experts, dense MLP layers, routers, norms, lm_head and anything unclassified.
    The input embedding table is left out (a token gathers one row of it).
    active_bytes_per_token = dense_bytes + routed_expert_bytes * n_active_experts / n_routed_experts.
    """

    source: str
    revision: str | None = None
    architectures: list[str]
    model_type: str | None
    quant_method: str | None
    quantization: dict[str, Any]
    mtp_quant_method: str | None
    num_hidden_layers: int | None
    num_moe_layers: int
    num_dense_layers: int
    mtp_layers: list[int]
    num_nextn_predict_layers: int | None
    n_routed_experts: int | None
    n_active_experts: int | None
    n_shared_experts: int | None
    hidden_size: int | None
    vocab_size: int | None
    files: int
    tensor_count: int
    total_bytes: int
    bytes_by_part: dict[str, int]
    bytes_by_dtype: dict[str, int]
    routed_expert_bytes: int
    shared_expert_bytes: int
    attention_bytes: int
    dense_mlp_bytes: int
    router_bytes: int
    norm_bytes: int
    embedding_bytes: int
    lm_head_bytes: int
    embeddings_head_bytes: int
    mtp_bytes: int
    other_bytes: int
    dense_bytes: int
    bytes_per_routed_expert: int | None
    active_bytes_per_token: int | None


def quantization_summary(qc: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
    """(method, the fields that matter) of a config's quantization_config."""
    if not qc:
        return None, {}
    method = qc.get("quant_method")
    out: dict[str, Any] = {"quant_method": method}
    if method == "compressed-tensors":
        out["format"] = qc.get("format")
        groups = qc.get("config_groups") or {}
        weights = []
        for name, group in sorted(groups.items()) if isinstance(groups, dict) else []:
            w = (group or {}).get("weights") or {}
            weights.append(
                {
                    "group": name,
                    "num_bits": w.get("num_bits"),
                    "type": w.get("type"),
                    "strategy": w.get("strategy"),
                    "group_size": w.get("group_size"),
                    "symmetric": w.get("symmetric"),
                }
            )
        out["weights"] = weights
        ignore = qc.get("ignore") or []
        out["ignore_count"] = len(ignore) if isinstance(ignore, list) else 0
    elif method == "fp8":
        for key in ("fmt", "activation_scheme", "weight_block_size"):
            if key in qc:
                out[key] = qc[key]
    else:
        for key in ("bits", "group_size", "zero_point", "version", "weight_block_size", "fmt"):
            if key in qc:
                out[key] = qc[key]
    return (str(method) if method is not None else None), out


def _infer_method(names: Iterable[str], dtypes: Counter[str]) -> str | None:
    names = list(names)
    if any(n.endswith(".weight_packed") for n in names):
        return "compressed-tensors"
    if any(n.endswith(".weight_scale_inv") for n in names) and any(d.startswith("F8") for d in dtypes):
        return "fp8"
    return None


def summarize(
    source: str,
    config: ModelConfig | None,
    tensors: Iterable[tuple[str, str, int]],
    files: int,
    revision: str | None = None,
) -> CheckpointSummary:
    """Fold (name, dtype, nbytes) over parts; the config fills in what headers cannot say."""
    n_layers = config.num_hidden_layers if config else None
    parts: Counter[str] = Counter({p: 0 for p in PARTS})
    dtypes: Counter[str] = Counter()
    moe_layers: set[int] = set()
    layers_seen: set[int] = set()
    mtp_layers: set[int] = set()
    max_expert = -1
    count = 0
    names: list[str] = []
    for name, dtype, nbytes in tensors:
        count += 1
        part = classify(name, n_layers)
        parts[part] += nbytes
        dtypes[dtype] += nbytes
        layer = layer_of(name)
        if part == "mtp" and layer is not None:
            mtp_layers.add(layer)
        elif layer is not None:
            layers_seen.add(layer)
            if part == "routed_experts":
                moe_layers.add(layer)
                max_expert = max(max_expert, expert_of(name) or 0)
        if name.endswith((".weight_packed", ".weight_scale_inv")) and len(names) < 4:
            names.append(name)
    raw_q = config.quantization_config if config else None
    method, quant = quantization_summary(raw_q)
    if method is None:
        method = _infer_method(names, dtypes)
        if method:
            quant = {"quant_method": method, "inferred_from": "tensor names"}
    mtp_q = config.raw.get("mtp_quantization_config") if config else None
    mtp_method = mtp_q.get("quant_method") if isinstance(mtp_q, dict) else None
    n_routed = (config.n_routed_experts if config else None) or (max_expert + 1 if max_expert >= 0 else None)
    n_active = config.num_experts_per_tok if config else None
    routed = parts["routed_experts"]
    dense = sum(
        parts[p] for p in ("attention", "shared_experts", "dense_mlp", "router", "norms", "lm_head", "other")
    )
    per_expert = routed // (len(moe_layers) * n_routed) if moe_layers and n_routed else None
    active = dense + routed * n_active // n_routed if n_routed and n_active else None
    num_layers = n_layers if n_layers is not None else (max(layers_seen) + 1 if layers_seen else None)
    return CheckpointSummary(
        source=source,
        revision=revision,
        architectures=list(config.architectures) if config else [],
        model_type=config.model_type if config else None,
        quant_method=method,
        quantization=quant,
        mtp_quant_method=str(mtp_method) if mtp_method else None,
        num_hidden_layers=num_layers,
        num_moe_layers=len(moe_layers),
        num_dense_layers=len(layers_seen - moe_layers),
        mtp_layers=sorted(mtp_layers),
        num_nextn_predict_layers=config.num_nextn_predict_layers if config else None,
        n_routed_experts=n_routed,
        n_active_experts=n_active,
        n_shared_experts=config.n_shared_experts if config else None,
        hidden_size=config.hidden_size if config else None,
        vocab_size=config.vocab_size if config else None,
        files=files,
        tensor_count=count,
        total_bytes=sum(parts.values()),
        bytes_by_part=dict(parts),
        bytes_by_dtype=dict(sorted(dtypes.items())),
        routed_expert_bytes=routed,
        shared_expert_bytes=parts["shared_experts"],
        attention_bytes=parts["attention"],
        dense_mlp_bytes=parts["dense_mlp"],
        router_bytes=parts["router"],
        norm_bytes=parts["norms"],
        embedding_bytes=parts["embeddings"],
        lm_head_bytes=parts["lm_head"],
        embeddings_head_bytes=parts["embeddings"] + parts["lm_head"],
        mtp_bytes=parts["mtp"],
        other_bytes=parts["other"],
        dense_bytes=dense,
        bytes_per_routed_expert=per_expert,
        active_bytes_per_token=active,
    )


def inspect_local(path: Path) -> CheckpointSummary:
    ckpt = open_checkpoint(path, require_config=False)

    def tensors() -> Iterable[tuple[str, str, int]]:
        for header in ckpt.headers():
            for entry in header.tensors.values():
                yield entry.name, entry.dtype, entry.nbytes

    return summarize(str(path), ckpt.config, tensors(), len(ckpt.shards))


def inspect_remote(ref: hub.RepoRef, token: str | None = None) -> CheckpointSummary:
    """Headers of every *.safetensors file in the repo at the revision (HTTP range reads, no weights)."""
    from huggingface_hub import hf_hub_download

    from gh200.paths import cache_dir

    api = hub.api(token)
    with hub.hub_errors(str(ref), token):
        info = api.model_info(ref.repo, revision=ref.revision)
        siblings = [s.rfilename for s in (info.siblings or [])]
        shards = sorted(f for f in siblings if f.endswith(".safetensors") and "/" not in f)
        if not shards:
            raise BadInput(
                f"{ref}: no top-level *.safetensors files in the repository", "inspect a safetensors repo"
            )
        config: ModelConfig | None = None
        if "config.json" in siblings:
            path = hf_hub_download(
                ref.repo,
                "config.json",
                revision=ref.revision,
                cache_dir=str(cache_dir() / "hf-hub"),
                token=token,
                endpoint=hub.endpoint(),
            )
            config = ModelConfig.from_dict(json.loads(Path(path).read_text()))

        def header(shard: str) -> list[tuple[str, str, int]]:
            meta = api.parse_safetensors_file_metadata(ref.repo, shard, revision=ref.revision)
            return [(name, t.dtype, tensor_nbytes(t.dtype, t.shape)) for name, t in meta.tensors.items()]

        with ThreadPoolExecutor(max_workers=8) as pool:
            per_shard = list(pool.map(header, shards))
    flat = (t for shard in per_shard for t in shard)
    return summarize(ref.repo, config, flat, len(shards), revision=ref.revision)


def inspect_checkpoint(target: str | Path, *, token: str | None = None) -> CheckpointSummary:
    """Summarize a local model directory, or OWNER/NAME@REVISION on the hub (HF_ENDPOINT honoured)."""
    path = Path(target)
    if path.exists() or isinstance(target, Path):
        return inspect_local(path)
    text = str(target)
    if hub.looks_like_ref(text):
        return inspect_remote(hub.parse_ref(text, require_commit=False), token)
    raise BadInput(
        f"{text}: neither a directory nor OWNER/NAME@REVISION", "pass a model directory or a hub reference"
    )
