"""Checks on an MTP layer's tensors against the base model's config (used by graft and verify)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from gh200.checkpoints.layout import (
    FP8_DTYPES,
    SCALE_INV,
    ModelConfig,
    expert_of,
    fp8_scale_shape,
    layer_of,
    layer_tensor_shapes,
    suffix_key,
)
from gh200.checkpoints.safetensors_io import TensorEntry
from gh200.errors import BadInput

SCALE_DTYPES = ("F32", "BF16", "F16")


class GraftCheckFailed(BadInput):
    """An input does not fit the graft: a missing or mis-shaped tensor, a config that disagrees."""


def natural_key(name: str) -> list[Any]:
    """Sort key so that experts.2 comes before experts.10 (stable, locale-free)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def block_size(quantization_config: Mapping[str, Any] | None) -> tuple[int, int]:
    block = (quantization_config or {}).get("weight_block_size") or [128, 128]
    if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        raise GraftCheckFailed(
            f"quantization_config.weight_block_size {block!r} is not two positive integers",
            "use the FP8 artifact's config.json unchanged",
        )
    return int(block[0]), int(block[1])


def check_configs_agree(base: ModelConfig, source: ModelConfig) -> None:
    """Architectures and the dimensions the MTP layer depends on must be the same in both configs."""
    if source.architectures and base.architectures != source.architectures:
        raise GraftCheckFailed(
            f"architectures differ: base {list(base.architectures)}, MTP source {list(source.architectures)}",
            "take the MTP layer from the same model family as the base",
        )
    for field in ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "n_routed_experts"):
        b, s = getattr(base, field), getattr(source, field)
        if b is not None and s is not None and b != s:
            raise GraftCheckFailed(
                f"config {field} differs: base {b}, MTP source {s}", "take the MTP layer from the same model"
            )


def check_mtp_layer(
    base: ModelConfig,
    tensors: Mapping[str, TensorEntry],
    layers: list[int],
    block: tuple[int, int],
) -> dict[str, int]:
    """Every MTP tensor present, shapes as the base config implies, FP8 scales in place.

    `tensors` holds the MTP layers' tensors (name -> header entry). Returns counts per suffix (expert
    index shown as '*'). Raises GraftCheckFailed naming the first offending tensor.
    """
    expected, optional = layer_tensor_shapes(base, mtp=True)
    n_experts = base.n_routed_experts
    for name in sorted(tensors, key=natural_key):
        entry = tensors[name]
        if name.endswith((".weight_packed", ".qweight")):
            raise GraftCheckFailed(
                f"MTP source tensor {name} is int-packed ({entry.dtype}); the MTP layer must be FP8 or BF16",
                "take the MTP layer from the FP8 artifact (or its delta repo)",
            )
        expert = expert_of(name)
        if expert is not None and n_experts is not None and expert >= n_experts:
            raise GraftCheckFailed(
                f"MTP source tensor {name}: expert {expert} but the base has n_routed_experts={n_experts}",
                "take the MTP layer from the same model as the base",
            )
    for layer in layers:
        prefix = f"model.layers.{layer}."
        for key in sorted(expected, key=natural_key):
            if key in optional:
                continue
            names = (
                [prefix + key.replace("*", str(e)) for e in range(n_experts or 0)]
                if "*" in key
                else [prefix + key]
            )
            for name in names:
                if name not in tensors:
                    have = sum(1 for t in tensors if layer_of(t) == layer)
                    raise GraftCheckFailed(
                        f"MTP source lacks {name} (layer {layer} incomplete: {have} tensors present)",
                        "use the complete FP8 artifact or delta repo for this model",
                    )
    for name in sorted(tensors, key=natural_key):
        entry = tensors[name]
        key = suffix_key(name)
        want = expected.get(key)
        if want is not None and entry.shape != want:
            raise GraftCheckFailed(
                f"MTP source tensor {name} has shape {list(entry.shape)}, "
                f"the base config implies {list(want)}",
                "take the MTP layer from the same model as the base (hidden size, experts, vocab)",
            )
        if name.endswith(".weight") and entry.dtype in FP8_DTYPES:
            scale_name = name[: -len("weight")] + SCALE_INV
            scale = tensors.get(scale_name)
            if scale is None:
                raise GraftCheckFailed(
                    f"FP8 weight {name} has no {scale_name}", "use the complete FP8 artifact or delta repo"
                )
            want_scale = fp8_scale_shape(entry.shape, block)
            if scale.shape != want_scale:
                raise GraftCheckFailed(
                    f"{scale_name} has shape {list(scale.shape)}, expected {list(want_scale)} "
                    f"(ceil({list(entry.shape)} / {list(block)}))",
                    "use the FP8 artifact whose quantization_config matches its tensors",
                )
            if scale.dtype not in SCALE_DTYPES:
                raise GraftCheckFailed(
                    f"{scale_name} has dtype {scale.dtype}, expected F32", "use the FP8 artifact"
                )
        if name.endswith("." + SCALE_INV):
            weight_name = name[: -len(SCALE_INV)] + "weight"
            if weight_name not in tensors:
                raise GraftCheckFailed(f"{name} has no weight {weight_name}", "use the complete FP8 artifact")
    return dict(sorted(Counter(suffix_key(n) for n in tensors).items(), key=lambda kv: natural_key(kv[0])))
