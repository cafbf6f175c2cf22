"""safetensors_io against the reference implementation (the `safetensors` package parses what we write)."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors
from hypothesis import given, settings
from hypothesis import strategies as st

from gh200.checkpoints import safetensors_io as st_io
from gh200.checkpoints.safetensors_io import (
    CorruptSafetensors,
    NewTensor,
    read_header,
    tensor_nbytes,
    write_file,
    write_spliced,
)
from gh200.checkpoints.testdata import seeded_fill
from gh200.errors import BadInput

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


@pytest.mark.parametrize("extra", [b"\0", b"\0" * 8, b"tail bytes"])
def test_trailing_bytes_are_refused_as_the_reference_library_refuses_them(
    tmp_path: Path, extra: bytes
) -> None:
    path = tmp_path / "x.safetensors"
    write_file(path, [("a", "U8", (4,)), ("b", "F32", (3,))], seeded_fill(3), {"format": "pt"})
    assert set(read_header(path).tensors) == {"a", "b"}
    assert len(safetensors.deserialize(path.read_bytes())) == 2
    path.write_bytes(path.read_bytes() + extra)
    with pytest.raises(safetensors.SafetensorError, match="not fully covered"):
        safetensors.deserialize(path.read_bytes())
    with pytest.raises(CorruptSafetensors, match="trailing bytes") as err:
        read_header(path)
    assert str(path) in err.value.message and "\n" not in err.value.one_line()


def _sources(root: Path) -> tuple[list[NewTensor], dict[str, bytes]]:
    """Two source files; picks at odd offsets across both, with the bytes the reference library reads."""
    fill = seeded_fill(11)
    a, b = root / "a.safetensors", root / "b.safetensors"
    write_file(a, [("x", "U8", (7,)), ("y", "F32", (1000, 3)), ("z", "BF16", (33,))], fill)
    write_file(b, [("p", "F8_E4M3", (129, 31)), ("q", "I8", (5,)), ("r", "F16", (4099,))], fill)
    picks: list[NewTensor] = []
    expected: dict[str, bytes] = {}
    for path, names in ((b, ["r", "p"]), (a, ["z", "y"]), (b, ["q"])):
        header = read_header(path)
        reference = dict(safetensors.deserialize(path.read_bytes()))
        for name in names:
            entry = header.tensors[name]
            picks.append(
                NewTensor(name, entry.dtype, entry.shape, entry.nbytes, path, header.data_start + entry.begin)
            )
            expected[name] = bytes(reference[name]["data"])
    return picks, expected


def _check_against_reference(out: Path, picks: list[NewTensor], expected: dict[str, bytes]) -> None:
    got = dict(safetensors.deserialize(out.read_bytes()))
    assert set(got) == set(expected)
    for pick in picks:
        assert got[pick.name]["dtype"] == pick.dtype
        assert tuple(got[pick.name]["shape"]) == pick.shape
        assert bytes(got[pick.name]["data"]) == expected[pick.name], pick.name


@pytest.mark.parametrize("refused", ["at once", "after a partial copy", "with short reads and writes"])
def test_fallback_copy_writes_the_bytes_the_reference_library_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: str
) -> None:
    """copy_file_range refused (EXDEV, as across filesystems): the user-space copy, in many small rounds."""
    picks, expected = _sources(tmp_path)
    kernel = tmp_path / "kernel.safetensors"
    write_spliced(kernel, picks, {"format": "pt"})
    real = os.copy_file_range
    calls = [0]

    def refuse(src: int, dst: int, count: int, offset_src: int | None = None, *rest: object) -> int:
        calls[0] += 1
        if refused == "after a partial copy" and calls[0] <= 2:
            return real(src, dst, min(count, 1001), offset_src)  # short copies, then the refusal
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    fallback_rounds: list[int] = []
    real_fallback = st_io._copy_range_userspace

    def spy(src: int, dst: int, offset: int, count: int, on_bytes: Callable[[int], None]) -> None:
        fallback_rounds.append(count)
        real_fallback(src, dst, offset, count, on_bytes)

    monkeypatch.setattr(st_io.os, "copy_file_range", refuse)
    monkeypatch.setattr(st_io, "_copy_range_userspace", spy)
    if refused == "with short reads and writes":
        # Legal for preadv/write (signals, pipes, NFS): the loop must carry on from what was done.
        real_preadv, real_write = os.preadv, os.write

        def short_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
            return real_preadv(fd, [buffers[0][:1000]], offset)

        def short_write(fd: int, data: memoryview) -> int:
            return real_write(fd, data[:777])

        monkeypatch.setattr(st_io.os, "preadv", short_preadv)
        monkeypatch.setattr(st_io.os, "write", short_write)
    monkeypatch.setattr(st_io, "_FALLBACK_BUFFER", 4093)  # a prime: rounds end mid-tensor
    moved: list[int] = []
    out = tmp_path / "fallback.safetensors"
    size = write_spliced(out, picks, {"format": "pt"}, moved.append)
    intended = st_io.spliced_sha256(picks, {"format": "pt"})
    monkeypatch.undo()
    assert intended == hashlib.sha256(kernel.read_bytes()).hexdigest()
    assert fallback_rounds, "the fallback never ran"
    assert sum(moved) == sum(p.nbytes for p in picks)
    assert size == out.stat().st_size
    _check_against_reference(out, picks, expected)
    assert out.read_bytes() == kernel.read_bytes()


def _tmpfs_dir() -> Path | None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        return None
    return shm


def test_fallback_copy_across_real_filesystems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources on tmpfs, OUT on the test's filesystem: since Linux 5.19 copy_file_range says EXDEV."""
    shm = _tmpfs_dir()
    if shm is None or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a writable tmpfs at /dev/shm on another filesystem than the test's tmp dir")
    src_root = Path(tempfile.mkdtemp(prefix="gh200-st-", dir=shm))
    try:
        picks, expected = _sources(src_root)
        rounds: list[int] = []
        real_fallback = st_io._copy_range_userspace

        def spy(src: int, dst: int, offset: int, count: int, on_bytes: Callable[[int], None]) -> None:
            rounds.append(count)
            real_fallback(src, dst, offset, count, on_bytes)

        monkeypatch.setattr(st_io, "_copy_range_userspace", spy)
        out = tmp_path / "crossed.safetensors"
        write_spliced(out, picks, {"format": "pt"})
        monkeypatch.undo()
        release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
        if release >= (5, 19):
            assert rounds, "copy_file_range across filesystems should have been refused (EXDEV)"
        _check_against_reference(out, picks, expected)
    finally:
        shutil.rmtree(src_root, ignore_errors=True)


@pytest.mark.parametrize("dtype", sorted(st_io.DTYPE_BITS))
def test_every_dtype_is_sized_as_the_reference_library_sizes_it(tmp_path: Path, dtype: str) -> None:
    """For each dtype we know, the reference reads a file sized by us, and refuses one byte more or less.

    Shapes whose bits fill whole bytes: the reference refuses a sub-byte tensor that ends mid-byte.
    """
    for shape in [(8,), (4,), (2, 4), (0, 3), (16, 1, 3), ()]:
        if math.prod(shape) * st_io.DTYPE_BITS[dtype] % 8:
            continue
        nbytes = tensor_nbytes(dtype, shape)
        header = {"t": {"dtype": dtype, "shape": list(shape), "data_offsets": [0, nbytes]}}
        path = _raw(tmp_path / "ok.safetensors", header, b"\x01" * nbytes)
        ((name, info),) = safetensors.deserialize(path.read_bytes())
        assert (name, info["dtype"], tuple(info["shape"])) == ("t", dtype, shape)
        assert len(bytes(info["data"])) == nbytes
        assert read_header(path).tensors["t"].nbytes == nbytes
        for wrong in (nbytes - 1, nbytes + 1):
            if wrong < 0:
                continue
            bad = {"t": {"dtype": dtype, "shape": list(shape), "data_offsets": [0, wrong]}}
            path = _raw(tmp_path / "bad.safetensors", bad, b"\x01" * wrong)
            with pytest.raises(safetensors.SafetensorError):
                safetensors.deserialize(path.read_bytes())
            with pytest.raises(CorruptSafetensors, match=f"needs {nbytes}"):
                read_header(path)


def test_an_unknown_dtype_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown safetensors dtype 'Q4'"):
        tensor_nbytes("Q4", (2,))


def test_a_model_directorys_shards_are_its_own_safetensors_files_in_name_order(tmp_path: Path) -> None:
    for name in ("model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors", "a.safetensors"):
        write_file(tmp_path / name, [("t", "U8", (1,))], seeded_fill())
    (tmp_path / "dir.safetensors").mkdir()  # not a file
    (tmp_path / "sub").mkdir()
    write_file(tmp_path / "sub" / "nested.safetensors", [("t", "U8", (1,))], seeded_fill())
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    (tmp_path / "notes.safetensors.txt").write_text("")
    assert [p.name for p in st_io.iter_safetensors(tmp_path)] == [
        "a.safetensors",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert all(p.parent == tmp_path for p in st_io.iter_safetensors(tmp_path))


def _reference_reads(path: Path) -> bool:
    try:
        safetensors.deserialize(path.read_bytes())
    except safetensors.SafetensorError:
        return False
    return True


@pytest.mark.parametrize(
    ("header", "data", "needle"),
    [
        (b"[]", b"", "not a JSON object"),
        (b"", b"", "not valid JSON"),
        (b'{"__metadata__": ["x"]}', b"", "strings to strings"),
        (b'{"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}', b"", "negative shape or offsets"),
        (b'{"a": {"dtype": "U8", "shape": [4], "data_offsets": [-4, 0]}}', b"", "negative shape or offsets"),
        (
            b'{"a": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}}',
            b"\0" * 4,
            "negative shape or offsets",
        ),
        (
            b'{"a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}',
            b"\0" * 4,
            "a starts at 2, expected 0",
        ),
        (b'{"a": {"dtype": "U8", "shape": "2", "data_offsets": [0, 2]}}', b"\0\0", "malformed header entry"),
        (b'{"a": {"dtype": "U8", "shape": [2], "data_offsets": [0]}}', b"\0\0", "malformed header entry"),
        (b'{"a": 3}', b"", "tensor a has a malformed header entry"),
        (b'{"a": {"dtype": "U8", "shape": [2.0], "data_offsets": [0, 2]}}', b"\0\0", "malformed"),
        (b'{"a": {"dtype": "U8", "shape": [true], "data_offsets": [0, 1]}}', b"\0", "malformed"),
        (b'{"a": {"dtype": "U8", "shape": [2], "data_offsets": "02"}}', b"\0\0", "malformed"),
        (b'{"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2, 2]}}', b"\0\0", "malformed"),
    ],
)
def test_headers_the_reference_library_refuses_are_refused(
    tmp_path: Path, header: bytes, data: bytes, needle: str
) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    assert not _reference_reads(path)
    with pytest.raises(CorruptSafetensors, match=re.escape(needle)) as err:
        read_header(path)
    assert err.value.message.startswith(f"{path}: ") and err.value.exit_code == 2


@pytest.mark.parametrize("header", [b"{}", b'{"__metadata__": null}', b'{"__metadata__": {}}', b"{}      "])
def test_an_empty_file_with_only_a_header_is_read(tmp_path: Path, header: bytes) -> None:
    """The header may fill the file exactly (no data buffer): the reference reads it, so do we."""
    path = tmp_path / "empty.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    assert _reference_reads(path)
    parsed = read_header(path)
    assert (parsed.tensors, parsed.metadata, parsed.data_bytes) == ({}, {}, 0)
    assert parsed.file_size == 8 + len(header) == parsed.data_start


def test_eight_bytes_saying_an_empty_header_are_not_json(tmp_path: Path) -> None:
    path = tmp_path / "eight.safetensors"
    path.write_bytes(struct.pack("<Q", 0))
    assert not _reference_reads(path)
    with pytest.raises(CorruptSafetensors, match="not valid JSON"):
        read_header(path)


def test_a_header_above_the_reference_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """100 MB is the reference's cap; a sparse file that could hold the header shows the cap, not the fit."""
    for header_len, refused in ((st_io.MAX_HEADER_BYTES + 1, True), (st_io.MAX_HEADER_BYTES, False)):
        path = tmp_path / f"big{header_len}.safetensors"
        with open(path, "wb") as handle:
            handle.write(struct.pack("<Q", header_len))
            handle.truncate(8 + header_len + 16)
        if refused:
            with pytest.raises(CorruptSafetensors, match=f"header length {header_len} does not fit"):
                read_header(path)
        else:  # read, then refused as JSON (NUL bytes): the cap let it through
            with pytest.raises(CorruptSafetensors, match="not valid JSON"):
                read_header(path)
        path.unlink()


def test_a_header_longer_than_the_file_is_refused(tmp_path: Path) -> None:
    text = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(text) + 1) + text)  # one byte short of its own header
    with pytest.raises(CorruptSafetensors, match=f"header length {len(text) + 1} does not fit the file"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\x07")
    assert read_header(path).tensors["a"].nbytes == 1


def test_missing_paths_and_directories_are_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such file") as err:
        read_header(tmp_path / "nope.safetensors")
    assert not isinstance(err.value, CorruptSafetensors)
    with pytest.raises(BadInput, match="is a directory, expected a safetensors file"):
        read_header(tmp_path)


def test_header_identity_is_its_bytes_and_the_file_size(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_file(a, [("t", "U8", (4,))], seeded_fill(1), {"format": "pt"})
    write_file(b, [("t", "U8", (4,))], seeded_fill(2), {"format": "pt"})  # same header, other data
    ha, hb = read_header(a), read_header(b)
    assert ha.raw == hb.raw and ha.digest() == hb.digest()
    assert ha.digest() == hashlib.sha256(ha.raw + str(a.stat().st_size).encode()).hexdigest()
    write_file(b, [("t", "U8", (5,))], seeded_fill(1), {"format": "pt"})
    assert read_header(b).digest() != ha.digest()
    longer = st_io.SafetensorsHeader(a, ha.header_len, ha.tensors, ha.metadata, ha.file_size + 1, ha.raw)
    assert longer.digest() != ha.digest()
    assert ha.data_bytes == 4 == ha.file_size - ha.data_start


def test_metadata_order_does_not_change_the_bytes(tmp_path: Path) -> None:
    tensors = [("t", "U8", (3,))]
    write_file(tmp_path / "1", tensors, seeded_fill(), {"b": "2", "a": "1"})
    write_file(tmp_path / "2", tensors, seeded_fill(), {"a": "1", "b": "2"})
    assert (tmp_path / "1").read_bytes() == (tmp_path / "2").read_bytes()
    assert read_header(tmp_path / "1").metadata == {"a": "1", "b": "2"}
    write_file(tmp_path / "3", tensors, seeded_fill())
    assert b"__metadata__" not in (tmp_path / "3").read_bytes()
    assert _reference_reads(tmp_path / "3")


def test_write_file_refuses_data_of_the_wrong_length(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"t: data gave 3 bytes, expected 4"):
        write_file(tmp_path / "x", [("t", "U8", (4,))], lambda _n, _size: [b"abc"])
    with pytest.raises(ValueError, match=r"t: data gave 6 bytes, expected 4"):
        write_file(tmp_path / "x", [("t", "U8", (4,))], lambda _n, _size: [b"abc", b"def"])
    size = write_file(
        tmp_path / "y", [("t", "U8", (4,)), ("u", "U8", (2,))], lambda n, s: [b"ab", b"cd"][: s // 2]
    )
    assert size == (tmp_path / "y").stat().st_size
    got = dict(safetensors.deserialize((tmp_path / "y").read_bytes()))
    assert bytes(got["t"]["data"]) == b"abcd" and bytes(got["u"]["data"]) == b"ab"


def test_a_splice_needs_a_source_for_every_non_empty_tensor(tmp_path: Path) -> None:
    empty = NewTensor("e", "F32", (0, 4), 0)  # no source needed: no bytes
    src = tmp_path / "s.safetensors"
    write_file(src, [("a", "U8", (5,))], seeded_fill())
    a = NewTensor("a", "U8", (5,), 5, src, read_header(src).data_start)
    out = tmp_path / "out.safetensors"
    write_spliced(out, [empty, a])
    assert st_io.spliced_sha256([empty, a]) == hashlib.sha256(out.read_bytes()).hexdigest()
    got = dict(safetensors.deserialize(out.read_bytes()))
    assert bytes(got["a"]["data"]) == b"".join(seeded_fill()("a", 5)) and bytes(got["e"]["data"]) == b""
    orphan = NewTensor("o", "U8", (2,), 2)
    with pytest.raises(ValueError, match="o: no source for a non-empty tensor"):
        write_spliced(tmp_path / "bad.safetensors", [a, orphan])
    with pytest.raises(ValueError, match="o: no source for a non-empty tensor"):
        st_io.spliced_sha256([a, orphan])


@pytest.mark.parametrize("path", ["kernel", "fallback"])
def test_a_source_shorter_than_its_range_is_corrupt_not_a_short_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    src = tmp_path / "s.safetensors"
    write_file(src, [("a", "U8", (100,))], seeded_fill())
    start = read_header(src).data_start
    beyond = NewTensor("a", "U8", (100,), 100, src, start + 40)  # the last 40 bytes are past the end
    if path == "fallback":
        monkeypatch.setattr(st_io, "_FALLBACK_BUFFER", 16)

        def refuse(*_args: object) -> int:
            raise OSError(errno.ENOSYS, "Function not implemented")

        monkeypatch.setattr(st_io.os, "copy_file_range", refuse)
    with pytest.raises(CorruptSafetensors, match=f"source ended early while copying at offset {start + 100}"):
        write_spliced(tmp_path / "out.safetensors", [beyond])
    with pytest.raises(CorruptSafetensors, match=f"{src}: ended early at offset {start + 100}"):
        st_io.spliced_sha256([beyond])


@pytest.mark.parametrize("code", [errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM])
def test_each_refusal_of_copy_file_range_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    picks, expected = _sources(tmp_path)

    def refuse(*_args: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(st_io.os, "copy_file_range", refuse)
    out = tmp_path / "out.safetensors"
    write_spliced(out, picks, {"format": "pt"})
    monkeypatch.undo()
    _check_against_reference(out, picks, expected)


def test_other_copy_errors_are_raised_not_papered_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picks, _ = _sources(tmp_path)

    def broken(*_args: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(st_io.os, "copy_file_range", broken)
    monkeypatch.setattr(st_io, "_copy_range_userspace", lambda *_a: pytest.fail("fell back on EIO"))
    with pytest.raises(OSError, match="Input/output error"):
        write_spliced(tmp_path / "out.safetensors", picks)


@pytest.mark.parametrize("fsync", [True, False, None])
def test_a_spliced_file_is_made_durable_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool | None
) -> None:
    picks, _ = _sources(tmp_path)
    out = tmp_path / "out.safetensors"
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(st_io.os, "fsync", spy)
    if fsync is None:
        write_spliced(out, picks)  # the default: durable
    else:
        write_spliced(out, picks, fsync=fsync)
    assert synced == ([] if fsync is False else [out.stat().st_ino])


def test_a_file_laid_out_as_the_reference_lays_it_out_is_byte_for_byte_its_file(tmp_path: Path) -> None:
    """Compact JSON, space padding to 8 bytes, the length prefix: the reference writer's, byte for byte."""
    from safetensors.numpy import save

    u = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = np.frombuffer(b"abcd", dtype=np.uint8)
    # One metadata key: the reference's map order is its hash map's (the sorting is tested above).
    reference = save({"u": u, "t": t.copy()}, {"format": "pt"})
    chunks = {"u": u.tobytes(), "t": t.tobytes()}
    ours = tmp_path / "ours.safetensors"
    write_file(
        ours,
        [("u", "F32", (2, 3)), ("t", "U8", (4,))],
        lambda name, _n: [chunks[name]],
        {"format": "pt"},
    )
    assert ours.read_bytes() == reference


def _one_line(err: pytest.ExceptionInfo[BadInput], path: Path) -> str:
    line = err.value.one_line()
    assert line.startswith(f"{path}: "), line
    return line.removeprefix(f"{path}: ")


@pytest.mark.parametrize(
    ("header", "data", "line"),
    [
        (b"{no}", b"", "safetensors header is not valid JSON"),
        (b"[]", b"", "safetensors header is not a JSON object (fix: re-download the file)"),
        (
            b'{"__metadata__": {"k": 1}}',
            b"",
            "__metadata__ must map strings to strings (fix: re-create the file)",
        ),
        (b'{"a": {"dtype": "U8"}}', b"", "tensor a has a malformed header entry (fix: re-download the file)"),
        (
            b'{"a": {"dtype": "U8", "shape": ["1"], "data_offsets": [0, 1]}}',
            b"\0",
            "tensor a has a malformed header entry (fix: re-download the file)",
        ),
        (
            b'{"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}',
            b"\0",
            "tensor a has unknown dtype Q4 (fix: re-download the file)",
        ),
        (
            b'{"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}',
            b"",
            "tensor a has negative shape or offsets (fix: re-download the file)",
        ),
        (
            b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}',
            b"\0" * 4,
            "tensor a spans 4 bytes but F32[2] needs 8 (fix: re-download the file)",
        ),
        (
            b'{"a": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}',
            b"\0" * 3,
            "tensor a starts at 1, expected 0 (hole or overlap) (fix: re-download the file)",
        ),
        (
            b'{"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}',
            b"\0" * 5,
            "data buffer is 5 bytes but the header describes 8 (truncated) (fix: re-download the file)",
        ),
        (
            b'{"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}',
            b"\0" * 5,
            "data buffer is 5 bytes but the header describes 2 (trailing bytes) (fix: re-download the file)",
        ),
    ],
)
def test_each_refusal_is_one_line_naming_the_file_the_fault_and_the_fix(
    tmp_path: Path, header: bytes, data: bytes, line: str
) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    with pytest.raises(CorruptSafetensors) as err:
        read_header(path)
    said = _one_line(err, path)
    assert said.startswith(line), said
    if "not valid JSON" in line:
        assert said.endswith("(fix: re-download or re-create the file)"), said


def test_unreadable_files_are_one_line_with_the_fix(tmp_path: Path) -> None:
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\1\2")
    with pytest.raises(CorruptSafetensors) as err:
        read_header(short)
    assert _one_line(err, short) == "shorter than 8 bytes, not a safetensors file (fix: re-download it)"
    long = tmp_path / "long.safetensors"
    long.write_bytes(struct.pack("<Q", 99) + b"{}")
    with pytest.raises(CorruptSafetensors) as err:
        read_header(long)
    assert _one_line(err, long) == "header length 99 does not fit the file (10 bytes) (fix: re-download it)"
    with pytest.raises(BadInput) as missing:
        read_header(tmp_path / "nope")
    assert _one_line(missing, tmp_path / "nope") == "no such file (fix: check the path)"
    with pytest.raises(BadInput) as folder:
        read_header(tmp_path)
    assert _one_line(folder, tmp_path) == "is a directory, expected a safetensors file (fix: check the path)"


@pytest.mark.parametrize("path", ["kernel", "fallback"])
def test_a_short_source_says_to_re_download_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    src = tmp_path / "s.safetensors"
    write_file(src, [("a", "U8", (10,))], seeded_fill())
    beyond = NewTensor("a", "U8", (10,), 10, src, read_header(src).data_start + 5)
    if path == "fallback":

        def refuse(*_args: object) -> int:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(st_io.os, "copy_file_range", refuse)
    with pytest.raises(CorruptSafetensors) as err:
        write_spliced(tmp_path / "out.safetensors", [beyond])
    assert err.value.one_line().endswith("(fix: re-download the source)")
    with pytest.raises(CorruptSafetensors) as err:
        st_io.spliced_sha256([beyond])
    assert err.value.one_line().endswith("(fix: re-download the source)")


@pytest.mark.parametrize("copier", ["kernel", "fallback"])
def test_short_rounds_copy_the_last_byte_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copier: str
) -> None:
    """Rounds of 999 bytes over 1000-byte tensors: the final round moves one byte, and it must land."""
    src = tmp_path / "s.safetensors"
    write_file(src, [("a", "U8", (1000,)), ("b", "U8", (1,)), ("c", "U8", (1999,))], seeded_fill(5))
    header = read_header(src)
    picks = [
        NewTensor(n, "U8", e.shape, e.nbytes, src, header.data_start + e.begin)
        for n, e in header.tensors.items()
    ]
    real = os.copy_file_range
    if copier == "kernel":

        def short(src_fd: int, dst_fd: int, count: int, offset_src: int | None = None, *_rest: object) -> int:
            return real(src_fd, dst_fd, min(count, 999), offset_src)

        monkeypatch.setattr(st_io.os, "copy_file_range", short)
    else:

        def refuse(*_args: object) -> int:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(st_io.os, "copy_file_range", refuse)
    monkeypatch.setattr(st_io, "_FALLBACK_BUFFER", 999)
    out = tmp_path / "out.safetensors"
    write_spliced(out, picks)
    intended = st_io.spliced_sha256(picks)
    monkeypatch.undo()
    got = dict(safetensors.deserialize(out.read_bytes()))
    for name in ("a", "b", "c"):
        assert bytes(got[name]["data"]) == b"".join(seeded_fill(5)(name, header.tensors[name].nbytes)), name
    assert intended == hashlib.sha256(out.read_bytes()).hexdigest()


def test_one_descriptor_per_source_and_none_left_open(tmp_path: Path) -> None:
    picks, _ = _sources(tmp_path)  # five tensors from two files
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc/self/fd")
    before = len(list(fds.iterdir()))
    opened: list[str] = []
    real_open = os.open

    def spy(path: str | Path, flags: int, *rest: int) -> int:
        opened.append(str(path))
        return real_open(path, flags, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(st_io.os, "open", spy)
        write_spliced(tmp_path / "out.safetensors", picks)
        assert sorted(opened) == sorted({str(p.source) for p in picks})
        opened.clear()
        st_io.spliced_sha256(picks)
        assert sorted(opened) == sorted({str(p.source) for p in picks})
    assert len(list(fds.iterdir())) == before


def test_a_header_is_read_as_stored(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    write_file(path, [("a", "U8", (3,)), ("b", "F16", (2,))], seeded_fill(), {"format": "pt"})
    header = read_header(path)
    stored = path.read_bytes()
    assert header.path == path
    assert header.header_len == struct.unpack("<Q", stored[:8])[0]
    assert header.raw == stored[8 : 8 + header.header_len]
    assert header.metadata == {"format": "pt"} and list(header.tensors) == ["a", "b"]


def test_a_length_with_the_top_bit_set_does_not_fit(tmp_path: Path) -> None:
    """The length prefix is unsigned: 0xFF..FF is 2**64-1 bytes, not -1 (which would read the whole file)."""
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\xff" * 8 + b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}\0')
    assert not _reference_reads(path)
    with pytest.raises(CorruptSafetensors, match=f"header length {2**64 - 1} does not fit"):
        read_header(path)


def test_a_size_mismatch_names_the_tensors_own_span(tmp_path: Path) -> None:
    header = (
        b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},'
        b'"b":{"dtype":"F32","shape":[2],"data_offsets":[4,8]}}'
    )
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(CorruptSafetensors, match=re.escape("tensor b spans 4 bytes but F32[2] needs 8")):
        read_header(path)
