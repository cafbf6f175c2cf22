"""inspect (bytes by part from headers) and verify (manifest, index vs headers, graft readiness)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from ckpt_testlib import copy_tree, run_cli

from gh200.checkpoints.graft import RECORD_NAME, graft
from gh200.checkpoints.inspect import CheckpointSummary, inspect_checkpoint
from gh200.checkpoints.safetensors_io import tensor_nbytes
from gh200.checkpoints.testdata import Dims, global_specs, layer_specs, write_repo
from gh200.checkpoints.verify import MANIFEST_NAME, verify_dir
from gh200.errors import BadInput

DIMS = Dims()
L = DIMS.mtp_layer


def _bytes(specs: list[tuple[str, str, tuple[int, ...]]], needle: str | None = None) -> int:
    return sum(tensor_nbytes(d, s) for n, d, s in specs if needle is None or needle in n)


def test_inspect_awq_base_bytes_by_part(tiny: dict[str, Path]) -> None:
    s = inspect_checkpoint(tiny["base"])
    layers = [spec for layer in range(L) for spec in layer_specs(DIMS, layer, "awq")]
    head, tail = global_specs(DIMS)
    assert s.routed_expert_bytes == _bytes(layers, ".mlp.experts.")
    assert s.shared_expert_bytes == _bytes(layers, ".mlp.shared_experts.")
    assert s.attention_bytes == _bytes(layers, ".self_attn.")
    assert s.embedding_bytes == _bytes(head)
    assert s.lm_head_bytes == _bytes(tail, "lm_head")
    assert s.embeddings_head_bytes == s.embedding_bytes + s.lm_head_bytes
    assert s.dense_mlp_bytes == _bytes(layer_specs(DIMS, 0, "awq"), ".mlp.") > 0
    assert s.total_bytes == _bytes(layers + head + tail) == sum(s.bytes_by_part.values())
    index = json.loads((tiny["base"] / "model.safetensors.index.json").read_text())
    assert s.total_bytes == index["metadata"]["total_size"]
    assert (s.n_routed_experts, s.n_active_experts, s.n_shared_experts) == (4, 2, 1)
    assert (s.num_hidden_layers, s.num_moe_layers, s.num_dense_layers) == (3, 2, 1)
    assert s.mtp_layers == [] and s.mtp_bytes == 0
    assert s.quant_method == "compressed-tensors"
    assert s.quantization["format"] == "pack-quantized"
    assert s.quantization["weights"][0]["num_bits"] == 4 and s.quantization["weights"][0]["group_size"] == 32
    assert s.architectures == ["GlmMoeDsaForCausalLM"]
    assert s.dense_bytes == s.total_bytes - s.routed_expert_bytes - s.embedding_bytes
    assert s.active_bytes_per_token == s.dense_bytes + s.routed_expert_bytes * 2 // 4
    assert s.bytes_per_routed_expert == s.routed_expert_bytes // (2 * 4)
    assert set(s.bytes_by_dtype) == {"BF16", "F32", "I32"}


def test_inspect_fp8_and_grafted(tiny: dict[str, Path], tmp_path: Path) -> None:
    fp8 = inspect_checkpoint(tiny["fp8"])
    assert fp8.quant_method == "fp8" and fp8.quantization["weight_block_size"] == [128, 128]
    assert fp8.mtp_layers == [L]
    assert fp8.mtp_bytes == _bytes(layer_specs(DIMS, L, "fp8"))
    assert "F8_E4M3" in fp8.bytes_by_dtype
    graft(tiny["base"], tiny["delta"], tmp_path / "out")
    grafted = inspect_checkpoint(tmp_path / "out")
    base = inspect_checkpoint(tiny["base"])
    assert grafted.mtp_bytes == fp8.mtp_bytes
    assert grafted.mtp_quant_method == "fp8" and grafted.quant_method == "compressed-tensors"
    assert grafted.routed_expert_bytes == base.routed_expert_bytes
    assert grafted.total_bytes == base.total_bytes + fp8.mtp_bytes


def test_inspect_without_config_infers_what_it_can(tmp_path: Path) -> None:
    specs = layer_specs(DIMS, 1, "fp8")
    from gh200.checkpoints.testdata import seeded_fill

    root = write_repo(tmp_path / "bare", [specs], None, seeded_fill())
    s = inspect_checkpoint(root)
    assert s.quant_method == "fp8" and s.quantization["inferred_from"] == "tensor names"
    assert s.n_routed_experts == DIMS.n_routed_experts and s.n_active_experts is None
    assert s.active_bytes_per_token is None
    assert isinstance(s, CheckpointSummary)


def test_inspect_cli(tiny: dict[str, Path], tmp_path: Path) -> None:
    res = run_cli("models", "inspect", str(tiny["base"]), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == inspect_checkpoint(tiny["base"]).model_dump()
    table = run_cli("models", "inspect", str(tiny["base"]))
    assert table.returncode == 0 and "routed_experts" in table.stderr and table.stdout == ""
    for bad in (str(tmp_path / "missing"), "not a ref"):
        res = run_cli("models", "inspect", bad)
        assert res.returncode == 2 and res.stderr.startswith("error: "), res.stderr
    with pytest.raises(BadInput, match="no safetensors weights"):
        inspect_checkpoint(tmp_path)


def _manifest(root: Path) -> None:
    files = {
        str(p.relative_to(root)): {
            "size": p.stat().st_size,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        }
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
    (root / MANIFEST_NAME).write_text(
        json.dumps({"format": 1, "repo": "o/n", "revision": "0" * 40, "files": files})
    )


def test_verify_manifest_catches_changed_missing_and_resized_files(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    root = copy_tree(tiny["base"], tmp_path / "m")
    _manifest(root)
    report = verify_dir(root)
    assert report.ok, report.problems
    assert report.files_hashed == 10
    shard = root / "model-00002-of-00004.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    (root / "tokenizer.json").unlink()
    (root / "chat_template.jinja").write_text("changed length")
    problems = verify_dir(root).problems
    assert any(p.startswith("model-00002-of-00004.safetensors: sha256") for p in problems)
    assert "tokenizer.json: listed in the manifest but missing" in problems
    assert any(p.startswith("chat_template.jinja: size") for p in problems)


def test_verify_index_against_headers(tiny: dict[str, Path], tmp_path: Path) -> None:
    root = copy_tree(tiny["base"], tmp_path / "s")
    index_path = root / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.layers.1.mlp.experts.0.up_proj.weight_packed"] = (
        "model-00001-of-00004.safetensors"
    )
    index["metadata"]["total_size"] += 1
    index_path.write_text(json.dumps(index))
    (root / "stray.safetensors").write_bytes((root / "model-00004-of-00004.safetensors").read_bytes())
    report = verify_dir(root)
    assert any(
        "model.layers.1.mlp.experts.0.up_proj.weight_packed in model-00001-of-00004" in p
        for p in report.problems
    )
    assert "stray.safetensors is not referenced by model.safetensors.index.json" in report.problems
    assert any("total_size" in w for w in report.warnings)  # a plain model: only a warning
    assert any("no .gh200-manifest.json" in w for w in report.warnings)


def test_verify_graft_readiness(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "g"
    graft(tiny["base"], tiny["delta"], out)
    assert verify_dir(out).ok

    # Each damage on its own copy (hard links would make edits leak into the base: copy, not link).
    def damaged(name: str) -> Path:
        return copy_tree(out, tmp_path / name)

    cfg_missing = damaged("noqc")
    cfg = json.loads((cfg_missing / "config.json").read_text())
    cfg["mtp_quantization_config"] = {"quant_method": "awq"}
    (cfg_missing / "config.json").write_text(json.dumps(cfg))
    assert any("mtp_quantization_config" in p for p in verify_dir(cfg_missing).problems)

    zero = damaged("zero")
    cfg = json.loads((zero / "config.json").read_text())
    cfg["num_nextn_predict_layers"] = 0
    (zero / "config.json").write_text(json.dumps(cfg))
    assert any("num_nextn_predict_layers is 0" in p for p in verify_dir(zero).problems)

    record = damaged("record")
    rec = json.loads((record / RECORD_NAME).read_text())
    rec["mtp_tensors"][f"model.layers.{L}.enorm.weight"]["dtype"] = "F32"
    (record / RECORD_NAME).write_text(json.dumps(rec))
    assert any("graft recorded F32" in p for p in verify_dir(record).problems)

    dropped = damaged("dropped")
    index_path = dropped / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"][f"model.layers.{L}.mlp.experts.1.gate_proj.weight"]
    index_path.write_text(json.dumps(index))
    problems = verify_dir(dropped).problems
    assert any(f"lacks model.layers.{L}.mlp.experts.1.gate_proj.weight" in p for p in problems), problems
    assert any("total_size" in p for p in problems)  # a graft's total_size must be exact

    truncated = damaged("truncated")
    shard = truncated / f"model-mtp-layer{L}.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    assert any("truncated" in p for p in verify_dir(truncated).problems)

    res = run_cli("models", "verify", str(truncated), "--json")
    assert res.returncode == 1
    assert json.loads(res.stdout)["ok"] is False
    assert res.stderr.startswith("error: ") and "truncated" in res.stderr
    ok = run_cli("models", "verify", str(out))
    assert ok.returncode == 0 and "MTP layer [3] complete" in ok.stderr


def _flip(path: Path, at: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "rel", [f"model-mtp-layer{L}.safetensors", "tokenizer.json", "model.safetensors.index.json"]
)
def test_verify_catches_a_flipped_byte_in_what_the_graft_wrote(
    tiny: dict[str, Path], tmp_path: Path, rel: str
) -> None:
    out = tmp_path / "g"
    graft(tiny["base"], tiny["delta"], out)
    # A change that leaves the file loadable (tensor data, JSON text or indentation): only the
    # recorded sha256 can tell.
    path = out / rel
    if rel.endswith(".index.json"):
        path.write_bytes(path.read_bytes().replace(b'\n  "', b'\n\t "', 1))
    else:
        _flip(path, -1 if rel.endswith(".safetensors") else 20)
    report = verify_dir(out)
    assert [p.split(":")[0] for p in report.problems] == [rel], report.problems
    assert "graft record says" in report.problems[0]
    res = run_cli("models", "verify", str(out))
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{out}: {rel}: sha256 " in errors[0] and "(fix: " in errors[0], res.stderr


def test_verify_checks_linked_base_shards_against_the_base_fetch_manifest(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    base = copy_tree(tiny["base"], tmp_path / "base")
    _manifest(base)
    out = tmp_path / "g"
    graft(base, tiny["delta"], out)
    report = verify_dir(out)
    assert report.ok, report.problems
    assert report.files_hashed == len(list(out.iterdir())) - 1  # all but the record itself
    _flip(base / "model-00003-of-00004.safetensors")  # the same inode as OUT's link
    assert [p.split(":")[0] for p in verify_dir(out).problems] == ["model-00003-of-00004.safetensors"]


def test_verify_reads_the_record_for_missing_and_resized_outputs(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "g"
    graft(tiny["base"], tiny["delta"], out)
    (out / "tokenizer.json").unlink()
    (out / "generation_config.json").write_text("{}")
    shard = out / "model-00004-of-00004.safetensors"
    data = shard.read_bytes()
    shard.unlink()  # OUT's link, not the base's file
    shard.write_bytes(data + b"\0" * 8)
    problems = verify_dir(out).problems
    assert "tokenizer.json: listed in the graft record but missing" in problems
    assert f"{shard.name}: size {len(data) + 8}, graft record says {len(data)}" in problems
    assert any(p.startswith("generation_config.json: size 2, graft record says") for p in problems)
    record = json.loads((out / RECORD_NAME).read_text())
    record["format"] = 1
    (out / RECORD_NAME).write_text(json.dumps(record))
    report = verify_dir(out)
    assert any("format 1" in w and "re-run `gh200 models graft`" in w for w in report.warnings)
    (out / RECORD_NAME).write_text("{not json")
    assert f"{RECORD_NAME}: not a readable JSON object" in verify_dir(out).problems


@pytest.mark.parametrize("case", ["empty", "no model", "a file", "missing"])
def test_verify_without_a_model_is_bad_input_not_ok(tmp_path: Path, case: str) -> None:
    target = tmp_path / "dir"
    if case in ("empty", "no model"):
        target.mkdir()
    if case == "no model":
        (target / "README.md").write_text("# notes\n")
        (target / "config.json").write_text("{}")
    if case == "a file":
        target.write_text("x")
    with pytest.raises(BadInput) as err:
        verify_dir(target)
    assert str(target) in err.value.message and err.value.exit_code == 2
    assert "\n" not in err.value.one_line()
    if case != "empty":
        return  # the CLI edge is the same for every case: one subprocess pair is enough
    res = run_cli("models", "verify", str(target))
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {target}: ") and "(fix: " in lines[0], lines
    assert "ok" not in res.stdout.split()
    assert json.loads(run_cli("models", "verify", str(target), "--json").stdout or "null") is None
