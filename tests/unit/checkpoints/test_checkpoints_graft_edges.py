"""graft, in-process: what it carries and leaves, the layouts it accepts, what it says, how it writes.

Called directly (not through the CLI) so that mutation testing, which selects tests per function by
the calls it sees in-process, pins these promises too.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ckpt_testlib import copy_tree

from gh200.checkpoints import graft as graft_mod
from gh200.checkpoints import safetensors_io as st_io
from gh200.checkpoints.checks import natural_key
from gh200.checkpoints.graft import RECORD_NAME, graft
from gh200.checkpoints.safetensors_io import read_header
from gh200.checkpoints.testdata import Dims, seeded_fill, write_awq_base, write_mtp_delta
from gh200.checkpoints.verify import verify_dir
from gh200.errors import BadInput

DIMS = Dims()
L = DIMS.mtp_layer
MTP = f"model.layers.{L}."
MTP_SHARD = f"model-mtp-layer{L}.safetensors"
INDEX = "model.safetensors.index.json"


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def said(call: Callable[[], object]) -> str:
    """The one line the CLI prints for a refusal (exit 2)."""
    with pytest.raises(BadInput) as err:
        call()
    assert err.value.exit_code == 2
    return err.value.one_line()


def edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2) + "\n")


def weight_map(root: Path) -> dict[str, str]:
    wm: dict[str, str] = json.loads((root / INDEX).read_text())["weight_map"]
    return wm


# What the base carries ----------------------------------------------------------------------------


def test_partial_downloads_and_lock_files_are_not_carried(tiny: dict[str, Path], tmp_path: Path) -> None:
    """An interrupted download leaves `*.incomplete` and `*.lock` beside the model: not part of OUT.

    Their names sort before every model file, so skipping them must not end the walk early."""
    base = copy_tree(tiny["base"], tmp_path / "base")
    (base / "0a1b2c.incomplete").write_bytes(b"half a shard")
    (base / "0a1b2c.lock").write_bytes(b"")
    (base / "extra").mkdir()
    (base / "extra" / "notes.md.incomplete").write_text("half")
    out = tmp_path / "out"
    result = graft(base, tiny["delta"], out)
    carried = {rel for rel in tree(out) if rel not in (MTP_SHARD, INDEX, "config.json", RECORD_NAME)}
    assert carried == {rel for rel in tree(tiny["base"]) if rel not in (INDEX, "config.json")}, (
        "every model file carried, no partial download"
    )
    outputs = json.loads((out / RECORD_NAME).read_text())["outputs"]
    assert not any(rel.endswith((".incomplete", ".lock")) for rel in outputs)
    assert result.plan.warnings == []


def test_only_top_level_shards_missing_from_the_index_are_left_out(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    """A stray shard beside the indexed ones is not served by vLLM: left out, with a warning naming it.
    A shard in a sub-folder is the base's own business (an original/ copy): carried like any file."""
    base = copy_tree(tiny["base"], tmp_path / "base")
    st_io.write_file(base / "aaa-stray.safetensors", [("x", "U8", (3,))], seeded_fill())
    (base / "original").mkdir()
    st_io.write_file(base / "original" / "extra.safetensors", [("y", "U8", (5,))], seeded_fill())
    out = tmp_path / "out"
    result = graft(base, tiny["delta"], out)
    assert result.plan.warnings == [
        "base file aaa-stray.safetensors is not in the base's index: left out of OUT"
    ]
    assert result.as_dict()["warnings"] == result.plan.warnings
    assert not (out / "aaa-stray.safetensors").exists()
    assert (out / "original" / "extra.safetensors").read_bytes() == (
        base / "original" / "extra.safetensors"
    ).read_bytes()
    for rel in tree(tiny["base"]):  # the walk went on past the stray shard
        assert (out / rel).is_file(), rel
    assert verify_dir(out).ok


def test_a_base_mtp_shard_whose_entries_are_all_dropped_is_still_carried(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    """A base that ships its own (unquantized) MTP layer in a shard of its own: every entry of that
    shard is dropped from the merged index, the shard is linked as it is, and the warning says so."""
    base = copy_tree(tiny["base"], tmp_path / "base")
    stub = [
        (f"{MTP}enorm.weight", "BF16", (DIMS.hidden_size,)),
        (f"{MTP}hnorm.weight", "BF16", (DIMS.hidden_size,)),
    ]
    st_io.write_file(base / "model-mtp.safetensors", stub, seeded_fill())
    edit_json(
        base / INDEX, lambda i: i["weight_map"].update({n: "model-mtp.safetensors" for n, _, _ in stub})
    )
    out = tmp_path / "out"
    result = graft(base, tiny["delta"], out)
    assert result.plan.warnings == [
        f"base shard model-mtp.safetensors still holds 2 layer-{L}+ tensors "
        "that the merged index no longer lists"
    ]
    assert (out / "model-mtp.safetensors").stat().st_ino == (base / "model-mtp.safetensors").stat().st_ino
    assert weight_map(out)[f"{MTP}enorm.weight"] == MTP_SHARD
    assert "model-mtp.safetensors" not in weight_map(out).values()


def test_base_index_metadata_is_kept_and_total_size_recomputed(tiny: dict[str, Path], tmp_path: Path) -> None:
    base = copy_tree(tiny["base"], tmp_path / "base")
    edit_json(base / INDEX, lambda i: i["metadata"].update(total_parameters=123456, total_size=1))
    out = tmp_path / "out"
    graft(base, tiny["delta"], out)
    metadata = json.loads((out / INDEX).read_text())["metadata"]
    reference = json.loads((graft(tiny["base"], tiny["delta"], tmp_path / "ref").out / INDEX).read_text())
    assert metadata == {"total_parameters": 123456, "total_size": reference["metadata"]["total_size"]}


# Layouts: index-less inputs, partial sources, explicit layer counts ---------------------------------------


def _drop_index(root: Path) -> Path:
    (root / INDEX).unlink()
    return root


def test_a_source_without_an_index_is_read_from_its_shard_headers(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    delta = _drop_index(copy_tree(tiny["delta"], tmp_path / "delta"))
    graft(tiny["base"], delta, tmp_path / "out")
    graft(tiny["base"], tiny["delta"], tmp_path / "ref")
    got, ref = tree(tmp_path / "out"), tree(tmp_path / "ref")
    assert got.keys() == ref.keys()
    assert {k: v for k, v in got.items() if k != RECORD_NAME} == {
        k: v for k, v in ref.items() if k != RECORD_NAME
    }


def test_a_base_without_an_index_gets_one_from_its_shard_headers(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    base = _drop_index(copy_tree(tiny["base"], tmp_path / "base"))
    out = tmp_path / "out"
    graft(base, tiny["delta"], out)
    graft(tiny["base"], tiny["delta"], tmp_path / "ref")
    assert (out / INDEX).read_bytes() == (tmp_path / "ref" / INDEX).read_bytes()
    assert verify_dir(out).ok


def test_a_base_without_an_index_that_holds_the_mtp_layer_is_refused(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    base = _drop_index(copy_tree(tiny["base_stub"], tmp_path / "base"))
    holder = next(
        s
        for s in sorted(base.glob("*.safetensors"))
        if any(n.startswith(MTP) for n in read_header(s).tensors)
    )
    first = next(n for n in read_header(holder).tensors if n.startswith(MTP))
    assert said(lambda: graft(base, tiny["delta"], tmp_path / "out")) == (
        f"base shard {holder.name} holds {first} and the base has no index to drop it from "
        "(fix: use a base with model.safetensors.index.json)"
    )
    assert not (tmp_path / "out").exists()


def test_an_mtp_source_fetched_for_its_mtp_shards_only_is_enough(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    """`models fetch` of the FP8 artifact with only the shards that hold the MTP layer: the index names
    shards that are absent, and the graft needs none of them."""
    fp8 = copy_tree(tiny["fp8"], tmp_path / "fp8")
    wm = weight_map(fp8)
    holders = {s for n, s in wm.items() if n.startswith(MTP)}
    absent = sorted(set(wm.values()) - holders)
    assert absent
    for shard in absent:
        (fp8 / shard).unlink()
    graft(tiny["base"], fp8, tmp_path / "out")
    graft(tiny["base"], tiny["fp8"], tmp_path / "ref")
    assert (tmp_path / "out" / MTP_SHARD).read_bytes() == (tmp_path / "ref" / MTP_SHARD).read_bytes()


def test_a_missing_mtp_shard_is_named_with_its_first_tensor(tiny: dict[str, Path], tmp_path: Path) -> None:
    fp8 = copy_tree(tiny["fp8"], tmp_path / "fp8")
    holder = max(s for n, s in weight_map(fp8).items() if n.startswith(MTP))
    # Entries that sort differently by text and by number: the message names the first in natural order.
    extra = {f"{MTP}a10.weight": holder, f"{MTP}a9.weight": holder}
    edit_json(fp8 / INDEX, lambda i: i["weight_map"].update(extra))
    (fp8 / holder).unlink()
    assert said(lambda: graft(tiny["base"], fp8, tmp_path / "out")) == (
        f"{fp8}: shard {holder} (holds {MTP}a9.weight) is missing (fix: re-fetch the MTP source)"
    )


def test_an_mtp_index_entry_its_shard_lacks_is_refused(tiny: dict[str, Path], tmp_path: Path) -> None:
    fp8 = copy_tree(tiny["fp8"], tmp_path / "fp8")
    holder = max(s for n, s in weight_map(fp8).items() if n.startswith(MTP))
    edit_json(fp8 / INDEX, lambda i: i["weight_map"].update({f"{MTP}ghost.weight": holder}))
    assert said(lambda: graft(tiny["base"], fp8, tmp_path / "out")) == (
        f"{fp8 / INDEX} lists {MTP}ghost.weight in {holder}, but that shard has no such tensor "
        "(fix: re-fetch the MTP source)"
    )


def test_a_base_index_entry_its_shard_lacks_is_refused(tiny: dict[str, Path], tmp_path: Path) -> None:
    base = copy_tree(tiny["base"], tmp_path / "base")
    shard = "model-00003-of-00004.safetensors"
    # Not the first shard (names of other shards must not be blamed), and two ghosts whose text order
    # and natural order differ.
    ghosts = {"model.layers.2.mlp.experts.10.ghost": shard, "model.layers.2.mlp.experts.9.ghost": shard}
    edit_json(base / INDEX, lambda i: i["weight_map"].update(ghosts))
    assert said(lambda: graft(base, tiny["delta"], tmp_path / "out")) == (
        f"base index lists model.layers.2.mlp.experts.9.ghost in {shard}, but that shard has no such tensor "
        "(fix: re-fetch the base)"
    )


def test_base_entries_of_the_mtp_layer_are_dropped_in_natural_order(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    """Real AWQ bases list MTP expert entries (0..255) in their index; the record names them 2 before 10."""
    base = copy_tree(tiny["base_stub"], tmp_path / "base")
    shard = "model-00004-of-00004.safetensors"
    listed = {f"{MTP}mlp.experts.{i}.gate_proj.weight": shard for i in (10, 9, 2)}
    edit_json(base / INDEX, lambda i: i["weight_map"].update(listed))
    out = tmp_path / "out"
    result = graft(base, tiny["delta"], out)
    dropped = json.loads((out / RECORD_NAME).read_text())["dropped_base_entries"]
    assert dropped == [
        f"{MTP}enorm.weight",
        f"{MTP}hnorm.weight",
        f"{MTP}mlp.experts.2.gate_proj.weight",
        f"{MTP}mlp.experts.9.gate_proj.weight",
        f"{MTP}mlp.experts.10.gate_proj.weight",
    ]
    assert result.plan.dropped == dropped


def test_mtp_tensors_sit_in_natural_name_order_past_ten_experts(tmp_path: Path) -> None:
    dims = Dims(n_routed_experts=12)
    base = write_awq_base(tmp_path / "base", dims)
    delta = write_mtp_delta(tmp_path / "delta", dims)
    graft(base, delta, tmp_path / "out")
    names = list(read_header(tmp_path / "out" / MTP_SHARD).tensors)
    assert names == sorted(names, key=natural_key)
    gates = [n for n in names if ".experts." in n and n.endswith("gate_proj.weight")]
    assert gates == [f"{MTP}mlp.experts.{i}.gate_proj.weight" for i in range(12)]


def _source_config(tiny: dict[str, Path], tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    config = tmp_path / "fp8-config.json"
    config.write_bytes((tiny["fp8"] / "config.json").read_bytes())
    edit_json(config, change)
    return config


def test_mtp_layers_asks_for_more_layers_than_the_configs(tiny: dict[str, Path], tmp_path: Path) -> None:
    """--mtp-layers 2 wins over the configs' 1: the source has no layer L+1, so it is refused."""
    with pytest.raises(BadInput) as err:
        graft(tiny["base"], tiny["delta"], tmp_path / "out", mtp_layers=2)
    assert f"model.layers.{L + 1}." in err.value.message, err.value.message
    assert graft(tiny["base"], tiny["delta"], tmp_path / "out", mtp_layers=1).plan.mtp_layers == [L]


@pytest.mark.parametrize(
    ("label", "base_layers", "source_layers"),
    [("neither config says", None, None), ("the source's count wins over the base's", 2, 1)],
)
def test_how_many_mtp_layers_without_mtp_layers(
    tiny: dict[str, Path], tmp_path: Path, label: str, base_layers: int | None, source_layers: int | None
) -> None:
    def nextn(count: int | None) -> Callable[[dict[str, Any]], None]:
        def change(c: dict[str, Any]) -> None:
            c.pop("num_nextn_predict_layers")
            if count is not None:
                c["num_nextn_predict_layers"] = count

        return change

    base = copy_tree(tiny["base"], tmp_path / "base")
    edit_json(base / "config.json", nextn(base_layers))
    config = _source_config(tiny, tmp_path, nextn(source_layers))
    out = tmp_path / "out"
    result = graft(base, tiny["delta_noconfig"], out, mtp_config=config)
    assert result.plan.mtp_layers == [L], label
    assert json.loads((out / "config.json").read_text())["num_nextn_predict_layers"] == 1


# What it says --------------------------------------------------------------------------------------------


def test_a_base_config_without_sizes_is_refused(tiny: dict[str, Path], tmp_path: Path) -> None:
    base = copy_tree(tiny["base"], tmp_path / "base")
    edit_json(base / "config.json", lambda c: c.pop("hidden_size"))
    assert said(lambda: graft(base, tiny["delta"], tmp_path / "out")) == (
        f"{base / 'config.json'}: no num_hidden_layers/hidden_size "
        "(fix: point --base at the AWQ model directory)"
    )


def test_a_source_quantized_otherwise_is_named_by_its_method(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The AWQ base's own config (compressed-tensors) as --mtp-config: the message names the method found."""
    assert said(
        lambda: graft(
            tiny["base"], tiny["delta_noconfig"], tmp_path / "out", mtp_config=tiny["base"] / "config.json"
        )
    ) == (
        "MTP source config has no FP8 quantization_config (quant_method 'compressed-tensors') "
        "(fix: take the MTP layer from the FP8 artifact (or pass its config.json with --mtp-config))"
    )


def test_a_grafted_out_is_not_taken_as_a_base(tiny: dict[str, Path], tmp_path: Path) -> None:
    first = tmp_path / "first"
    graft(tiny["base"], tiny["delta"], first)
    assert said(lambda: graft(first, tiny["delta"], tmp_path / "again")) == (
        f"base already has a file named {MTP_SHARD} (fix: use a base without a grafted layer)"
    )


def test_a_base_with_only_mtp_tensors_is_refused_with_the_fix(tiny: dict[str, Path], tmp_path: Path) -> None:
    delta = copy_tree(tiny["delta"], tmp_path / "delta")
    assert said(lambda: graft(delta, tiny["delta"], tmp_path / "out")) == (
        f"{delta}: every tensor of the base is in layer {L} or later (fix: point --base at the AWQ model)"
    )


@pytest.mark.parametrize(
    ("strerror", "reason"),
    [("Invalid cross-device link", "Invalid cross-device link"), ("", "link refused")],
)
def test_a_refused_link_copies_every_shard_with_one_warning(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strerror: str, reason: str
) -> None:
    def no_link(src: Any, dst: Any, **_: Any) -> None:
        raise OSError(errno.EXDEV, strerror)

    monkeypatch.setattr(graft_mod.os, "link", no_link)
    out = tmp_path / "out"
    result = graft(tiny["base"], tiny["delta"], out)
    monkeypatch.undo()
    shards = sorted(tiny["base"].glob("*.safetensors"))
    assert result.plan.warnings == [
        f"cannot hard-link the base into OUT ({reason}): copying it instead; put OUT on the base's filesystem"
    ]
    figures = result.as_dict()
    assert (figures["base_files_copied"], figures["base_files_linked"]) == (len(shards), 0)
    for shard in shards:
        assert (out / shard.name).read_bytes() == shard.read_bytes()
        assert (out / shard.name).stat().st_ino != shard.stat().st_ino


def test_an_unchanged_result_names_out_and_its_own_time(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    graft(tiny["base"], tiny["delta"], out)
    again = graft(tiny["base"], tiny["delta"], out)
    assert again.status == "unchanged"
    assert again.out == out and again.as_dict()["out"] == str(out)
    assert 0 <= again.seconds < 600


def test_progress_names_each_phase_with_its_total(tiny: dict[str, Path], tmp_path: Path) -> None:
    phases: list[tuple[str, int]] = []
    moved: list[int] = []
    result = graft(
        tiny["base"],
        tiny["delta"],
        tmp_path / "out",
        on_phase=lambda phase, total: phases.append((phase, total)),
        on_bytes=moved.append,
    )
    assert phases == [("link base", len(result.plan.carried)), ("splice MTP layer", result.plan.mtp_bytes)]
    assert sum(moved) == result.plan.mtp_bytes == read_header(tmp_path / "out" / MTP_SHARD).data_bytes


# How it writes -------------------------------------------------------------------------------------------


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_out_is_readable_as_the_umask_allows(tiny: dict[str, Path], tmp_path: Path, umask_027: None) -> None:
    """The temporary directory starts 0700; OUT must be readable by the serving user's group."""
    out = tmp_path / "out"
    graft(tiny["base"], tiny["delta"], out)
    assert out.stat().st_mode & 0o7777 == 0o750


def test_config_and_record_are_indented_json(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Written as transformers writes config.json (indent 2, newline), so a diff against the base reads."""
    out = tmp_path / "out"
    graft(tiny["base"], tiny["delta"], out)
    for name in ("config.json", RECORD_NAME):
        text = (out / name).read_text()
        assert text == json.dumps(json.loads(text), indent=2) + "\n", name


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files fsync was called on (a pass-through spy: durability has no other witness)."""
    names: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        names.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return names


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to name fsynced files")
def test_every_file_the_graft_writes_is_made_durable(
    tiny: dict[str, Path], tmp_path: Path, fsynced: list[str]
) -> None:
    graft(tiny["base"], tiny["delta"], tmp_path / "out")
    written = {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"}
    assert written | {MTP_SHARD, INDEX, "config.json", RECORD_NAME} <= set(fsynced)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to name fsynced files")
def test_without_fsync_no_file_is_synced(tiny: dict[str, Path], tmp_path: Path, fsynced: list[str]) -> None:
    out = tmp_path / "out"
    graft(tiny["base"], tiny["delta"], out, fsync=False)
    assert not set(fsynced) & set(tree(out)), fsynced


class _Full(OSError):
    pass


def _disk_full_at_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_: Any) -> int:
        raise _Full(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(graft_mod, "_write_index", full)


def test_a_failed_force_run_puts_the_old_out_back(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    graft(tiny["base"], tiny["delta"], out)
    before = tree(out)
    _disk_full_at_the_index(monkeypatch)
    with pytest.raises(_Full):
        graft(tiny["base_stub"], tiny["delta"], out, force=True)
    monkeypatch.undo()
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if "out" in p.name) == [
        "out"
    ]  # no .out.old-*, no partial
    assert graft(tiny["base"], tiny["delta"], out).status == "unchanged"


def test_a_failed_first_run_leaves_nothing_and_raises_its_own_error(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    _disk_full_at_the_index(monkeypatch)
    with pytest.raises(_Full):
        graft(tiny["base"], tiny["delta"], out)
    assert [p.name for p in tmp_path.iterdir() if "out" in p.name] == []


def test_a_leftover_it_cannot_remove_does_not_stop_the_graft(tiny: dict[str, Path], tmp_path: Path) -> None:
    """`.OUT.old-*` is cleared on the way (a killed --force run leaves one); what cannot be removed stays."""
    out = tmp_path / "out"
    stray = tmp_path / ".out.old-1"
    stray.write_text("not a directory")
    assert graft(tiny["base"], tiny["delta"], out).status == "grafted"
    assert verify_dir(out).ok
