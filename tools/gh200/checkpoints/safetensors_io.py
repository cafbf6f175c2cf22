"""Safetensors at the byte level: read headers, write headers, splice raw tensor bytes between files.

Nothing here loads tensors: a header is at most a few MiB of JSON, and tensor bytes move between files
with copy_file_range(2) (in-kernel, no user-space buffer), so memory stays flat whatever the size.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N bytes of
UTF-8 JSON (space padded), then the data buffer. Each tensor entry has dtype, shape and data_offsets
[begin, end) relative to the start of the data buffer; "__metadata__" is an optional str->str map.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from gh200.errors import BadInput

# Bits per element for every dtype the safetensors format defines (sub-byte types pack densely).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

# The reference implementation refuses headers above 100 MB; so do we, before allocating anything.
MAX_HEADER_BYTES = 100_000_000
_HEADER_ALIGN = 8
_COPY_CHUNK = 16 * 1024 * 1024  # also the step at which writeback can start
# The user-space fallback's buffer (module level so that a test can make it small and force many rounds).
_FALLBACK_BUFFER = 8 * 1024 * 1024
# A spliced file's writeback is started every this many bytes, so the disk writes while the copy goes on
# and the closing fsync waits for the last step only (module level: a test makes it small).
_WRITEBACK_STEP = 16 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2


Chunk = bytes | memoryview


class CorruptSafetensors(BadInput):
    """A file that is not a well-formed safetensors file (truncated, bad header, overlapping data)."""


def tensor_nbytes(dtype: str, shape: Sequence[int]) -> int:
    bits = DTYPE_BITS.get(dtype)
    if bits is None:
        raise ValueError(f"unknown safetensors dtype {dtype!r}")
    return (math.prod(shape) * bits + 7) // 8


class TensorEntry(NamedTuple):
    """One tensor as its header describes it; begin/end are relative to the data buffer.

    A NamedTuple rather than a frozen dataclass: a 750B model's headers hold ~250k entries, and a
    frozen dataclass's __init__ (one object.__setattr__ per field) was most of parse_header's cost."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class SafetensorsHeader:
    """A parsed header. `raw` is the header JSON exactly as stored (for cheap content identity)."""

    path: Path
    header_len: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] = field(default_factory=dict)
    file_size: int = 0
    raw: bytes = b""

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    @property
    def data_bytes(self) -> int:
        return sum(entry.nbytes for entry in self.tensors.values())

    def digest(self) -> str:
        """sha256 of the stored header bytes plus the file size: identity without reading tensor data."""
        h = hashlib.sha256(self.raw)
        h.update(str(self.file_size).encode())
        return h.hexdigest()


def _malformed(where: str, name: str) -> CorruptSafetensors:
    return CorruptSafetensors(f"{where}: tensor {name} has a malformed header entry", "re-download the file")


def parse_header(
    raw: bytes, where: str, file_size: int | None = None
) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse and validate header JSON. `file_size` (data buffer size known) enables the bounds checks."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptSafetensors(
            f"{where}: safetensors header is not valid JSON ({exc})", "re-download or re-create the file"
        ) from exc
    if not isinstance(obj, dict):
        raise CorruptSafetensors(f"{where}: safetensors header is not a JSON object", "re-download the file")
    metadata_obj = obj.pop("__metadata__", None) or {}
    if not isinstance(metadata_obj, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata_obj.items()
    ):
        raise CorruptSafetensors(f"{where}: __metadata__ must map strings to strings", "re-create the file")
    tensors: dict[str, TensorEntry] = {}
    spans: list[tuple[int, int, str]] = []
    bits_of = DTYPE_BITS.get
    # One pass, plain type tests instead of conversions: the reference reads shape and offsets as
    # unsigned integers, so a float, string or bool there is malformed (int() would have taken them).
    for name, info in obj.items():
        try:
            dtype = info["dtype"]
            shape = info["shape"]
            begin, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise _malformed(where, name) from exc
        if type(shape) is not list or type(begin) is not int or type(end) is not int:
            raise _malformed(where, name)
        negative = begin < 0 or end < begin
        for dim in shape:
            if type(dim) is not int:
                raise _malformed(where, name)
            negative = negative or dim < 0
        bits = bits_of(dtype) if type(dtype) is str else None
        if bits is None:
            raise CorruptSafetensors(
                f"{where}: tensor {name} has unknown dtype {dtype}", "re-download the file"
            )
        if negative:
            raise CorruptSafetensors(
                f"{where}: tensor {name} has negative shape or offsets", "re-download the file"
            )
        nbits = math.prod(shape) * bits
        need = (nbits + 7) // 8
        if end - begin != need:
            raise CorruptSafetensors(
                f"{where}: tensor {name} spans {end - begin} bytes but {dtype}{shape} needs {need}",
                "re-download the file",
            )
        if nbits % 8:
            # Packed sub-byte dtypes: the reference refuses a tensor that ends mid-byte (3 x F4).
            raise CorruptSafetensors(
                f"{where}: tensor {name} is {dtype}{shape}, {nbits} bits: not a whole number of bytes",
                "re-download the file",
            )
        tensors[name] = TensorEntry(name, dtype, tuple(shape), begin, end)
        spans.append((begin, end, name))
    # The data buffer must be covered exactly, without holes or overlaps (the reference rule).
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            raise CorruptSafetensors(
                f"{where}: tensor {name} starts at {begin}, expected {cursor} (hole or overlap)",
                "re-download the file",
            )
        cursor = end
    # Like the reference library, trailing bytes after the last tensor are as wrong as missing ones.
    if file_size is not None and cursor != file_size:
        raise CorruptSafetensors(
            f"{where}: data buffer is {file_size} bytes but the header describes {cursor}"
            + (" (truncated)" if file_size < cursor else " (trailing bytes)"),
            "re-download the file",
        )
    return tensors, {str(k): str(v) for k, v in metadata_obj.items()}


def read_header(path: Path) -> SafetensorsHeader:
    """Read and validate the header of a local safetensors file (reads the header bytes only)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CorruptSafetensors(
                    f"{path}: shorter than 8 bytes, not a safetensors file", "re-download it"
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CorruptSafetensors(
                    f"{path}: header length {header_len} does not fit the file ({size} bytes)",
                    "re-download it",
                )
            raw = handle.read(header_len)
    except FileNotFoundError as exc:
        raise BadInput(f"{path}: no such file", "check the path") from exc
    except IsADirectoryError as exc:
        raise BadInput(f"{path}: is a directory, expected a safetensors file", "check the path") from exc
    tensors, metadata = parse_header(raw, str(path), size - 8 - header_len)
    return SafetensorsHeader(path, header_len, tensors, metadata, size, raw)


@dataclass(frozen=True)
class NewTensor:
    """A tensor to place in a file being written: its bytes come from `source` at `offset` (absolute)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    source: Path | None = None
    offset: int = 0


def build_header(tensors: Sequence[NewTensor], metadata: dict[str, str] | None = None) -> bytes:
    """Header bytes (length prefix + space-padded JSON) for tensors laid out in the given order."""
    obj: dict[str, object] = {}
    if metadata:
        obj["__metadata__"] = dict(sorted(metadata.items()))
    cursor = 0
    for tensor in tensors:
        obj[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [cursor, cursor + tensor.nbytes],
        }
        cursor += tensor.nbytes
    text = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    # Pad so that the data buffer starts 8-byte aligned, as the reference writer does.
    pad = (-(8 + len(text))) % _HEADER_ALIGN
    text += b" " * pad
    return struct.pack("<Q", len(text)) + text


def _libc_sync_file_range() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _libc_sync_file_range()


def start_writeback(fd: int, offset: int, count: int) -> None:
    """Ask the kernel to start writing [offset, offset+count) of fd to disk, without waiting.

    sync_file_range(2) with SYNC_FILE_RANGE_WRITE (Linux; nothing elsewhere). It promises nothing about
    durability (the fsync after it does): it only lets the disk work while more bytes are copied, where
    `cp` then `fsync` copies everything first and then waits for all of it. count 0: to the end."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, count, _SYNC_FILE_RANGE_WRITE)  # a failure only loses the head start


def _copy_range(src_fd: int, dst_fd: int, offset: int, count: int, on_bytes: Callable[[int], None]) -> None:
    """Copy `count` bytes from src_fd at `offset` to dst_fd's current position, in the kernel if possible."""
    remaining = count
    pos = offset
    while remaining > 0:
        want = min(remaining, _COPY_CHUNK)
        try:
            done = os.copy_file_range(src_fd, dst_fd, want, pos)
        except OSError as exc:
            # Kernels or filesystems without cross-file copy_file_range: fall back to sendfile/read.
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
            _copy_range_userspace(src_fd, dst_fd, pos, remaining, on_bytes)
            return
        if done == 0:
            raise CorruptSafetensors(
                f"source ended early while copying at offset {pos}", "re-download the source"
            )
        pos += done
        remaining -= done
        on_bytes(done)


def _copy_range_userspace(
    src_fd: int, dst_fd: int, offset: int, count: int, on_bytes: Callable[[int], None]
) -> None:
    buffer = bytearray(min(_FALLBACK_BUFFER, max(count, 1)))
    view = memoryview(buffer)
    pos = offset
    remaining = count
    while remaining > 0:
        want = min(remaining, len(buffer))
        got = os.preadv(src_fd, [view[:want]], pos)
        if got == 0:
            raise CorruptSafetensors(
                f"source ended early while copying at offset {pos}", "re-download the source"
            )
        written = 0
        while written < got:
            written += os.write(dst_fd, view[written:got])
        pos += got
        remaining -= got
        on_bytes(got)


def write_spliced(
    out: Path,
    tensors: Sequence[NewTensor],
    metadata: dict[str, str] | None = None,
    on_bytes: Callable[[int], None] = lambda _: None,
    fsync: bool = True,
    *,
    writeback: bool = True,
) -> int:
    """Write a safetensors file whose tensor bytes are byte ranges of other files. Returns its size.

    `writeback`: start the disk writing every _WRITEBACK_STEP bytes (see start_writeback), so that a
    later fsync (here with `fsync`, or the caller's) waits for the tail only."""
    header = build_header(tensors, metadata)
    fds: dict[Path, int] = {}
    try:
        with open(out, "wb") as handle:
            handle.write(header)
            handle.flush()
            dst = handle.fileno()
            landed = len(header)
            started = 0

            def moved(n: int) -> None:
                nonlocal landed, started
                landed += n
                on_bytes(n)
                if writeback and landed - started >= _WRITEBACK_STEP:
                    start_writeback(dst, started, landed - started)
                    started = landed

            for tensor in tensors:
                if tensor.nbytes == 0:
                    continue
                if tensor.source is None:
                    raise ValueError(f"{tensor.name}: no source for a non-empty tensor")
                src = fds.get(tensor.source)
                if src is None:
                    src = fds[tensor.source] = os.open(tensor.source, os.O_RDONLY)
                _copy_range(src, dst, tensor.offset, tensor.nbytes, moved)
            if writeback and landed > started:
                start_writeback(dst, started, landed - started)
            if fsync:
                os.fsync(dst)
            return os.fstat(dst).st_size
    finally:
        for fd in fds.values():
            os.close(fd)


def spliced_sha256(tensors: Sequence[NewTensor], metadata: dict[str, str] | None = None) -> str:
    """sha256 of the file `write_spliced` writes for these tensors, computed from the sources.

    It is what the file must hold, not what landed: a record made from it lets `models verify` catch
    a faulty copy. SplicedHash runs the same in a child process, beside other work.
    """
    return _hash_ranges(build_header(tensors, metadata), _ranges(tensors))


def _ranges(tensors: Sequence[NewTensor]) -> list[tuple[str, int, int]]:
    ranges = []
    for tensor in tensors:
        if tensor.nbytes == 0:
            continue
        if tensor.source is None:
            raise ValueError(f"{tensor.name}: no source for a non-empty tensor")
        ranges.append((os.fspath(tensor.source), tensor.offset, tensor.nbytes))
    return ranges


def _hash_ranges(header: bytes, ranges: Iterable[tuple[str, int, int]]) -> str:
    digest = hashlib.sha256(header)
    buffer = bytearray(_FALLBACK_BUFFER)
    view = memoryview(buffer)
    fds: dict[str, int] = {}
    try:
        for source, offset, nbytes in ranges:
            src = fds.get(source)
            if src is None:
                src = fds[source] = os.open(source, os.O_RDONLY)
            pos, remaining = offset, nbytes
            while remaining > 0:
                got = os.preadv(src, [view[: min(remaining, len(buffer))]], pos)
                if got == 0:
                    raise CorruptSafetensors(
                        f"{source}: ended early at offset {pos}", "re-download the source"
                    )
                digest.update(view[:got])
                pos += got
                remaining -= got
    finally:
        for fd in fds.values():
            os.close(fd)
    return digest.hexdigest()


# The child of SplicedHash: stdlib only, no package import (-I -S: no site, no environment), so that it
# is up in about 20 ms. It waits for EOF on stdin (the go), reads the job from the file descriptor in argv
# ({"header": base64, "sources": [path], "ranges": [[source, offset, nbytes]]}) and prints {"sha256"} or
# {"error"}. It hashes mapped pages (mmap): no copy into a buffer, a sixth less CPU than read-and-hash
# on the critical path of the graft. A source truncated under it ends it with SIGBUS; the parent then
# hashes in its own process (with reads), which names the short source.
_CHILD_CODE = r"""
import base64, hashlib, json, mmap, os, sys
sys.stdin.buffer.read()
fd = int(sys.argv[1])
os.lseek(fd, 0, 0)
with os.fdopen(fd, "rb") as f:
    job = json.load(f)
digest = hashlib.sha256(base64.b64decode(job["header"]))
maps = {}
def short(path, at):
    json.dump({"error": f"{path}: ended early at offset {at}"}, sys.stdout)
    sys.stdout.flush()
    os._exit(0)
try:
    for i, offset, nbytes in job["ranges"]:
        path = job["sources"][i]
        view = maps.get(i)
        if view is None:
            with open(path, "rb") as src:
                size = os.fstat(src.fileno()).st_size
                if size == 0:
                    short(path, offset)
                m = mmap.mmap(src.fileno(), 0, prot=mmap.PROT_READ)
            m.madvise(mmap.MADV_SEQUENTIAL)
            view = maps[i] = memoryview(m)
        if offset + nbytes > len(view):
            short(path, max(offset, len(view)))
        digest.update(view[offset : offset + nbytes])
except OSError as exc:
    json.dump({"error": str(exc)}, sys.stdout)
else:
    json.dump({"sha256": digest.hexdigest()}, sys.stdout)
sys.stdout.flush()
os._exit(0)
"""


class SplicedHash:
    """spliced_sha256 in a child process, collected with result() or ended with stop().

    The child starts at construction (its interpreter comes up while the caller still reads headers);
    feed() hands it the tensors, and the hashing starts then. Constructed with tensors, it is fed at once.
    A process, not a thread: hashing overlaps the caller's header parsing, which holds the GIL; a
    thread there waits for the GIL at every block and ends later than it would have alone (measured).
    If the child cannot run (no interpreter, killed), result() hashes in this process instead.
    """

    def __init__(
        self, tensors: Sequence[NewTensor] | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        self._header = b""
        self._ranges: list[tuple[str, int, int]] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        # The job goes through an unnamed file: a pipe would block the caller while the job (hundreds
        # of kB for a real MTP layer) is larger than the pipe and the child is still starting.
        self._job = tempfile.TemporaryFile()  # noqa: SIM115 (lives until result() or stop())
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _CHILD_CODE, str(self._job.fileno())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                pass_fds=(self._job.fileno(),),
            )
        except OSError:
            self._proc = None
        if tensors is not None:
            self.feed(tensors, metadata)

    def feed(self, tensors: Sequence[NewTensor], metadata: dict[str, str] | None = None) -> None:
        """The tensors of the file to hash (in the order write_spliced lays them out): hashing starts."""
        self._header = build_header(tensors, metadata)
        self._ranges = _ranges(tensors)
        if self._proc is None or self._proc.stdin is None:
            return
        sources: dict[str, int] = {}
        ranges = [[sources.setdefault(src, len(sources)), offset, n] for src, offset, n in self._ranges]
        job = {"header": base64.b64encode(self._header).decode(), "sources": list(sources), "ranges": ranges}
        self._job.write(json.dumps(job).encode())
        self._job.flush()
        with contextlib.suppress(OSError):  # the child is gone: result() hashes here
            self._proc.stdin.close()  # EOF: the go

    def result(self) -> str:
        """The sha256; CorruptSafetensors when a source is shorter than its range."""
        if self._ranges is None:
            raise ValueError("SplicedHash.result() before feed()")
        proc, self._proc = self._proc, None
        if proc is not None:
            out = _collect(proc)
            try:
                answer = json.loads(out)
            except ValueError:
                answer = {}
            if proc.returncode == 0 and "error" in answer:
                raise CorruptSafetensors(str(answer["error"]), "re-download the source")
            if proc.returncode == 0 and isinstance(answer.get("sha256"), str):
                self._job.close()
                return str(answer["sha256"])
        self._job.close()
        return _hash_ranges(self._header, self._ranges)

    def stop(self) -> None:
        """End the child (a refused or unchanged graft needs no hash); no-op once collected."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            _collect(proc)
        self._job.close()


def _collect(proc: subprocess.Popen[bytes]) -> bytes:
    """The child's stdout once it has ended (communicate() would flush the stdin that feed() closed)."""
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    assert proc.stdout is not None
    with proc.stdout:
        out = proc.stdout.read()
    proc.wait()
    return out


def write_file(
    out: Path,
    tensors: Sequence[tuple[str, str, Sequence[int]]],
    data: Callable[[str, int], Iterable[Chunk]],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write a safetensors file whose tensor bytes come from `data(name, nbytes)` chunks (test data, bench).

    Tensors are laid out in the order given. Returns the file size.
    """
    specs = [
        NewTensor(name, dtype, tuple(shape), tensor_nbytes(dtype, shape)) for name, dtype, shape in tensors
    ]
    with open(out, "wb") as handle:
        handle.write(build_header(specs, metadata))
        for spec in specs:
            written = 0
            for chunk in data(spec.name, spec.nbytes):
                handle.write(chunk)
                written += len(chunk)
            if written != spec.nbytes:
                raise ValueError(f"{spec.name}: data gave {written} bytes, expected {spec.nbytes}")
        return handle.tell()


def iter_safetensors(directory: Path) -> Iterator[Path]:
    """The *.safetensors files directly inside a model directory, in name order."""
    yield from sorted(p for p in directory.glob("*.safetensors") if p.is_file())
