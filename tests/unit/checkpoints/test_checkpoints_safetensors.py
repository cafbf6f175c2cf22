"""safetensors_io against the reference implementation (the `safetensors` package parses what we write)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors
from hypothesis import given, settings
from hypothesis import strategies as st

from gh200.checkpoints.safetensors_io import (
    CorruptSafetensors,
    NewTensor,
    read_header,
    tensor_nbytes,
    write_file,
    write_spliced,
)
from gh200.checkpoints.testdata import seeded_fill

DTYPES = ["F32", "BF16", "F16", "I32", "U8", "F8_E4M3", "I64", "BOOL", "F64", "I8"]


def _raw(path: Path, header: dict[str, object], data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 7), min_size=0, max_size=3)),
        min_size=1,
        max_size=6,
    )
)
def test_written_files_parse_with_the_reference_library(
    tmp_path_factory: pytest.TempPathFactory, specs: list
) -> None:
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    tensors = [(f"t.{i}.weight", dtype, tuple(shape)) for i, (dtype, shape) in enumerate(specs)]
    fill = seeded_fill(7)
    write_file(path, tensors, fill, {"format": "pt"})
    ours = read_header(path)
    theirs = {name: info for name, info in safetensors.deserialize(path.read_bytes())}
    assert set(theirs) == set(ours.tensors)
    assert ours.metadata == {"format": "pt"}
    assert ours.data_start % 8 == 0
    for name, dtype, shape in tensors:
        assert theirs[name]["dtype"] == dtype
        assert tuple(theirs[name]["shape"]) == shape
        assert bytes(theirs[name]["data"]) == b"".join(fill(name, tensor_nbytes(dtype, shape)))


def test_spliced_file_holds_the_source_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    fill = seeded_fill(1)
    write_file(a, [("x", "F32", (3, 5)), ("y", "BF16", (64,))], fill)
    write_file(b, [("z", "F8_E4M3", (128, 33)), ("w", "I32", (0,))], fill)
    ha, hb = read_header(a), read_header(b)
    picks = [
        NewTensor(
            "z", "F8_E4M3", (128, 33), hb.tensors["z"].nbytes, b, hb.data_start + hb.tensors["z"].begin
        ),
        NewTensor("w", "I32", (0,), 0, b, hb.data_start + hb.tensors["w"].begin),
        NewTensor("y", "BF16", (64,), ha.tensors["y"].nbytes, a, ha.data_start + ha.tensors["y"].begin),
    ]
    moved: list[int] = []
    out = tmp_path / "out.safetensors"
    size = write_spliced(out, picks, {"format": "pt"}, moved.append)
    assert size == out.stat().st_size
    assert sum(moved) == 128 * 33 + 128
    got = dict(safetensors.deserialize(out.read_bytes()))
    assert bytes(got["z"]["data"]) == b"".join(fill("z", 128 * 33))
    assert bytes(got["y"]["data"]) == b"".join(fill("y", 128))
    assert list(read_header(out).tensors) == ["z", "w", "y"]  # the order asked for


def test_the_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    src = tmp_path / "s.safetensors"
    write_file(src, [("a", "U8", (100,))], seeded_fill())
    h = read_header(src)
    pick = [NewTensor("a", "U8", (100,), 100, src, h.data_start)]
    write_spliced(tmp_path / "1", pick, {"format": "pt"})
    write_spliced(tmp_path / "2", pick, {"format": "pt"})
    assert (tmp_path / "1").read_bytes() == (tmp_path / "2").read_bytes()


@pytest.mark.parametrize(
    ("header", "data", "needle"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "truncated"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8"),
        (
            {
                "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
            },
            b"\0" * 6,
            "hole or overlap",
        ),
        ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}}, b"\0", "unknown dtype"),
        ({"a": {"dtype": "U8", "shape": [2]}}, b"\0\0", "malformed"),
        ({"__metadata__": {"k": 1}}, b"", "strings to strings"),
    ],
)
def test_corrupt_headers_are_named(
    tmp_path: Path, header: dict[str, object], data: bytes, needle: str
) -> None:
    path = _raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CorruptSafetensors, match=needle) as err:
        read_header(path)
    assert str(path) in err.value.message
    assert err.value.exit_code == 2


def test_short_and_oversized_files(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"\1\2")
    with pytest.raises(CorruptSafetensors, match="shorter than 8 bytes"):
        read_header(tmp_path / "short")
    (tmp_path / "huge").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(CorruptSafetensors, match="does not fit"):
        read_header(tmp_path / "huge")
    (tmp_path / "json").write_bytes(struct.pack("<Q", 4) + b"{no}")
    with pytest.raises(CorruptSafetensors, match="not valid JSON"):
        read_header(tmp_path / "json")


def test_sub_byte_dtypes_round_up() -> None:
    assert tensor_nbytes("F4", (3,)) == 2
    assert tensor_nbytes("F6_E2M3", (4,)) == 3
    assert tensor_nbytes("BF16", (2, 3)) == 12
    assert np.prod(()) == 1 and tensor_nbytes("F32", ()) == 4
