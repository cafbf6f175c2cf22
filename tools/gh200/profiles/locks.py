"""profiles/images.lock and profiles/models.lock: tags resolved to digests, revisions to commit shas.

Written only by `gh200 lock` on a connected host. Nothing here ever invents a digest or a sha:
an entry without one is "unlocked", and a --locked run refuses it. Images built locally
(localhost/...) and generated models (local/...) are pinned by their content instead.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from gh200.errors import Gh200Error, LockError, OperationFailed
from gh200.fsutil import atomic_write_text
from gh200.paths import profiles_dir
from gh200.profiles.schema import Profile

IMAGES_LOCK = "images.lock"
MODELS_LOCK = "models.lock"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
HEADER = "# Written by `gh200 lock` on a connected host. Do not edit digests or shas by hand.\n"

PinState = Literal["locked", "unlocked", "local"]


@dataclass(frozen=True)
class Pin:
    kind: Literal["image", "model"]
    key: str
    ref: str
    value: str | None
    state: PinState

    @property
    def pinned_ref(self) -> str:
        """The reference to pull when locked: `repo@sha256:...` for images, `repo@sha` for models.

        An image's tag is dropped: the digest alone names it, and not every engine or builder
        accepts a reference with both a tag and a digest.
        """
        if self.state != "locked" or self.value is None:
            return self.ref
        if self.kind == "image":
            return f"{strip_tag(self.ref)}@{self.value}"
        return f"{self.ref}@{self.value}"


def strip_tag(ref: str) -> str:
    """`docker.io/vllm/vllm-openai:v1` -> `docker.io/vllm/vllm-openai` (a registry port is kept)."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        return ref[: len(ref) - len(last)] + last.split(":", 1)[0]
    return ref


def load_lock_section(path: Path, section: str) -> dict[str, dict[str, Any]]:
    """The `images:` or `models:` mapping of a lock file; an absent file is an empty lock."""
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise LockError(f"{path}: not valid YAML", "restore it from git or re-run `gh200 lock`") from err
    entries = data.get(section, {}) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise LockError(f"{path}: no '{section}' mapping", "restore it from git or re-run `gh200 lock`")
    # An entry that is not a mapping pins nothing: it reads as unlocked and `gh200 lock` replaces it.
    return {key: value for key, value in entries.items() if isinstance(value, dict)}


def _is_local_image(ref: str) -> bool:
    return ref.startswith("localhost/")


def _is_local_model(repo: str) -> bool:
    return repo.startswith("local/")


def image_pin(profile: Profile, directory: Path | None = None) -> Pin:
    root = directory or profiles_dir()
    spec = profile.image
    if _is_local_image(spec.ref):
        return Pin("image", spec.lock_key, spec.ref, None, "local")
    return locked_image(spec.ref, spec.lock_key, root / IMAGES_LOCK)


def locked_image(ref: str, lock_key: str | None, path: Path) -> Pin:
    """The one reading of an images.lock entry, for profiles and image builds alike.

    The entry under `lock_key` (else, with no entry under that key, one whose ref is `ref`) pins
    `ref` only if it records that same ref and a well-formed digest; anything else is unlocked.
    """
    entries = load_lock_section(path, "images")
    if lock_key is not None and lock_key in entries:
        candidates = [entries[lock_key]]
    else:
        candidates = [e for e in entries.values() if e.get("ref") == ref]
    key = lock_key or ref
    for entry in candidates:
        digest = entry.get("digest")
        if isinstance(digest, str) and DIGEST_RE.fullmatch(digest) and entry.get("ref") == ref:
            return Pin("image", key, ref, digest, "locked")
    return Pin("image", key, ref, None, "unlocked")


def model_pins(profile: Profile, directory: Path | None = None) -> list[Pin]:
    root = directory or profiles_dir()
    entries = load_lock_section(root / MODELS_LOCK, "models")
    wanted = [(profile.model.lock_key, profile.model.repo, profile.model.revision)]
    if profile.model.graft:
        g = profile.model.graft
        wanted.append((g.lock_key, g.mtp_from, g.revision))
    pins = []
    for key, repo, revision in wanted:
        if _is_local_model(repo):
            pins.append(Pin("model", key, repo, None, "local"))
            continue
        entry = entries.get(key) or {}
        sha = entry.get("sha")
        ok = isinstance(sha, str) and SHA_RE.fullmatch(sha) and entry.get("repo") == repo
        ok = ok and entry.get("revision") == revision
        pins.append(Pin("model", key, repo, sha if ok else None, "locked" if ok else "unlocked"))
    return pins


def all_pins(profile: Profile, directory: Path | None = None) -> list[Pin]:
    return [image_pin(profile, directory), *model_pins(profile, directory)]


def lock_state(profile: Profile, directory: Path | None = None) -> PinState:
    states = {p.state for p in all_pins(profile, directory)}
    if "unlocked" in states:
        return "unlocked"
    return "locked" if "locked" in states else "local"


def require_locked(profile: Profile, directory: Path | None = None) -> None:
    """For --locked runs: every pin resolved (or content-pinned local), else one line naming it."""
    for pin in all_pins(profile, directory):
        if pin.state == "unlocked":
            lock = IMAGES_LOCK if pin.kind == "image" else MODELS_LOCK
            raise LockError(
                f"{profile.name}: {pin.kind} {pin.ref} is unlocked "
                f"(no entry for {pin.key!r} in profiles/{lock})",
                "run `gh200 lock` on a host that reaches the registry and the hub, or drop --locked",
            )


ImageResolver = Callable[[str], str]
ModelResolver = Callable[[str, str], str]


def resolve_image_digest(ref: str) -> str:
    """Registry digest of a tag, through the Docker SDK (distribution inspect)."""
    from docker.errors import DockerException

    from gh200.engine import connect

    try:
        data = connect().images.get_registry_data(ref)
    except DockerException as err:
        raise OperationFailed(
            f"cannot resolve {ref}: {str(err).splitlines()[0][:200]}", "check registry access"
        ) from err
    digest = str(data.id)
    if not DIGEST_RE.fullmatch(digest):
        raise OperationFailed(f"registry answered {digest!r} for {ref}, not a sha256 digest")
    return digest


def resolve_model_sha(repo: str, revision: str) -> str:
    """Commit sha of a revision on the Hugging Face hub (HF_ENDPOINT and HF_TOKEN honoured)."""
    # The checkpoints job's hub helpers: HF_ENDPOINT read at call time, the token, and every
    # hub/transport failure (not found, HTTP, connection refused) as a one-line error.
    from gh200.checkpoints.hub import api, hub_errors, resolve_token

    token = resolve_token()
    with hub_errors(f"{repo}@{revision}", token):
        info = api(token).model_info(repo, revision=revision)
    sha = str(info.sha)
    if not SHA_RE.fullmatch(sha):
        raise OperationFailed(f"hub answered {sha!r} for {repo}@{revision}, not a commit sha")
    return sha


def _checked(value: object, pattern: re.Pattern[str], what: str, kind: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise OperationFailed(f"resolver answered {value!r:.80} for {what}, not {kind}", "not written")
    return value


@dataclass(frozen=True)
class LockResult:
    resolved: list[Pin]
    failed: list[tuple[str, str]]
    changed: bool


def write_locks(
    profiles: Iterable[Profile],
    directory: Path | None = None,
    image_resolver: ImageResolver = resolve_image_digest,
    model_resolver: ModelResolver = resolve_model_sha,
) -> LockResult:
    """Resolve every pin of `profiles`; write what resolved, keep the rest as it was.

    A resolver's answer is written only when it is a well-formed digest (images) or commit sha
    (models); anything else is reported as a failure for that pin, never written.
    """
    root = directory or profiles_dir()
    images = load_lock_section(root / IMAGES_LOCK, "images")
    models = load_lock_section(root / MODELS_LOCK, "models")
    before = (yaml.safe_dump(images, sort_keys=True), yaml.safe_dump(models, sort_keys=True))
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    resolved: list[Pin] = []
    failed: list[tuple[str, str]] = []
    seen: set[str] = set()
    for profile in profiles:
        spec = profile.image
        if not _is_local_image(spec.ref) and "image:" + spec.lock_key not in seen:
            seen.add("image:" + spec.lock_key)
            try:
                digest = _checked(image_resolver(spec.ref), DIGEST_RE, spec.ref, "a sha256 digest")
                old = images.get(spec.lock_key, {})
                if old.get("digest") != digest or old.get("ref") != spec.ref:
                    images[spec.lock_key] = {"ref": spec.ref, "digest": digest, "resolved_at": now}
                resolved.append(Pin("image", spec.lock_key, spec.ref, digest, "locked"))
            except Gh200Error as err:
                failed.append((spec.ref, err.message))
        wanted = [(profile.model.lock_key, profile.model.repo, profile.model.revision)]
        if profile.model.graft:
            g = profile.model.graft
            wanted.append((g.lock_key, g.mtp_from, g.revision))
        for key, repo, revision in wanted:
            if _is_local_model(repo) or "model:" + key in seen:
                continue
            seen.add("model:" + key)
            try:
                sha = _checked(model_resolver(repo, revision), SHA_RE, f"{repo}@{revision}", "a commit sha")
                old = models.get(key, {})
                if old.get("sha") != sha or old.get("repo") != repo or old.get("revision") != revision:
                    models[key] = {"repo": repo, "revision": revision, "sha": sha, "resolved_at": now}
                resolved.append(Pin("model", key, repo, sha, "locked"))
            except Gh200Error as err:
                failed.append((f"{repo}@{revision}", err.message))
    after = (yaml.safe_dump(images, sort_keys=True), yaml.safe_dump(models, sort_keys=True))
    changed = before != after
    if changed:
        atomic_write_text(
            root / IMAGES_LOCK, HEADER + yaml.safe_dump({"schema": 1, "images": images}, sort_keys=True)
        )
        atomic_write_text(
            root / MODELS_LOCK, HEADER + yaml.safe_dump({"schema": 1, "models": models}, sort_keys=True)
        )
    return LockResult(resolved, failed, changed)
