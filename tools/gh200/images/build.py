"""Build the bundle's images with the Docker SDK (Docker or Podman), tagged by recipe content.

`ensure_image(client, "llama_cpp")` returns `localhost/gh200-llama_cpp:<hash>` and builds only when no
image carries that recipe hash yet. Upstream sources come from PyPI through the host (sha256 checked),
registry bases must be pinned by digest in profiles/images.lock unless `unlocked` is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound

from gh200 import __version__
from gh200.engine import BASE_IMAGE, ensure_base_image
from gh200.errors import BadInput, LockError, OperationFailed
from gh200.fsutil import file_lock
from gh200.images.lock import find_locked, images_lock_path
from gh200.images.pypi import SdistPin, SourceNotPinned, fetch_sdist
from gh200.images.recipe import Recipe, content_hash, load_recipe, recipe_names, tree_hash
from gh200.output import console
from gh200.output import progress as progress_bar
from gh200.paths import cache_dir, containers_dir
from gh200.profiles.flags import rendered_server_args
from gh200.profiles.render import LABEL_PREFIX

LABEL = LABEL_PREFIX
# Podman: "[1/2] STEP 5/9: RUN ..."; Docker: "Step 5/9 : RUN ...".
STEP = re.compile(r"(?i)^(?:\[(\d+)/(\d+)\]\s*)?step\s+(\d+)\s*/\s*(\d+)")
PLATFORM = re.compile(r"^linux/(amd64|arm64)$")


class ImageBuildFailed(OperationFailed):
    """The engine refused or failed the build; the message carries the failing step's output."""


@dataclass
class BaseChoice:
    ref: str  # what FROM gets
    identity: str  # what the content hash covers: a digest or a local image id
    pinned: bool


@dataclass
class BuildPlan:
    recipe: Recipe
    tag: str
    recipe_hash: str
    base: BaseChoice
    platform: str | None
    build_args: dict[str, str]
    labels: dict[str, str]
    sdists: list[tuple[SdistPin, str]] = field(default_factory=list)  # pin, file name in sources/


@dataclass
class BuildResult:
    name: str
    tag: str
    recipe_hash: str
    built: bool
    seconds: float
    size_bytes: int
    base: str
    platform: str | None
    labels: dict[str, str]
    log: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tag": self.tag,
            "recipe_hash": self.recipe_hash,
            "changed": self.built,
            "built": self.built,
            "seconds": round(self.seconds, 1),
            "size_bytes": self.size_bytes,
            "base": self.base,
            "platform": self.platform,
            "labels": self.labels,
            "log": self.log,
        }


def known_sdist_pins() -> dict[tuple[str, str], str]:
    """(normalized package, version) -> sha256 from every recipe and the vLLM patch series."""
    from packaging.utils import canonicalize_name

    pins: dict[tuple[str, str], str] = {}
    for name in recipe_names():
        for src in load_recipe(name).sources:
            pins[(canonicalize_name(src.package), src.version)] = src.sha256
    with contextlib.suppress(BadInput):
        from gh200.images.patches import load_series

        for version, sha in load_series().vllm_sdists.items():
            pins[("vllm", version)] = sha
    return pins


def sdist_path(package: str, version: str, *, progress: bool = False) -> Path:
    """The cached, sha256-verified sdist of package==version (downloaded from PyPI on first use)."""
    from packaging.utils import canonicalize_name

    sha = known_sdist_pins().get((canonicalize_name(package), version))
    if sha is None:
        raise SourceNotPinned(
            f"{package}=={version} is not pinned by any recipe or the patch series",
            "add it with its sha256 to a containers/*/recipe.yaml or containers/vllm/patches/series.yaml",
        )
    return fetch_sdist(SdistPin(package, version, sha), progress=progress)


def engine_platform(client: docker.DockerClient) -> str | None:
    """The engine's native platform (linux/amd64, linux/arm64), or None if it does not say."""
    try:
        info = client.version()
    except (DockerException, AttributeError):
        return None
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(str(info.get("Arch", "")), str(info.get("Arch", "")))
    return f"{info.get('Os', 'linux')}/{arch}" if arch else None


def _image_id(client: docker.DockerClient, ref: str) -> str | None:
    try:
        return str(client.images.get(ref).id)
    except ImageNotFound:
        return None


def resolve_base(
    client: docker.DockerClient,
    recipe: Recipe,
    *,
    unlocked: bool,
    base: str | None = None,
    create_local: bool = True,
) -> BaseChoice:
    """What the recipe is built FROM, and whether that is pinned (create_local: build our own base)."""
    if base is not None:
        # An explicit base (tests' stand-ins, a user's own mirror): pinned if local or by digest.
        local_id = _image_id(client, base)
        if local_id:
            return BaseChoice(base, local_id, True)
        if "@sha256:" in base:
            return BaseChoice(base, base.split("@", 1)[1], True)
        if not unlocked:
            raise LockError(f"base {base} is neither a local image nor pinned by digest", "pass --unlocked")
        return BaseChoice(base, f"unlocked:{base}", False)
    spec = recipe.base
    if spec.local:
        if spec.local == BASE_IMAGE and create_local:
            ensure_base_image(client)
        local_id = _image_id(client, spec.local)
        if not local_id:
            raise OperationFailed(f"local base image {spec.local} is missing", "build it first")
        return BaseChoice(spec.local, local_id, True)
    assert spec.ref is not None
    locked = find_locked(spec.ref, spec.lock_key)
    if locked.state == "locked" and locked.value:
        return BaseChoice(locked.pinned_ref, locked.value, True)
    if not unlocked:
        raise LockError(
            f"base image {spec.ref} of recipe {recipe.name} has no digest in {images_lock_path()}"
            + (f" (lock key {spec.lock_key})" if spec.lock_key else ""),
            "run `gh200 lock` on a host that reaches the registry, or pass --unlocked to build from the tag",
        )
    return BaseChoice(spec.ref, f"unlocked:{spec.ref}", False)


def check_request(name: str, *, platform: str | None = None, unlocked: bool = False) -> Recipe:
    """What a build request can be refused for without an engine: recipe, platform, upstream pins.

    Runs before the engine is reached (which may start Podman or debootstrap a base image).
    """
    recipe = load_recipe(name)
    if platform is not None and not PLATFORM.match(platform):
        raise BadInput(f"unsupported platform {platform!r}", "use linux/amd64 or linux/arm64")
    if platform is not None and platform not in recipe.platforms:
        raise BadInput(
            f"recipe {name} does not build for {platform}", f"use one of: {', '.join(recipe.platforms)}"
        )
    for up in recipe.upstream:
        if up.sha256 is None and not unlocked:
            raise LockError(
                f"recipe {name}: {up.name} {up.commit[:12]} has no archive sha256 pinned",
                f"on a host that reaches it, compute sha256 of {up.url.format(commit=up.commit)} and set "
                f"`sha256:` in {recipe.directory / 'recipe.yaml'}, or pass --unlocked",
            )
    return recipe


def plan_build(
    client: docker.DockerClient,
    name: str,
    *,
    platform: str | None = None,
    unlocked: bool = False,
    base: str | None = None,
    build_args: dict[str, str] | None = None,
    create_local: bool = True,
) -> BuildPlan:
    recipe = check_request(name, platform=platform, unlocked=unlocked)
    native = engine_platform(client)
    if platform is None and base is None and native is not None and native not in recipe.platforms:
        # e.g. the arm64-only vLLM image on an x86 host: say so rather than fail mid-build.
        raise BadInput(
            f"recipe {name} builds for {', '.join(recipe.platforms)}, this engine runs {native}",
            f"on the workstation: gh200 images build {name} --platform {recipe.platforms[0]}",
        )
    chosen = resolve_base(client, recipe, unlocked=unlocked, base=base, create_local=create_local)
    args = dict(recipe.build_args)
    labels = {
        f"{LABEL}.recipe": recipe.name,
        f"{LABEL}.bundle-version": __version__,
        f"{LABEL}.base": chosen.ref,
        f"{LABEL}.base-pinned": str(chosen.pinned).lower(),
        "org.opencontainers.image.title": recipe.image.rsplit("/", 1)[-1],
        "org.opencontainers.image.version": __version__,
    }
    sdists: list[tuple[SdistPin, str]] = []
    for src in recipe.sources:
        pin = SdistPin(src.package, src.version, src.sha256)
        if src.version_arg:
            args[src.version_arg] = src.version
        if src.sha256_arg:
            args[src.sha256_arg] = src.sha256
        labels[f"{LABEL}.upstream.{src.package}"] = f"{src.version} sha256:{src.sha256}"
        sdists.append((pin, ""))
    for up in recipe.upstream:
        args[up.commit_arg] = up.commit
        args[up.sha256_arg] = up.sha256 or ""
        labels[f"{LABEL}.upstream.{up.name}"] = f"{up.commit}" + (f" sha256:{up.sha256}" if up.sha256 else "")
    if recipe.check_server_args:
        check = recipe.check_server_args
        args[check.arg] = "\n".join(shlex.join(a) for a in rendered_server_args(check.engine))
    if recipe.patch_series:
        labels[f"{LABEL}.patch-series"] = tree_hash(recipe.directory / recipe.patch_series)
    args.update(build_args or {})
    args[recipe.base.arg] = chosen.ref
    # The effective platform: `--platform linux/arm64` on an arm64 host names the same image as none.
    effective = platform or native or ""
    recipe_hash = content_hash(recipe, base_identity=chosen.identity, platform=effective, build_args=args)
    labels[f"{LABEL}.recipe-hash"] = recipe_hash
    labels[f"{LABEL}.platform"] = effective
    tag = f"{recipe.image}:{recipe_hash[:16]}"
    return BuildPlan(recipe, tag, recipe_hash, chosen, platform, args, labels, sdists)


def _existing(client: docker.DockerClient, plan: BuildPlan) -> Any | None:
    try:
        image = client.images.get(plan.tag)
    except ImageNotFound:
        return None
    labels = image.labels or {}
    return image if labels.get(f"{LABEL}.recipe-hash") == plan.recipe_hash else None


def _make_context(plan: BuildPlan, progress: bool) -> Path:
    root = cache_dir() / "images" / "context"
    root.mkdir(parents=True, exist_ok=True)
    ctx = root / f"{plan.recipe.name}-{os.getpid()}-{time.monotonic_ns()}"
    shutil.copytree(plan.recipe.directory, ctx, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if plan.sdists:
        (ctx / "sources").mkdir(exist_ok=True)
        for pin, _ in plan.sdists:
            path = fetch_sdist(pin, progress=progress)
            target = ctx / "sources" / path.name
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
    return ctx


def _stream_build(
    client: docker.DockerClient, plan: BuildPlan, ctx: Path, log_path: Path, progress: bool
) -> None:
    """Run the build, streaming its output to the log (and the screen), raising on failure."""
    tail: list[str] = []
    error: str | None = None
    with progress_bar(progress) as bar, open(log_path, "w") as log:
        # A number, not None: the shared progress columns format the total as a number.
        task = bar.add_task(f"build {plan.recipe.name}", total=1)
        try:
            stream = client.api.build(
                path=str(ctx),
                dockerfile=plan.recipe.containerfile,
                tag=plan.tag,
                buildargs=plan.build_args,
                labels=plan.labels,
                platform=plan.platform,
                rm=True,
                forcerm=True,
                decode=True,
            )
            for chunk in stream:
                text = str(chunk.get("stream") or chunk.get("status") or "")
                if chunk.get("error") or chunk.get("errorDetail"):
                    detail = chunk.get("errorDetail") or {}
                    error = str(chunk.get("error") or detail.get("message") or chunk)
                    text = text + error + "\n"
                if not text:
                    continue
                log.write(text)
                log.flush()
                for line in text.splitlines():
                    if not line.strip():
                        continue
                    tail = [*tail[-39:], line]
                    step = STEP.search(line)
                    if step:
                        stage = f" stage {step.group(1)}/{step.group(2)}" if step.group(1) else ""
                        bar.update(
                            task,
                            description=f"build {plan.recipe.name}{stage}",
                            completed=int(step.group(3)) - 1,
                            total=int(step.group(4)),
                        )
                    if progress:
                        console.print(f"[dim]{line}[/]", highlight=False, markup=True, soft_wrap=True)
        except (APIError, DockerException) as err:
            error = str(err)
    if error is not None or not _existing_tag(client, plan.tag):
        reason = _failure_summary(tail, error)
        raise ImageBuildFailed(f"building {plan.recipe.name} failed: {reason}", f"full output in {log_path}")


def _existing_tag(client: docker.DockerClient, tag: str) -> bool:
    return _image_id(client, tag) is not None


def _failure_summary(tail: list[str], error: str | None) -> str:
    """The lines a reader needs: lines that start with `error:` (our scripts' style), else the last few."""
    ours = [line.strip() for line in tail if line.strip().lower().startswith("error:")]
    picked = ours[-3:] if ours else [line.strip() for line in tail[-4:]]
    if error and all(error.strip() not in p for p in picked):
        picked.append(error.strip())
    return " | ".join(picked)[:1500]


def build_image(
    client: docker.DockerClient,
    name: str,
    *,
    platform: str | None = None,
    unlocked: bool = False,
    progress: bool = True,
    base: str | None = None,
    build_args: dict[str, str] | None = None,
    force: bool = False,
) -> BuildResult:
    """Build recipe `name` unless an image with the same recipe hash exists; report what happened."""
    plan = plan_build(client, name, platform=platform, unlocked=unlocked, base=base, build_args=build_args)
    lock_name = hashlib.sha256(plan.tag.encode()).hexdigest()[:16]
    with file_lock(cache_dir() / "images" / "locks" / f"{lock_name}.lock"):
        image = None if force else _existing(client, plan)
        built = image is None
        started = time.monotonic()
        log_path: Path | None = None
        if image is None:
            logs = cache_dir() / "images" / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            log_path = logs / f"{name}-{plan.recipe_hash[:16]}.log"
            ctx = _make_context(plan, progress)
            try:
                _stream_build(client, plan, ctx, log_path, progress)
            finally:
                shutil.rmtree(ctx, ignore_errors=True)
            image = client.images.get(plan.tag)
        seconds = time.monotonic() - started
    return BuildResult(
        name=name,
        tag=plan.tag,
        recipe_hash=plan.recipe_hash,
        built=built,
        seconds=seconds if built else 0.0,
        size_bytes=int(image.attrs.get("Size") or 0),
        base=plan.base.ref,
        platform=plan.platform,
        labels=dict(image.labels or {}),
        log=str(log_path) if log_path else None,
    )


def ensure_image(
    client: docker.DockerClient,
    name: str,
    *,
    platform: str | None = None,
    unlocked: bool = False,
    progress: bool = True,
) -> str:
    """The tag of recipe `name`'s image, built only if the recipe's content changed since the last build."""
    return build_image(client, name, platform=platform, unlocked=unlocked, progress=progress).tag


def list_images(client: docker.DockerClient) -> list[dict[str, Any]]:
    """Every recipe, its current hash, and the images built from it (matching the current recipe or not)."""
    rows: list[dict[str, Any]] = []
    for name in recipe_names():
        recipe = load_recipe(name)
        current: str | None
        note = ""
        try:
            # No base is built and no platform refused just to list: compare what exists.
            native = engine_platform(client)
            platform = None if native in recipe.platforms else recipe.platforms[0]
            plan = plan_build(client, name, unlocked=True, platform=platform, create_local=False)
            current = plan.recipe_hash
            if not plan.base.pinned:
                note = "base not pinned in images.lock"
        except (BadInput, OperationFailed) as err:
            current, note = None, err.one_line()
        images = client.images.list(filters={"label": f"{LABEL}.recipe={name}"})
        built = []
        for image in images:
            if not image.tags:
                continue  # an older build whose tag moved on: layers kept for the cache only
            labels = image.labels or {}
            built.append(
                {
                    "id": image.short_id,
                    "tags": sorted(image.tags),
                    "recipe_hash": labels.get(f"{LABEL}.recipe-hash"),
                    "matches_recipe": current is not None and labels.get(f"{LABEL}.recipe-hash") == current,
                    "created": image.attrs.get("Created"),
                    "size_bytes": int(image.attrs.get("Size") or 0),
                    "bundle_version": labels.get(f"{LABEL}.bundle-version"),
                }
            )
        rows.append(
            {
                "name": name,
                "image": recipe.image,
                "current_hash": current,
                "current_tag": f"{recipe.image}:{current[:16]}" if current else None,
                "built": sorted(built, key=lambda b: str(b["created"]), reverse=True),
                "up_to_date": any(b["matches_recipe"] for b in built),
                "note": note,
                "directory": str(containers_dir() / name),
            }
        )
    return rows
