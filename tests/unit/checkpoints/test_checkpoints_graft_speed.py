"""What the graft's speed work must not cost: the hash in a child process, writeback started early, fsyncs
deferred to the end. Each is checked against the bytes on disk or the files in OUT."""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from ckpt_testlib import copy_tree

from gh200.checkpoints import graft as graft_mod
from gh200.checkpoints import safetensors_io as st_io
from gh200.checkpoints.graft import GraftOutputExists, graft
from gh200.checkpoints.safetensors_io import (
    CorruptSafetensors,
    NewTensor,
    SplicedHash,
    read_header,
    write_file,
    write_spliced,
)
from gh200.checkpoints.testdata import seeded_fill
from gh200.checkpoints.verify import verify_dir
from gh200.errors import BadInput


def _picks(root: Path) -> list[NewTensor]:
    """Tensors at odd offsets across two sources, out of their stored order."""
    fill = seeded_fill(5)
    a, b = root / "a.safetensors", root / "b.safetensors"
    write_file(a, [("x", "U8", (7,)), ("y", "F32", (1000, 3)), ("z", "BF16", (33,))], fill)
    write_file(b, [("p", "F8_E4M3", (129, 31)), ("q", "I8", (5,)), ("r", "F16", (4099,))], fill)
    picks = []
    for path, names in ((b, ["r", "p"]), (a, ["z", "y"]), (b, ["q"])):
        header = read_header(path)
        for name in names:
            e = header.tensors[name]
            picks.append(NewTensor(name, e.dtype, e.shape, e.nbytes, path, header.data_start + e.begin))
    return picks


def _refuse_kernel_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(st_io.os, "copy_file_range", refuse)
    monkeypatch.setattr(st_io, "_FALLBACK_BUFFER", 1021)  # many rounds, ending mid-tensor


@pytest.mark.parametrize("copy", ["kernel", "fallback"])
def test_the_child_process_hash_is_the_sha256_of_the_file_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy: str
) -> None:
    picks = _picks(tmp_path)
    if copy == "fallback":
        _refuse_kernel_copy(monkeypatch)
    out = tmp_path / "out.safetensors"
    write_spliced(out, picks, {"format": "pt"})

    def not_here(*_args: object) -> str:
        raise AssertionError("hashed in this process, not in the child")

    monkeypatch.setattr(st_io, "_hash_ranges", not_here)
    sha = SplicedHash(picks, {"format": "pt"}).result()
    monkeypatch.undo()
    assert sha == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sha == st_io.spliced_sha256(picks, {"format": "pt"})


@pytest.mark.parametrize("failure", ["no interpreter", "child dies"])
def test_without_a_working_child_the_hash_is_made_here_and_is_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    picks = _picks(tmp_path)
    out = tmp_path / "out.safetensors"
    write_spliced(out, picks)
    if failure == "no interpreter":
        monkeypatch.setattr(st_io.sys, "executable", str(tmp_path / "no-such-python"))
    else:
        monkeypatch.setattr(st_io, "_CHILD_CODE", "import os; os._exit(3)")
    assert SplicedHash(picks).result() == hashlib.sha256(out.read_bytes()).hexdigest()


def test_a_short_source_is_reported_by_the_child_as_corrupt(tmp_path: Path) -> None:
    src = tmp_path / "s.safetensors"
    write_file(src, [("a", "U8", (100,))], seeded_fill())
    start = read_header(src).data_start
    beyond = NewTensor("a", "U8", (100,), 100, src, start + 40)
    with pytest.raises(CorruptSafetensors, match=f"{src}: ended early at offset {start + 100}"):
        SplicedHash([beyond]).result()


def _only_in_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_here(*_args: object) -> str:
        raise AssertionError("hashed in this process, not in the child")

    monkeypatch.setattr(st_io, "_hash_ranges", not_here)


def test_a_hash_started_before_its_tensors_are_known_hashes_what_it_is_fed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picks = _picks(tmp_path)
    out = tmp_path / "out.safetensors"
    write_spliced(out, picks, {"format": "pt"})
    _only_in_the_child(monkeypatch)
    hasher = SplicedHash()  # as the graft starts it: the child is up before the plan knows the tensors
    with pytest.raises(ValueError, match="before feed"):
        SplicedHash().result()
    hasher.feed(picks, {"format": "pt"})
    assert hasher.result() == hashlib.sha256(out.read_bytes()).hexdigest()


def test_an_empty_source_is_reported_by_the_child_as_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty.safetensors"
    empty.touch()
    _only_in_the_child(monkeypatch)
    with pytest.raises(CorruptSafetensors, match=f"{empty}: ended early at offset 16"):
        SplicedHash([NewTensor("a", "U8", (4,), 4, empty, 16)]).result()


def test_stop_ends_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st_io, "_CHILD_CODE", "import time; time.sleep(600)")
    hasher = SplicedHash(_picks(tmp_path))
    proc = hasher._proc
    assert proc is not None and proc.poll() is None
    hasher.stop()
    assert proc.poll() is not None  # reaped, not left running for ten minutes
    hasher.stop()  # a second stop is a no-op


@pytest.mark.parametrize("copy", ["kernel", "fallback"])
def test_writeback_is_started_over_the_whole_file_in_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy: str
) -> None:
    picks = _picks(tmp_path)
    if copy == "fallback":
        _refuse_kernel_copy(monkeypatch)
    started: list[tuple[int, int]] = []
    real = st_io.start_writeback

    def spy(fd: int, offset: int, count: int) -> None:
        started.append((offset, count))
        real(fd, offset, count)

    monkeypatch.setattr(st_io, "start_writeback", spy)
    monkeypatch.setattr(st_io, "_WRITEBACK_STEP", 4096)
    monkeypatch.setattr(st_io, "_COPY_CHUNK", 1000)  # the kernel copy too in many rounds
    out = tmp_path / "out.safetensors"
    size = write_spliced(out, picks, fsync=False)
    assert size == out.stat().st_size
    # Contiguous ranges from 0 to the end, each but the last one step (plus less than one round).
    assert started[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(started))
    assert started[-1][0] + started[-1][1] == size
    assert all(4096 <= n < 4096 + 1021 for _, n in started[:-1]) and len(started) >= 5
    started.clear()
    write_spliced(tmp_path / "quiet.safetensors", picks, writeback=False)
    assert started == []
    assert (tmp_path / "quiet.safetensors").read_bytes() == out.read_bytes()


def test_start_writeback_is_harmless_on_any_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10000)
    with open(path, "rb") as handle:
        st_io.start_writeback(handle.fileno(), 0, 0)
    st_io.start_writeback(-1, 0, 0)  # EBADF: only the head start is lost
    assert path.read_bytes() == b"x" * 10000


def test_every_file_the_graft_writes_is_fsynced_before_out_appears(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    synced: dict[int, bool] = {}
    real = os.fsync

    def spy(fd: int) -> None:
        synced[os.fstat(fd).st_ino] = out.exists()
        real(fd)

    monkeypatch.setattr(graft_mod.os, "fsync", spy)
    result = graft(tiny["base"], tiny["fp8"], out)
    monkeypatch.undo()
    written = {
        p.stat().st_ino: p.name
        for p in out.rglob("*")
        if p.is_file() and not (p.suffix == ".safetensors" and p.name != result.plan.mtp_shard)
    }
    assert set(written.values()) >= {result.plan.mtp_shard, "config.json", "model.safetensors.index.json"}
    missing = sorted(name for ino, name in written.items() if ino not in synced)
    assert missing == [], f"written but never fsynced: {missing}"
    late = sorted(name for ino, name in written.items() if synced[ino])
    assert late == [], f"fsynced only after OUT was renamed into place: {late}"
    assert verify_dir(out).ok


@pytest.mark.parametrize("force", [False, True])
def test_the_graft_makes_its_directories_and_the_rename_durable(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force: bool
) -> None:
    """fsynced files are not enough: their names in OUT, and OUT's name in its parent, must be too."""
    base = copy_tree(tiny["base"], tmp_path / "base")
    (base / "original" / "inner").mkdir(parents=True)  # carried files in subdirectories (as on the hub)
    (base / "original" / "inner" / "params.json").write_text("{}")
    out = tmp_path / "parent" / "out"
    if force:
        out.mkdir(parents=True)
        (out / "mine").write_text("not a graft")
    events: list[tuple[int, bool]] = []
    real = os.fsync

    def spy(fd: int) -> None:
        events.append((os.fstat(fd).st_ino, out.exists() and not (out / "mine").exists()))
        real(fd)

    monkeypatch.setattr(graft_mod.os, "fsync", spy)
    graft(base, tiny["fp8"], out, force=force)
    monkeypatch.undo()
    out_ino, parent_ino = out.stat().st_ino, out.parent.stat().st_ino
    # OUT's own directory (then still the temporary sibling) before the rename, the parent after it.
    assert (out_ino, False) in events, "OUT's directory entries were never fsynced before the rename"
    assert events[-1] == (parent_ino, True), "the rename into place was never made durable"
    subdirs = [p for p in out.rglob("*") if p.is_dir()]
    assert len(subdirs) == 2
    for sub in subdirs:
        assert (sub.stat().st_ino, False) in events, f"{sub} was never fsynced"
    assert verify_dir(out).ok
    events.clear()
    monkeypatch.setattr(graft_mod.os, "fsync", spy)
    graft(tiny["base"], tiny["fp8"], tmp_path / "quick", fsync=False)
    assert events == []  # fsync=False (tests, scratch outputs) asks for none of it


def test_the_graft_reports_its_steps_in_order(tiny: dict[str, Path], tmp_path: Path) -> None:
    result = graft(tiny["base"], tiny["fp8"], tmp_path / "out")
    steps = list(result.phase_s)
    assert steps[:3] == ["plan", "link base", "splice MTP layer"] and steps[-1] == "rename"
    assert all(s >= 0 for s in result.phase_s.values())
    assert sum(result.phase_s.values()) <= result.seconds + 0.01
    again = graft(tiny["base"], tiny["fp8"], tmp_path / "out")
    assert list(again.phase_s) == ["plan", "check existing OUT"]


class _Recorded(SplicedHash):
    made: ClassVar[list[SplicedHash]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.child = self._proc
        _Recorded.made.append(self)


@pytest.mark.parametrize("case", ["refused", "unchanged"])
def test_a_graft_that_writes_nothing_leaves_no_hash_running(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    out = tmp_path / "out"
    if case == "refused":
        out.mkdir()
        (out / "mine").write_text("not a graft")
    else:
        graft(tiny["base"], tiny["fp8"], out)
    _Recorded.made = []
    monkeypatch.setattr(graft_mod, "SplicedHash", _Recorded)
    if case == "refused":
        with pytest.raises(GraftOutputExists):
            graft(tiny["base"], tiny["fp8"], out)
    else:
        assert not graft(tiny["base"], tiny["fp8"], out).changed
    assert len(_Recorded.made) == 1, "the hash should have started with the plan"
    child = _Recorded.made[0].child
    assert child is not None and child.poll() is not None


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Base headers checked by three forked workers, whatever this machine's CPUs (the pids are listed)."""
    pids: list[int] = []
    real = os.fork

    def fork() -> int:
        pid = real()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(graft_mod, "_header_workers", lambda shards: min(shards, 3))
    monkeypatch.setattr(graft_mod.os, "fork", fork)
    return pids


def _plan_facts(plan: graft_mod.GraftPlan) -> dict[str, Any]:
    return {
        "digest": plan.digest,
        "carried": plan.carried,
        "ident": plan.carried_ident,
        "sha256": plan.carried_sha256,
        "weight_map": plan.weight_map,
        "metadata": plan.index_metadata,
        "warnings": plan.warnings,
    }


@pytest.mark.parametrize("workers", [2, 3])
def test_forked_header_checks_plan_what_one_process_plans(
    tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch, forks: list[int], workers: int
) -> None:
    monkeypatch.setattr(graft_mod, "_header_workers", lambda shards: min(shards, workers))
    forked = _plan_facts(graft_mod.plan_graft(tiny["base"], tiny["fp8"]))
    assert len(forks) == workers
    monkeypatch.setattr(graft_mod, "_header_workers", lambda _shards: 1)
    assert _plan_facts(graft_mod.plan_graft(tiny["base"], tiny["fp8"])) == forked
    assert len(forks) == workers  # the second plan forked nothing


@pytest.mark.parametrize("workers", ["forked", "one process"])
def test_an_unexpected_error_checking_a_base_shard_reaches_the_caller_as_itself(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forks: list[int], workers: str
) -> None:
    """Not taken for a checked shard (nor turned into another error) on its way back from a worker."""
    if workers == "one process":
        monkeypatch.setattr(graft_mod, "_header_workers", lambda _shards: 1)
    real = graft_mod._check_shard

    def fails_on_one(root: Path, shard: str, *args: Any) -> Any:
        if shard == "model-00002-of-00004.safetensors":
            raise RuntimeError(f"disk fault reading {shard}")
        return real(root, shard, *args)

    monkeypatch.setattr(graft_mod, "_check_shard", fails_on_one)
    with pytest.raises(RuntimeError, match=r"^disk fault reading model-00002-of-00004\.safetensors$"):
        graft(tiny["base"], tiny["fp8"], tmp_path / "out")
    assert len(forks) == (3 if workers == "forked" else 0)
    assert not (tmp_path / "out").exists()


def test_forked_workers_answer_for_every_shard_and_none_is_checked_again_here(
    tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch, forks: list[int]
) -> None:
    """The fallback (a dead worker's shards checked here) must stay a fallback: a worker that answers
    nothing would still give the right plan, at one process's speed."""
    here = os.getpid()
    checked_here: list[str] = []
    real = graft_mod._outcome

    def outcome(root: Path, shard: str, *args: Any) -> Any:
        if os.getpid() == here:
            checked_here.append(shard)
        return real(root, shard, *args)

    monkeypatch.setattr(graft_mod, "_outcome", outcome)
    plan = graft_mod.plan_graft(tiny["base"], tiny["fp8"])
    assert len(forks) == 3 and checked_here == []
    assert len(plan.carried_ident) >= 4


def test_a_forked_worker_that_dies_has_its_shards_checked_here(
    tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch, forks: list[int]
) -> None:
    serial = _plan_facts(graft_mod.plan_graft(tiny["base"], tiny["fp8"]))
    here = os.getpid()
    real = graft_mod._outcome

    def dies_in_a_worker(*args: Any) -> Any:
        if os.getpid() != here:
            os._exit(3)
        return real(*args)

    monkeypatch.setattr(graft_mod, "_outcome", dies_in_a_worker)
    assert _plan_facts(graft_mod.plan_graft(tiny["base"], tiny["fp8"])) == serial
    assert len(forks) == 6


def _ghost_entry(base: Path) -> tuple[str, str]:
    index = base / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.layers.2.mlp.experts.9.ghost"] = "model-00003-of-00004.safetensors"
    index.write_text(json.dumps(data))
    return (
        "base index lists model.layers.2.mlp.experts.9.ghost in model-00003-of-00004.safetensors",
        "re-fetch the base",
    )


def _truncated_shard(base: Path) -> tuple[str, str]:
    shard = base / "model-00002-of-00004.safetensors"
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size - 1)
    return f"{shard}: data buffer is", "re-download the file"


def _bad_header_json(base: Path) -> tuple[str, str]:
    shard = base / "model-00004-of-00004.safetensors"
    with open(shard, "r+b") as handle:
        handle.seek(8)
        handle.write(b"[")
    return f"{shard}: safetensors header is not valid JSON", "re-download or re-create the file"


@pytest.mark.parametrize("damage", [_ghost_entry, _truncated_shard, _bad_header_json])
@pytest.mark.parametrize("workers", ["forked", "one process"])
def test_a_bad_base_shard_is_refused_alike_by_forked_workers_and_one_process(
    *,
    tiny: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    forks: list[int],
    damage: Callable[[Path], tuple[str, str]],
    workers: str,
) -> None:
    if workers == "one process":
        monkeypatch.setattr(graft_mod, "_header_workers", lambda _shards: 1)
    base = copy_tree(tiny["base"], tmp_path / "base")
    said, fix = damage(base)
    with pytest.raises(BadInput) as refused:
        graft(base, tiny["fp8"], tmp_path / "out")
    assert refused.value.message.startswith(said), refused.value.message
    assert refused.value.fix == fix
    assert len(forks) == (3 if workers == "forked" else 0)
    assert not (tmp_path / "out").exists()


def test_header_workers_leave_a_cpu_to_the_hash_and_none_run_beside_threads() -> None:
    """A fork copies only the calling thread; a lock another thread held would stay held in the worker."""
    count = graft_mod._worker_count
    assert [count(13, 16), count(13, 4), count(2, 16), count(13, 2), count(13, 1)] == [8, 3, 2, 1, 1]
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        assert graft_mod._header_workers(13, 16) == 1
    finally:
        release.set()
        thread.join()


def test_the_graft_reports_every_step_it_takes_by_name(tiny: dict[str, Path], tmp_path: Path) -> None:
    """bench-graft prints these names to show where a graft's time goes; a step missing or misnamed
    would hide it."""
    result = graft(tiny["base"], tiny["fp8"], tmp_path / "out")
    assert list(result.phase_s) == [
        "plan",
        "link base",
        "splice MTP layer",
        "index and config",
        "fsync",
        "wait for sha256",
        "record",
        "rename",
    ]
    said = result.as_dict()
    assert said["seconds"] == round(result.seconds, 3) and said["seconds"] > 0
    again = graft(tiny["base"], tiny["fp8"], tmp_path / "out")
    assert again.seconds > 0 and again.as_dict()["seconds"] == round(again.seconds, 3)


@pytest.mark.parametrize("fsync", [True, False])
def test_a_durable_graft_starts_writeback_of_every_file_it_writes_and_fsyncs_the_mtp_shard_first(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    """The disk writes each file while the next is made, and the small files' fsyncs ride on the MTP
    shard's commit: its writeback starts as its bytes land and it is fsynced before the others."""
    base = copy_tree(tiny["base"], tmp_path / "base")
    (base / "tokenizer_config.json").write_text('{"x": 1}')  # a small file the graft copies
    out = tmp_path / "out"
    started: dict[int, list[tuple[int, int]]] = {}
    synced: list[int] = []
    real_fsync, real_small, real_big = os.fsync, graft_mod.start_writeback, st_io.start_writeback

    def on_start(real: Callable[[int, int, int], None]) -> Callable[[int, int, int], None]:
        def spy(fd: int, offset: int, count: int) -> None:
            started.setdefault(os.fstat(fd).st_ino, []).append((offset, count))
            real(fd, offset, count)

        return spy

    def fsync_spy(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):  # files only: the directories' fsyncs are tested above
            synced.append(info.st_ino)
        real_fsync(fd)

    monkeypatch.setattr(graft_mod, "start_writeback", on_start(real_small))
    monkeypatch.setattr(st_io, "start_writeback", on_start(real_big))
    monkeypatch.setattr(graft_mod.os, "fsync", fsync_spy)
    result = graft(base, tiny["fp8"], out, fsync=fsync)
    monkeypatch.undo()
    mtp = out / result.plan.mtp_shard
    if not fsync:
        assert started == {} and synced == []
        return
    small = [out / "tokenizer_config.json", out / "config.json", out / "model.safetensors.index.json"]
    for path in small:  # one writeback from the start to the end of the file (a count of 0)
        assert started.get(path.stat().st_ino) == [(0, 0)], (path.name, started.get(path.stat().st_ino))
    ranges = started.get(mtp.stat().st_ino)
    assert ranges and ranges[0][0] == 0 and ranges[-1][0] + ranges[-1][1] == mtp.stat().st_size, ranges
    assert synced and synced[0] == mtp.stat().st_ino, "the MTP shard was not the first file fsynced"
    assert {p.stat().st_ino for p in small} <= set(synced)


def test_header_workers_use_the_cpus_this_process_may_run_on_less_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(graft_mod.threading, "active_count", lambda: 1)  # no thread beside this one
    monkeypatch.setattr(graft_mod.os, "sched_getaffinity", lambda _pid: set(range(5)))
    assert graft_mod._header_workers(13) == 4
    assert graft_mod._header_workers(13, 16) == 8

    def no_affinity(_pid: int) -> set[int]:
        raise OSError(errno.ENOSYS, "not here")

    monkeypatch.setattr(graft_mod.os, "sched_getaffinity", no_affinity)
    monkeypatch.setattr(graft_mod.os, "cpu_count", lambda: 4)
    assert graft_mod._header_workers(13) == 3
    monkeypatch.setattr(graft_mod.os, "cpu_count", lambda: None)  # unknown: one CPU, no worker
    assert graft_mod._header_workers(13) == 1
    monkeypatch.delattr(graft_mod.os, "fork")  # no fork (not Linux): this process alone
    assert graft_mod._header_workers(13, 16) == 1


def test_a_forced_graft_succeeds_when_the_replaced_copy_cannot_be_removed_and_the_next_run_removes_it(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OUT is in place once the new copy is renamed in: a leftover old copy is litter, not a failure."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine").write_text("not a graft")
    real_unlink = os.unlink

    def refuse_in_old(path: Any, *args: Any, dir_fd: int | None = None) -> None:
        if dir_fd is not None and ".old-" in os.readlink(f"/proc/self/fd/{dir_fd}"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        real_unlink(path, *args, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", refuse_in_old)
    result = graft(tiny["base"], tiny["fp8"], out, force=True)
    monkeypatch.undo()
    assert result.changed and verify_dir(out).ok and not (out / "mine").exists()
    left = list(tmp_path.glob(".out.old-*"))
    assert len(left) == 1 and (left[0] / "mine").exists()
    # A graft that refuses OUT touches nothing, the leftover included.
    record = out / graft_mod.RECORD_NAME
    kept = record.read_bytes()
    record.write_text(json.dumps({**json.loads(kept), "input_digest": "other inputs"}))
    with pytest.raises(GraftOutputExists):
        graft(tiny["base"], tiny["fp8"], out)
    assert list(tmp_path.glob(".out.old-*")) == left
    record.write_bytes(kept)
    again = graft(tiny["base"], tiny["fp8"], out)
    assert not again.changed and list(tmp_path.glob(".out.old-*")) == []
