"""profiles/images.lock as the image builder reads it (written by `gh200 lock` on a connected host).

There is one reader of the file, gh200.profiles.locks (its parser, `locked_image` for what an entry
pins, and `Pin.pinned_ref` for the form pulled). The builder only adds stricter checks: a build must
not run from a half-valid lock, so a malformed entry is an error here rather than "unlocked".
"""

from __future__ import annotations

from pathlib import Path

from gh200.errors import LockError
from gh200.paths import profiles_dir
from gh200.profiles.locks import DIGEST_RE, IMAGES_LOCK, Pin, load_lock_section, locked_image


def images_lock_path() -> Path:
    return profiles_dir() / IMAGES_LOCK


def check_images_lock(path: Path | None = None) -> None:
    """Refuse a lock with an entry that has no ref or a digest that is not `sha256:<64 hex>`."""
    path = path or images_lock_path()
    for key, entry in load_lock_section(path, "images").items():
        if not isinstance(entry.get("ref"), str):
            raise LockError(f"{path}: entry {key!r} has no ref", "re-run `gh200 lock` on a connected host")
        digest = entry.get("digest")
        if digest is not None and not (isinstance(digest, str) and DIGEST_RE.fullmatch(digest)):
            raise LockError(
                f"{path}: entry {key!r} has a malformed digest {digest!r}",
                "re-run `gh200 lock` on a connected host",
            )


def find_locked(ref: str, lock_key: str | None, path: Path | None = None) -> Pin:
    """What images.lock pins for a base image, after the builder's stricter checks of the file."""
    path = path or images_lock_path()
    check_images_lock(path)
    return locked_image(ref, lock_key, path)
