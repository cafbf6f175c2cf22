"""`gh200 models fetch`: a pinned revision of a hub repo into the model store, checked and resumable.

Flow: the hub's file metadata (sizes, LFS sha256) at the pinned commit -> the files the profile needs ->
free disk vs what is still missing -> huggingface_hub `snapshot_download` into a hidden sibling
`.NAME.partial` (kept across interruptions: finished files are not fetched again) -> sha256 of every LFS
file against the hub's metadata (git blob id for small files) -> `.gh200-manifest.json` -> rename to the
final directory. `gh200 models verify DIR` re-checks the manifest offline.

A re-run is "unchanged" when the manifest names this revision, its recorded sha256 (git blob id for
small files) of every wanted file equals the hub's, and every file on disk has the hub's size. Files
that are missing or of another size are repaired: only they are downloaded again and hashed, and the
result lists them. (A same-size change inside a file is what `models verify` finds: hashing a 430 GiB
model on every re-run would make the idempotent re-run cost minutes.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gh200.checkpoints import hub
from gh200.checkpoints.verify import MANIFEST_FORMAT, MANIFEST_NAME, git_blob_sha1, hash_workers
from gh200.errors import BadInput, OperationFailed
from gh200.fsutil import atomic_write_text, sha256_file

# Room left free beyond the download itself (filesystem metadata, the manifest, other writers).
DISK_MARGIN_BYTES = 1 << 30
DEFAULT_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py")


class NotEnoughDisk(OperationFailed):
    """The model store's filesystem lacks room for what remains to be downloaded."""


class CorruptDownload(OperationFailed):
    """A downloaded file's sha256 (or git blob id) differs from the hub's metadata."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None
    blob_id: str | None

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None


@dataclass
class FetchResult:
    ref: hub.RepoRef
    path: Path
    changed: bool
    files: int
    bytes_total: int
    bytes_downloaded: int
    seconds: float
    # Files of an earlier fetch of this revision that were missing or damaged, now fetched again.
    repaired: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if not self.changed:
            return "unchanged"
        return "repaired" if self.repaired else "fetched"

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "status": self.status,
            "repaired": self.repaired,
            "repo": self.ref.repo,
            "revision": self.ref.revision,
            "path": str(self.path),
            "files": self.files,
            "bytes": self.bytes_total,
            "bytes_downloaded": self.bytes_downloaded,
            "seconds": round(self.seconds, 3),
        }


def remote_files(ref: hub.RepoRef, token: str | None) -> list[RemoteFile]:
    """Every file of the repo at the revision, with size and LFS sha256 (hub metadata, no download)."""
    with hub.hub_errors(str(ref), token):
        info = hub.api(token).model_info(ref.repo, revision=ref.revision, files_metadata=True)
    if info.sha and info.sha != ref.revision:
        raise BadInput(
            f"{ref}: hub resolved the revision to {info.sha}",
            "pin the full commit sha from profiles/models.lock",
        )
    files = []
    for s in info.siblings or []:
        if s.size is None:
            # With files_metadata the hub lists every file's size; without sizes nothing can be checked.
            raise hub.HubError(
                f"{ref}: the hub listed {s.rfilename} without its size",
                "point HF_ENDPOINT at a hub that serves file metadata (?blobs=true)",
            )
        files.append(RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None, s.blob_id))
    return files


def select(files: Sequence[RemoteFile], patterns: Sequence[str]) -> list[RemoteFile]:
    from huggingface_hub.utils._paths import filter_repo_objects

    chosen = list(filter_repo_objects(files, allow_patterns=list(patterns), key=lambda f: f.path))
    return sorted(chosen, key=lambda f: f.path)


def _existing_ancestor(path: Path) -> Path:
    """The nearest existing directory at or above the absolute `path` (the root always exists)."""
    while not path.exists():
        path = path.parent
    return path


def _hf_meta_dir(partial: Path) -> Path:
    return partial / ".cache" / "huggingface" / "download"


def _complete_locally(partial: Path, f: RemoteFile) -> bool:
    path = partial / f.path
    return path.is_file() and path.stat().st_size == f.size


def _bytes_on_disk(partial: Path, files: Sequence[RemoteFile]) -> int:
    done = 0
    for f in files:
        with contextlib.suppress(OSError):
            done += (partial / f.path).stat().st_size
    meta = _hf_meta_dir(partial)
    if meta.exists():
        for tmp in meta.rglob("*.incomplete"):
            with contextlib.suppress(OSError):
                done += tmp.stat().st_size
    return done


def _clean_stale(partial: Path) -> None:
    """A killed download leaves its process-unique `*.incomplete` file behind: drop those."""
    meta = _hf_meta_dir(partial)
    if meta.exists():
        for tmp in meta.rglob("*.incomplete"):
            tmp.unlink()


@contextlib.contextmanager
def _quiet_hf() -> Iterator[None]:
    """Our rich progress replaces huggingface_hub's tqdm bars and its warnings on stderr."""
    from huggingface_hub.utils.tqdm import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was = are_progress_bars_disabled()
    disable_progress_bars()
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
        if not was:
            enable_progress_bars()


def _read_manifest(dest: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((dest / MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _recorded(dest: Path, ref: hub.RepoRef, wanted: Sequence[RemoteFile]) -> dict[str, Any] | None:
    """The manifest's entries for `wanted`, when it is this revision's and every recorded digest is
    the hub's (sha256 for LFS files, git blob id for the others); else None."""
    manifest = _read_manifest(dest)
    if not manifest or manifest.get("repo") != ref.repo or manifest.get("revision") != ref.revision:
        return None
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        return None
    entries: dict[str, Any] = {}
    for f in wanted:
        info = listed.get(f.path)
        if not isinstance(info, dict) or info.get("size") != f.size:
            return None
        if f.sha256 is not None and info.get("sha256") != f.sha256:
            return None
        if f.sha256 is None and f.blob_id is not None and info.get("git_oid") != f.blob_id:
            return None
        entries[f.path] = info
    return entries


def damaged_files(dest: Path, wanted: Sequence[RemoteFile]) -> dict[str, str]:
    """Wanted files that are missing from `dest` or have another size than the hub's: path -> why."""
    problems = {}
    for f in wanted:
        try:
            st = (dest / f.path).stat()
        except OSError:  # gone, or not reachable: either way it must come again
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            problems[f.path] = "missing"
        elif st.st_size != f.size:
            problems[f.path] = f"{st.st_size} bytes, the hub has {f.size}"
    return problems


def fetch(
    ref: hub.RepoRef,
    patterns: Sequence[str] | None = None,
    dest: Path | None = None,
    *,
    token: str | None = None,
    max_workers: int = 4,
    force: bool = False,
    on_phase: Callable[[str, int], None] = lambda _p, _t: None,
    on_progress: Callable[[int], None] = lambda _n: None,
) -> FetchResult:
    """Fetch `ref` (files matching `patterns`) into `dest` (default: the model store's directory)."""
    from gh200.checkpoints.local import model_dir

    start = time.monotonic()
    patterns = list(patterns or DEFAULT_PATTERNS)
    dest = (dest or model_dir(ref.repo)).absolute()
    files = remote_files(ref, token)
    wanted = select(files, patterns)
    if not wanted:
        raise BadInput(
            f"{ref}: no file matches {patterns}",
            "check the profile's model.files, or pass --include PATTERN (e.g. 'UD-IQ2_XXS/*')",
        )
    total = sum(f.size for f in wanted)
    recorded = _recorded(dest, ref, wanted)
    broken = damaged_files(dest, wanted) if recorded is not None else {}
    if recorded is not None and not broken:
        return FetchResult(ref, dest, False, len(wanted), total, 0, time.monotonic() - start)
    # A repair fetches and hashes only the damaged files; the others keep their checked entries.
    todo = [f for f in wanted if f.path in broken] if recorded is not None else list(wanted)
    kept = {p: info for p, info in (recorded or {}).items() if p not in broken}

    partial = dest.with_name(f".{dest.name}.partial")
    if dest.exists():
        manifest = _read_manifest(dest)
        if manifest is None or manifest.get("repo") != ref.repo:
            raise BadInput(
                f"{dest} exists and was not fetched from {ref.repo}", "remove it or choose another --out"
            )
        if manifest.get("revision") != ref.revision and not force:
            raise BadInput(
                f"{dest} holds {ref.repo}@{manifest.get('revision')}, not {ref.revision}",
                "pass --force to replace it (unchanged files are kept), or choose another --out",
            )
        if partial.exists():
            raise BadInput(
                f"{dest} and {partial} both exist", f"remove {partial} (an interrupted fetch) and re-run"
            )
    # Room is checked before anything moves: a full disk must not leave the model directory renamed.
    here = dest if dest.is_dir() else partial
    need = sum(f.size for f in todo if not _complete_locally(here, f))  # damaged files are incomplete
    free = shutil.disk_usage(_existing_ancestor(here)).free
    if need + DISK_MARGIN_BYTES > free:
        raise NotEnoughDisk(
            f"{here.parent}: {need / 2**30:.1f} GiB still to download (+1 GiB margin), "
            f"{free / 2**30:.1f} GiB free",
            "free space, or set GH200_MODELS (or --out) to a larger filesystem",
        )
    if dest.exists():
        # Another revision or other patterns: carry on from its files (huggingface_hub keeps those
        # whose sha256 still matches and downloads the rest). A repair: the damaged files only.
        os.rename(dest, partial)
    partial.mkdir(parents=True, exist_ok=True)
    # Before downloading: a file of another revision may stand where this one needs a folder.
    _prune(partial, wanted)
    _clean_stale(partial)
    for rel in broken:
        # A damaged file is fetched whole (no resume from a truncated or overgrown copy); a
        # directory standing in its place goes too (damaged_files reports it missing).
        damaged = partial / rel
        if damaged.is_dir() and not damaged.is_symlink():
            shutil.rmtree(damaged)
        else:
            damaged.unlink(missing_ok=True)
        (_hf_meta_dir(partial) / f"{rel}.metadata").unlink(missing_ok=True)
    todo_total = sum(f.size for f in todo)
    on_phase("download", todo_total)
    on_progress(todo_total - need)
    # Always asked, even when every file looks complete by size: huggingface_hub skips files whose
    # recorded commit or sha256 matches and fetches the rest (a same-size file of another revision).
    _download(
        ref, partial=partial, wanted=todo, token=token, max_workers=max_workers, on_progress=on_progress
    )
    on_progress(todo_total)
    on_phase("sha256", todo_total)
    manifest_files = dict(sorted({**kept, **_check_files(partial, todo, on_progress)}.items()))
    manifest = {
        "format": MANIFEST_FORMAT,
        "repo": ref.repo,
        "revision": ref.revision,
        "patterns": patterns,
        "files": manifest_files,
    }
    atomic_write_text(
        partial / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n", mode=0o644
    )
    shutil.rmtree(partial / ".cache", ignore_errors=True)
    os.rename(partial, dest)
    repaired = [f"{rel}: {why}" for rel, why in broken.items()]
    return FetchResult(ref, dest, True, len(wanted), total, need, time.monotonic() - start, repaired)


def _prune(partial: Path, wanted: Sequence[RemoteFile]) -> None:
    """Leave only the wanted files (an earlier fetch of other patterns or revision may have more), and
    huggingface_hub's records in `.cache` (they spare downloading finished small files again)."""
    keep = {f.path for f in wanted}
    ours = (p for p in partial.rglob("*") if p.relative_to(partial).parts[0] != ".cache")
    for path in sorted(ours, reverse=True):  # deepest first: a folder is emptied before it is looked at
        rel = path.relative_to(partial)
        if path.is_file() and str(rel) not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _download(
    ref: hub.RepoRef,
    *,
    partial: Path,
    wanted: Sequence[RemoteFile],
    token: str | None,
    max_workers: int,
    on_progress: Callable[[int], None],
) -> None:
    from huggingface_hub import snapshot_download

    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.3):
            on_progress(_bytes_on_disk(partial, wanted))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        with _quiet_hf(), hub.hub_errors(str(ref), token):
            snapshot_download(
                ref.repo,
                revision=ref.revision,
                local_dir=str(partial),
                # Exact names, not the patterns: the selection was made (and sized) above.
                allow_patterns=[f.path for f in wanted],
                token=token,
                endpoint=hub.endpoint(),
                max_workers=max_workers,
            )
    except OSError as exc:  # not the hub's answer (hub_errors maps those): disk, files, a short body
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise hub.HubError(
            f"{ref}: download failed ({hub.scrub(first_line, token)})",
            "re-run the same command: finished files are kept and not fetched again",
        ) from exc
    finally:
        stop.set()
        poller.join()


def _check_files(
    partial: Path, wanted: Sequence[RemoteFile], on_progress: Callable[[int], None]
) -> dict[str, dict[str, Any]]:
    """sha256 of every file; LFS files against the hub's sha256, small files against their blob id."""
    lock = threading.Lock()
    done = [0]

    def advance(n: int) -> None:
        with lock:
            done[0] += n
            on_progress(done[0])

    def one(f: RemoteFile) -> tuple[RemoteFile, str, str]:
        path = partial / f.path
        digest = sha256_file(path, advance)
        # The hub lists a sha256 for LFS files only; a small file is checked by its git blob id.
        return f, digest, digest if f.lfs else git_blob_sha1(path)

    out: dict[str, dict[str, Any]] = {}
    bad: list[str] = []
    with ThreadPoolExecutor(max_workers=hash_workers()) as pool:
        for f, digest, got in pool.map(one, wanted):
            path = partial / f.path
            size = path.stat().st_size
            want = f.sha256 if f.lfs else f.blob_id
            if size != f.size or (want is not None and got != want):
                # Remove the file and huggingface_hub's record of it, so that a re-run downloads it again.
                path.unlink()
                (_hf_meta_dir(partial) / f"{f.path}.metadata").unlink(missing_ok=True)
                bad.append(f"{f.path} (hub {want or '?'}, got {got}, {size} of {f.size} bytes)")
                continue
            entry: dict[str, Any] = {"size": size, "sha256": digest, "lfs": f.lfs}
            if f.blob_id:
                entry["git_oid"] = f.blob_id
            out[f.path] = entry
    if bad:
        raise CorruptDownload(
            f"{len(bad)} downloaded file(s) differ from the hub's metadata and were removed: {bad[0]}",
            "re-run the same fetch to download them again",
        )
    return dict(sorted(out.items()))
