"""Read profiles/images.lock (written by `gh200 lock` on a connected host).

Format (the lead's gh200.profiles.locks writes it): `schema: 1` and `images:`, a mapping
lock_key -> {ref: "repo:tag", digest: "sha256:..." or null, resolved_at: ...}. A bare top-level
mapping of lock keys is read too. Only lookups by key or ref are needed here, so this reader is
small and separate from the profile-centred one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gh200.errors import LockError
from gh200.paths import profiles_dir
from gh200.profiles.locks import load_lock_section

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class LockedImage:
    key: str
    ref: str
    digest: str | None

    @property
    def pinned_ref(self) -> str | None:
        """`repo@sha256:...` (the tag dropped: the digest alone names the image), or None if unpinned."""
        if not self.digest:
            return None
        return f"{strip_tag(self.ref)}@{self.digest}"


def strip_tag(ref: str) -> str:
    """`docker.io/vllm/vllm-openai:v1` -> `docker.io/vllm/vllm-openai` (a registry port is kept)."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        return ref[: len(ref) - len(last)] + last.split(":", 1)[0]
    return ref


def images_lock_path() -> Path:
    return profiles_dir() / "images.lock"


def read_images_lock(path: Path | None = None) -> dict[str, LockedImage]:
    """All entries of images.lock; an absent file is an empty lock."""
    path = path or images_lock_path()
    # One parser of the file (gh200.profiles.locks); this reader is stricter about entries because
    # a build must not run from a half-valid pin.
    data = load_lock_section(path, "images")
    out: dict[str, LockedImage] = {}
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("ref"), str):
            raise LockError(f"{path}: entry {key!r} has no ref", "re-run `gh200 lock` on a connected host")
        digest = entry.get("digest")
        if digest is not None and not (isinstance(digest, str) and DIGEST.match(digest)):
            raise LockError(
                f"{path}: entry {key!r} has a malformed digest {digest!r}",
                "re-run `gh200 lock` on a connected host",
            )
        out[str(key)] = LockedImage(str(key), entry["ref"], digest)
    return out


def find_locked(ref: str, lock_key: str | None, path: Path | None = None) -> LockedImage | None:
    """The lock entry for lock_key, else the first entry whose ref is `ref`."""
    entries = read_images_lock(path)
    if lock_key and lock_key in entries:
        return entries[lock_key]
    for entry in entries.values():
        if entry.ref == ref:
            return entry
    return None
