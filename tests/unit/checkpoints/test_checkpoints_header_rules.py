"""parse_header's rules one at a time, each beside what the reference library (`safetensors`) does.

parse_header is written for speed (one pass, type tests rather than conversions, coverage checked
on a sorted list of spans); each case here fails on a version that drops or loosens one rule.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import safetensors
from hypothesis import given, settings
from hypothesis import strategies as st

from gh200.checkpoints.safetensors_io import CorruptSafetensors, parse_header, read_header


def _file(path: Path, header: dict[str, object], data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _u8(begin: int, end: int, shape: object = None) -> dict[str, object]:
    return {"dtype": "U8", "shape": [end - begin] if shape is None else shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        # Shape and offsets are unsigned integers in the reference; nothing is coerced.
        ({"dtype": "U8", "shape": [4.0], "data_offsets": [0, 4]}, "malformed"),
        ({"dtype": "U8", "shape": ["4"], "data_offsets": [0, 4]}, "malformed"),
        ({"dtype": "U8", "shape": [True, 4], "data_offsets": [0, 4]}, "malformed"),
        ({"dtype": "U8", "shape": 4, "data_offsets": [0, 4]}, "malformed"),
        ({"dtype": "U8", "shape": [4], "data_offsets": [0.0, 4]}, "malformed"),
        ({"dtype": "U8", "shape": [4], "data_offsets": [0, "4"]}, "malformed"),
        ({"dtype": "U8", "shape": [4], "data_offsets": [0, 2, 4]}, "malformed"),
        ({"dtype": "U8", "shape": [4], "data_offsets": [4]}, "malformed"),
        ({"dtype": "U8", "shape": [4], "data_offsets": "04"}, "malformed"),
        ({"dtype": "U8", "data_offsets": [0, 4]}, "malformed"),
        ({"shape": [4], "data_offsets": [0, 4]}, "malformed"),
        ({"dtype": ["U8"], "shape": [4], "data_offsets": [0, 4]}, "unknown dtype"),
        ({"dtype": "u8", "shape": [4], "data_offsets": [0, 4]}, "unknown dtype"),
        ({"dtype": "U8", "shape": [-4], "data_offsets": [0, 4]}, "negative shape or offsets"),
        ({"dtype": "U8", "shape": [-2, -2], "data_offsets": [0, 4]}, "negative shape or offsets"),
        ({"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}, "negative shape or offsets"),
        ({"dtype": "U8", "shape": [4], "data_offsets": [-4, 0]}, "negative shape or offsets"),
        ({"dtype": "U8", "shape": [2, 3], "data_offsets": [0, 4]}, "spans 4 bytes but U8[2, 3] needs 6"),
        ({"dtype": "F4", "shape": [3], "data_offsets": [0, 4]}, "needs 2"),
    ],
)
def test_a_bad_entry_is_refused_by_both(tmp_path: Path, entry: object, needle: str) -> None:
    path = _file(tmp_path / "x.safetensors", {"t": entry}, b"\0" * 4)
    with pytest.raises(safetensors.SafetensorError):
        safetensors.deserialize(path.read_bytes())
    with pytest.raises(CorruptSafetensors, match=re.escape(needle)) as err:
        read_header(path)
    assert f"{path}: tensor t " in err.value.message


def test_an_entry_that_is_not_an_object_is_malformed(tmp_path: Path) -> None:
    # The reference's serde reads a struct from a JSON array too (["U8", [4], [0, 4]]); the format
    # names the keys, and so do we.
    path = _file(tmp_path / "x.safetensors", {"t": ["U8", [4], [0, 4]]}, b"\0" * 4)
    with pytest.raises(CorruptSafetensors, match="tensor t has a malformed header entry"):
        read_header(path)


@pytest.mark.parametrize(
    ("header", "size", "needle"),
    [
        ({"a": _u8(0, 4), "b": _u8(6, 10)}, 10, "tensor b starts at 6, expected 4 (hole or overlap)"),
        ({"a": _u8(0, 4), "b": _u8(2, 6)}, 6, "tensor b starts at 2, expected 4 (hole or overlap)"),
        ({"a": _u8(2, 6)}, 6, "tensor a starts at 2, expected 0"),
        ({"a": _u8(0, 4), "b": _u8(0, 4)}, 4, "starts at 0, expected 4"),
        ({"a": _u8(0, 4)}, 5, "trailing bytes"),
        ({"a": _u8(0, 4)}, 3, "truncated"),
    ],
)
def test_the_data_buffer_is_covered_exactly(
    tmp_path: Path, header: dict[str, object], size: int, needle: str
) -> None:
    path = _file(tmp_path / "x.safetensors", header, b"\0" * size)
    with pytest.raises(safetensors.SafetensorError):
        safetensors.deserialize(path.read_bytes())
    with pytest.raises(CorruptSafetensors, match=re.escape(needle)):
        read_header(path)


def test_coverage_follows_offsets_not_the_listing_order(tmp_path: Path) -> None:
    """Entries may be listed in any order (and zero-size ones anywhere in the buffer)."""
    header = {"c": _u8(6, 9), "z": _u8(4, 4), "a": _u8(0, 4), "b": _u8(4, 6)}
    path = _file(tmp_path / "x.safetensors", header, bytes(range(9)))
    assert {name for name, _ in safetensors.deserialize(path.read_bytes())} == {"a", "b", "c", "z"}
    found = read_header(path).tensors
    assert [(t.name, t.begin, t.end, t.nbytes) for t in sorted(found.values(), key=lambda t: t.name)] == [
        ("a", 0, 4, 4),
        ("b", 4, 6, 2),
        ("c", 6, 9, 3),
        ("z", 4, 4, 0),
    ]
    assert found["c"].shape == (3,) and isinstance(found["c"].shape, tuple)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["F32", "BF16", "U8", "F8_E4M3", "I64", "F4", "BOOL"]),
            st.lists(st.integers(0, 6), max_size=3),
        ),
        min_size=1,
        max_size=8,
    ),
    st.randoms(use_true_random=False),
)
def test_entries_are_read_as_the_reference_reads_them(
    specs: list[tuple[str, list[int]]], rnd: object
) -> None:
    """Random valid headers, listed in shuffled order: same names, dtypes, shapes and offsets."""
    bits = {"F32": 32, "BF16": 16, "U8": 8, "F8_E4M3": 8, "I64": 64, "F4": 4, "BOOL": 8}
    header: dict[str, object] = {}
    cursor = 0
    for i, (dtype, drawn) in enumerate(specs):
        shape = list(drawn)
        count = 1
        for dim in shape:
            count *= dim
        if count * bits[dtype] % 8:  # a packed F4 tensor ends on a byte boundary (the reference's rule)
            shape.append(2)
            count *= 2
        nbytes = count * bits[dtype] // 8
        header[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [cursor, cursor + nbytes]}
        cursor += nbytes
    items = list(header.items())
    rnd.shuffle(items)  # type: ignore[attr-defined]
    raw = json.dumps(dict(items)).encode()
    tensors, metadata = parse_header(raw, "x", cursor)
    assert metadata == {}
    assert {name: (t.dtype, list(t.shape), [t.begin, t.end]) for name, t in tensors.items()} == {
        name: (e["dtype"], e["shape"], e["data_offsets"])  # type: ignore[index]
        for name, e in header.items()
    }
    if "F4" not in {d for d, _ in specs}:  # the reference's deserialize has no F4 view
        blob = struct.pack("<Q", len(raw)) + raw + b"\0" * cursor
        assert {name for name, _ in safetensors.deserialize(blob)} == set(header)


@pytest.mark.parametrize(
    ("dtype", "shape", "nbytes", "ok"),
    [
        ("F4", [3], 2, False),
        ("F4", [1, 3], 2, False),
        ("F6_E2M3", [1], 1, False),
        ("F6_E3M2", [3], 3, False),
        ("F4", [4], 2, True),
        ("F4", [2, 3], 3, True),
        ("F6_E2M3", [4], 3, True),
    ],
)
def test_a_packed_sub_byte_tensor_must_end_on_a_byte_boundary(
    tmp_path: Path, dtype: str, shape: list[int], nbytes: int, ok: bool
) -> None:
    """Sized by rounding up, 3 x F4 fits 2 bytes; the reference still refuses it, and so do we."""
    header = {"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}}
    path = _file(tmp_path / "x.safetensors", header, b"\0" * nbytes)
    if ok:
        with safetensors.safe_open(str(path), "numpy") as f:
            assert list(f.keys()) == ["t"]
        assert read_header(path).tensors["t"].nbytes == nbytes
        return
    with pytest.raises(safetensors.SafetensorError, match="byte boundary"):
        safetensors.safe_open(str(path), "numpy")
    with pytest.raises(CorruptSafetensors) as err:
        read_header(path)
    bits = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}[dtype]
    count = 1
    for dim in shape:
        count *= dim
    assert err.value.one_line() == (
        f"{path}: tensor t is {dtype}{shape}, {count * bits} bits: not a whole number of bytes "
        "(fix: re-download the file)"
    )
