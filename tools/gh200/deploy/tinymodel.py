"""The local demo's model: a tiny llama with a real llama.cpp vocabulary and random weights.

The vocabulary is `ggml-vocab-llama-spm.gguf` from the llama.cpp source vendored in the pinned
llama-cpp-python sdist (the same archive the llama.cpp image is built from), so tokenisation is
real while the weights are seeded noise. The draft model is the target's first layer alone, sharing
its embeddings and output head: its next-token guess agrees with the target whenever the target's
second layer does not change the argmax, so speculative decoding accepts a realistic share of
drafts (the second layer's weight scale sets how often; see DEFAULT_SPEC).

Written atomically into `model_host_dir(profile)` with a manifest; an existing directory whose
manifest and file hashes match is reused.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gh200.errors import OperationFailed
from gh200.fsutil import atomic_dir, atomic_write_bytes, sha256_file
from gh200.paths import cache_dir
from gh200.profiles.render import model_host_dir
from gh200.profiles.schema import Profile

GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
VOCAB_NAME = "ggml-vocab-llama-spm.gguf"
VOCAB_MEMBER = "vendor/llama.cpp/models/" + VOCAB_NAME
SDIST_PACKAGE = "llama-cpp-python"
LLAMA_CPP_RECIPE = "llama_cpp"


class TinyModelFailed(OperationFailed):
    """The tiny model could not be generated (vocabulary missing, write failed)."""


@dataclass(frozen=True)
class TinySpec:
    """Shape and seed of the generated pair. Changing any field regenerates the model."""

    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 4
    n_ff: int = 128
    context_length: int = 32768
    seed: int = 20260522
    # Standard deviation of the first layer's projections and of the second layer's, relative to
    # 1/sqrt(fan_in). The second layer is what the draft lacks: small enough that the draft agrees
    # with the target on most tokens, large enough that it does not always.
    layer_scale: float = 1.0
    last_layer_scale: float = 0.5


DEFAULT_SPEC = TinySpec()


def _llama_cpp_sdist() -> tuple[Path, str]:
    """The pinned llama-cpp-python sdist (downloaded and sha256-checked by the images module)."""
    from gh200.images.build import sdist_path
    from gh200.images.recipe import load_recipe

    for source in load_recipe(LLAMA_CPP_RECIPE).sources:
        if source.package == SDIST_PACKAGE:
            return sdist_path(source.package, source.version), source.sha256
    raise TinyModelFailed(
        f"containers/{LLAMA_CPP_RECIPE}/recipe.yaml pins no {SDIST_PACKAGE} sdist",
        "restore the recipe's sources entry",
    )


def vocab_path() -> Path:
    """ggml-vocab-llama-spm.gguf extracted from the sdist once, cached by the sdist's sha256."""
    sdist, sha = _llama_cpp_sdist()
    out = cache_dir() / "vocab" / f"{sha[:16]}-{VOCAB_NAME}"
    if out.exists():
        return out
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                # The sdist's top directory is `llama_cpp_python-<version>/`.
                if member.isfile() and member.name.split("/", 1)[-1] == VOCAB_MEMBER:
                    handle = tar.extractfile(member)
                    if handle is None:
                        break
                    atomic_write_bytes(out, handle.read(), 0o644)
                    return out
    except (OSError, tarfile.TarError) as err:
        raise TinyModelFailed(f"cannot read {sdist}: {err}", "delete it from the cache and retry") from err
    raise TinyModelFailed(f"{sdist} holds no {VOCAB_MEMBER}", "check the pinned llama-cpp-python version")


def _read_vocab(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(name: str) -> Any:
        found = reader.fields.get(name)
        if found is None:
            raise TinyModelFailed(f"{path} lacks {name}", "use a llama.cpp vocab-only GGUF")
        return found.contents()

    return {
        "model": field("tokenizer.ggml.model"),
        "pre": field("tokenizer.ggml.pre"),
        "tokens": field("tokenizer.ggml.tokens"),
        "scores": field("tokenizer.ggml.scores"),
        "types": field("tokenizer.ggml.token_type"),
        "bos": int(field("tokenizer.ggml.bos_token_id")),
        "eos": int(field("tokenizer.ggml.eos_token_id")),
        "unk": int(field("tokenizer.ggml.unknown_token_id")),
        "add_bos": bool(field("tokenizer.ggml.add_bos_token")),
        "add_eos": bool(field("tokenizer.ggml.add_eos_token")),
    }


def _weights(spec: TinySpec, n_vocab: int) -> dict[str, np.ndarray]:
    """Every tensor of the target model, in llama.cpp's names; numpy shapes are (out, in)."""
    rng = np.random.default_rng(spec.seed)
    d, ff = spec.n_embd, spec.n_ff
    head_dim = d // spec.n_head
    kv = head_dim * spec.n_head_kv

    def normal(shape: tuple[int, int], scale: float) -> np.ndarray:
        values: np.ndarray = rng.standard_normal(shape) * (scale / np.sqrt(shape[1]))
        return values.astype(np.float32)

    tensors: dict[str, np.ndarray] = {
        "token_embd.weight": rng.standard_normal((n_vocab, d)).astype(np.float32),
        "output_norm.weight": np.ones(d, dtype=np.float32),
        # Unit-variance logits over the vocabulary: a sharp, arbitrary next-token map.
        "output.weight": normal((n_vocab, d), 4.0),
    }
    for layer in range(spec.n_layer):
        scale = spec.last_layer_scale if layer == spec.n_layer - 1 and layer > 0 else spec.layer_scale
        prefix = f"blk.{layer}."
        tensors[prefix + "attn_norm.weight"] = np.ones(d, dtype=np.float32)
        tensors[prefix + "attn_q.weight"] = normal((d, d), scale)
        tensors[prefix + "attn_k.weight"] = normal((kv, d), scale)
        tensors[prefix + "attn_v.weight"] = normal((kv, d), scale)
        tensors[prefix + "attn_output.weight"] = normal((d, d), scale)
        tensors[prefix + "ffn_norm.weight"] = np.ones(d, dtype=np.float32)
        tensors[prefix + "ffn_gate.weight"] = normal((ff, d), scale)
        tensors[prefix + "ffn_up.weight"] = normal((ff, d), scale)
        tensors[prefix + "ffn_down.weight"] = normal((d, ff), scale)
    return tensors


def _write_gguf(
    path: Path,
    *,
    name: str,
    spec: TinySpec,
    n_layer: int,
    vocab: dict[str, Any],
    tensors: dict[str, np.ndarray],
) -> None:
    from gguf import GGUFWriter, LlamaFileType

    writer = GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_block_count(n_layer)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.n_embd)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(spec.n_embd // spec.n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(vocab["tokens"]))
    writer.add_file_type(LlamaFileType.ALL_F32)
    writer.add_tokenizer_model(vocab["model"])
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_scores(vocab["scores"])
    writer.add_token_types(vocab["types"])
    writer.add_bos_token_id(vocab["bos"])
    writer.add_eos_token_id(vocab["eos"])
    writer.add_unk_token_id(vocab["unk"])
    writer.add_add_bos_token(vocab["add_bos"])
    writer.add_add_eos_token(vocab["add_eos"])
    for tensor_name, array in tensors.items():
        if tensor_name.startswith("blk."):
            layer = int(tensor_name.split(".")[1])
            if layer >= n_layer:
                continue
        writer.add_tensor(tensor_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _manifest_for(spec: TinySpec, target: str, draft: str) -> dict[str, Any]:
    return {"generator_version": GENERATOR_VERSION, "spec": asdict(spec), "target": target, "draft": draft}


def is_valid(directory: Path, target: str, draft: str, spec: TinySpec = DEFAULT_SPEC) -> bool:
    """The manifest names this spec and these files, and every file still has its recorded hash."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    expected = _manifest_for(spec, target, draft)
    if any(manifest.get(key) != value for key, value in expected.items()):
        return False
    hashes = manifest.get("sha256")
    if not isinstance(hashes, dict) or set(hashes) != {target, draft}:
        return False
    return all(
        (directory / name).is_file() and sha256_file(directory / name) == hashes[name] for name in hashes
    )


@dataclass
class TinyModelResult:
    directory: Path
    target: Path
    draft: Path
    changed: bool
    sha256: dict[str, str]
    size_bytes: int

    def as_json(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "target": str(self.target),
            "draft": str(self.draft),
            "changed": self.changed,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
        }


def ensure_tiny_model(
    profile: Profile, spec: TinySpec = DEFAULT_SPEC, directory: Path | None = None
) -> TinyModelResult:
    """Generate the profile's tiny target + draft GGUFs unless a valid copy is already there."""
    from gh200.fsutil import file_lock

    if profile.model.gguf_file is None or profile.model.draft is None:
        raise TinyModelFailed(
            f"profile {profile.name} names no gguf_file and draft file",
            "the tiny model needs model.gguf_file and model.draft.file",
        )
    out = directory or model_host_dir(profile)
    target, draft = profile.model.gguf_file, profile.model.draft.file
    with file_lock(out.parent / f".{out.name}.lock"):
        changed = False
        if not is_valid(out, target, draft, spec):
            if out.exists():
                shutil.rmtree(out)
            vocab = _read_vocab(vocab_path())
            tensors = _weights(spec, len(vocab["tokens"]))
            with atomic_dir(out) as tmp:
                _write_gguf(
                    tmp / target,
                    name=f"{profile.name} target",
                    spec=spec,
                    n_layer=spec.n_layer,
                    vocab=vocab,
                    tensors=tensors,
                )
                _write_gguf(
                    tmp / draft,
                    name=f"{profile.name} draft",
                    spec=spec,
                    n_layer=1,
                    vocab=vocab,
                    tensors=tensors,
                )
                manifest = _manifest_for(spec, target, draft)
                manifest["sha256"] = {name: sha256_file(tmp / name) for name in (target, draft)}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                # The server runs as an unprivileged user in the container: the mount must be readable.
                tmp.chmod(0o755)
                for child in tmp.iterdir():
                    child.chmod(0o644)
            changed = True
        hashes = json.loads((out / MANIFEST).read_text())["sha256"]
    return TinyModelResult(
        directory=out,
        target=out / target,
        draft=out / draft,
        changed=changed,
        sha256=hashes,
        size_bytes=sum((out / name).stat().st_size for name in (target, draft)),
    )
