"""The tiny demo model: shapes, shared vocabulary, determinism, atomic writes, reuse and repair.

The vocabulary here is a small vocab-only GGUF written by the test (the real one comes from the
llama-cpp-python sdist, which the engine tests and the demo use); the generator is the real code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from gguf import GGUFReader, GGUFWriter

from gh200.deploy import tinymodel
from gh200.deploy.tinymodel import MANIFEST, TinySpec, ensure_tiny_model, is_valid
from gh200.profiles import load_profile

N_VOCAB = 300


@pytest.fixture()
def vocab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "vocab.gguf"
    writer = GGUFWriter(str(path), "llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"▁w{i}" for i in range(N_VOCAB - len(tokens))]
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([float(-i) for i in range(N_VOCAB)])
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * (N_VOCAB - 259))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    monkeypatch.setattr(tinymodel, "vocab_path", lambda: path)
    return path


def _field(reader: GGUFReader, name: str) -> object:
    return reader.fields[name].contents()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_target_and_draft_share_vocab_and_differ_in_layers(vocab: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "local--tiny"
    result = ensure_tiny_model(load_profile("local-tiny"), directory=out)
    assert result.changed and result.directory == out
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, result.target.name, result.draft.name])
    assert result.target.name == "tiny-llama-spm.gguf" and result.draft.name == "tiny-llama-spm-draft.gguf"
    target, draft = GGUFReader(str(result.target)), GGUFReader(str(result.draft))
    assert _field(target, "llama.block_count") == 2 and _field(draft, "llama.block_count") == 1
    assert _field(target, "llama.embedding_length") == 64
    assert _field(target, "tokenizer.ggml.tokens") == _field(draft, "tokenizer.ggml.tokens")
    assert len(_field(target, "tokenizer.ggml.tokens")) == N_VOCAB  # type: ignore[arg-type]
    assert _field(target, "tokenizer.ggml.bos_token_id") == 1
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in target.tensors}
    assert shapes["token_embd.weight"] == (64, N_VOCAB) and shapes["output.weight"] == (64, N_VOCAB)
    assert shapes["blk.1.ffn_up.weight"] == (64, 128)
    draft_names = {t.name for t in draft.tensors}
    assert not any(name.startswith("blk.1.") for name in draft_names)
    # The draft is the target's first layer with the same embeddings and head.
    for name in ("token_embd.weight", "output.weight", "blk.0.attn_q.weight"):
        t = next(x for x in target.tensors if x.name == name)
        d = next(x for x in draft.tensors if x.name == name)
        assert bytes(t.data) == bytes(d.data)
    # The server runs unprivileged in its container: everything must be world-readable.
    assert out.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir())
    assert not any(p.name.startswith(".local--tiny.partial") for p in out.parent.iterdir())


def test_generation_is_deterministic_and_reused(vocab: Path, tmp_path: Path) -> None:
    profile = load_profile("local-tiny")
    a = ensure_tiny_model(profile, directory=tmp_path / "a")
    b = ensure_tiny_model(profile, directory=tmp_path / "b")
    assert _sha(a.target) == _sha(b.target) and _sha(a.draft) == _sha(b.draft)
    again = ensure_tiny_model(profile, directory=tmp_path / "a")
    assert not again.changed and again.sha256 == a.sha256
    other_seed = ensure_tiny_model(profile, TinySpec(seed=1), directory=tmp_path / "c")
    assert _sha(other_seed.target) != _sha(a.target)


def test_damaged_or_foreign_directory_is_regenerated(vocab: Path, tmp_path: Path) -> None:
    profile = load_profile("local-tiny")
    out = tmp_path / "m"
    first = ensure_tiny_model(profile, directory=out)
    with open(first.target, "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x00" * 8)
    assert not is_valid(out, first.target.name, first.draft.name)
    repaired = ensure_tiny_model(profile, directory=out)
    assert repaired.changed and repaired.sha256 == first.sha256
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["spec"]["seed"] = 5
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert ensure_tiny_model(profile, directory=out).changed


def test_profile_without_gguf_files_is_refused(vocab: Path, tmp_path: Path) -> None:
    with pytest.raises(tinymodel.TinyModelFailed):
        ensure_tiny_model(load_profile("glm52-awq"), directory=tmp_path / "x")
