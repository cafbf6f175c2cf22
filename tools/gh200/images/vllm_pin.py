"""Which vLLM the vllm image recipe builds, and moving that pin to a new version.

The pin lives in three files of containers/vllm: recipe.yaml (the base image `vllm/vllm-openai:
v<version>-aarch64` and its images.lock key), the Containerfile's default BASE, and
patches/series.yaml (the sdist sha256 under `vllm_sdists`, and each entry's `vllm:` list, which the
image build's apply step requires to name the image's vLLM). `repinned_files` computes all three new
texts without writing; `staged_bundle` shows them to a build without touching the bundle; `promote`
writes them (each file atomically) once an upgrade has succeeded. The staged and promoted recipe
directories are byte-identical, so the image built from the stage carries the tag that
`gh200 images build vllm` computes after promotion.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from gh200.errors import BadInput, OperationFailed
from gh200.fsutil import atomic_write_text
from gh200.images.patches import Series, series_path, vllm_recipe_dir
from gh200.images.recipe import RECIPE_FILE, load_recipe
from gh200.paths import bundle_root, cache_dir

BASE_REF = re.compile(r"^vllm/vllm-openai:v(?P<version>[^-@:]+)-aarch64$")


def base_ref(version: str) -> str:
    return f"vllm/vllm-openai:v{version}-aarch64"


def lock_key(version: str) -> str:
    return f"vllm-openai-{version}-aarch64"


def current_vllm_version() -> str:
    """The vLLM version the vllm recipe builds, read from its base image reference."""
    ref = load_recipe("vllm").base.ref or ""
    match = BASE_REF.match(ref)
    if not match:
        raise BadInput(
            f"{vllm_recipe_dir() / RECIPE_FILE}: base ref {ref!r} is not vllm/vllm-openai:v<version>-aarch64",
            "restore the recipe's base ref",
        )
    return match.group("version")


def _replace_once(text: str, old: str, new: str, where: Path) -> str:
    if text.count(old) != 1:
        raise OperationFailed(
            f"{where} names {old!r} {text.count(old)} times, not once", "fix the file by hand"
        )
    return text.replace(old, new)


def _repinned_series(text: str, version: str, sha256: str, listed: set[str]) -> str:
    """series.yaml with `version: sha256` under vllm_sdists and `version` in each listed entry's
    `vllm:`; comments and layout kept (line edits, checked by re-reading the result)."""
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip() == "vllm_sdists:")
    except StopIteration:
        raise OperationFailed(f"{series_path()} has no `vllm_sdists:` block", "restore it") from None
    end = start + 1
    while end < len(lines) and lines[end].startswith("  ") and lines[end].strip():
        end += 1
    if version not in Series.model_validate(yaml.safe_load(text)).vllm_sdists:
        lines.insert(end, f'  "{version}": {sha256}\n')
    entry: str | None = None
    seen: set[str] = set()
    for i, line in enumerate(lines):
        found = re.match(r"^  - id: (\S+)\s*$", line)
        if found:
            entry = found.group(1)
            continue
        listing = re.match(r"^(    vllm: )(\[.*\])\s*$", line)
        if listing and entry in listed:
            versions = [str(v) for v in yaml.safe_load(listing.group(2))]
            if version not in versions:
                lines[i] = f"{listing.group(1)}{json.dumps([*versions, version])}\n"
            seen.add(entry)
    if seen != listed:
        missing = ", ".join(sorted(listed - seen))
        raise OperationFailed(f"{series_path()}: no one-line `vllm: [...]` for {missing}", "fix by hand")
    out = "".join(lines)
    # The result must read back as exactly the intended series.
    series = Series.model_validate(yaml.safe_load(out))
    if (
        series.vllm_sdists.get(version) != sha256
        or {p.id for p in series.patches if version in p.vllm} != listed
    ):
        raise OperationFailed(
            f"{series_path()}: re-pinning vLLM {version} did not give the intended series",
            f"pin {version} by hand (sha256 {sha256})",
        )
    return out


def repinned_files(version: str, sha256: str, listed: set[str]) -> dict[Path, str]:
    """The recipe directory's files (relative paths) that change, with their new text."""
    current = current_vllm_version()
    directory = vllm_recipe_dir()
    recipe = directory / RECIPE_FILE
    text = recipe.read_text()
    text = _replace_once(text, base_ref(current), base_ref(version), recipe)
    text = _replace_once(text, lock_key(current), lock_key(version), recipe)
    text = text.replace(f"vLLM {current} ", f"vLLM {version} ")  # the description
    containerfile = directory / load_recipe("vllm").containerfile
    image_text = _replace_once(
        containerfile.read_text(),
        f"ARG BASE={base_ref(current)}",
        f"ARG BASE={base_ref(version)}",
        containerfile,
    )
    series = series_path()
    return {
        recipe.relative_to(directory): text,
        containerfile.relative_to(directory): image_text,
        series.relative_to(directory): _repinned_series(series.read_text(), version, sha256, listed),
    }


@contextlib.contextmanager
def staged_bundle(files: dict[Path, str]) -> Iterator[Path]:
    """A bundle root (for GH200_HOME) that is this one except that containers/vllm has `files`.

    Everything else is a symlink into the real bundle (profiles/ and images.lock included)."""
    real = bundle_root()
    stage = Path(tempfile.mkdtemp(prefix="upgrade-stage-", dir=cache_dir()))
    try:
        for child in real.iterdir():
            if child.name != "containers":
                os.symlink(child, stage / child.name)
        (stage / "containers").mkdir()
        for recipe in (real / "containers").iterdir():
            if recipe.name != "vllm":
                os.symlink(recipe, stage / "containers" / recipe.name)
        shutil.copytree(
            real / "containers" / "vllm",
            stage / "containers" / "vllm",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        for rel, text in files.items():
            (stage / "containers" / "vllm" / rel).write_text(text)
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def bundle_home(root: Path) -> Iterator[None]:
    """GH200_HOME pointed at root for the block (the build reads recipes through it)."""
    before = os.environ.get("GH200_HOME")
    os.environ["GH200_HOME"] = str(root)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("GH200_HOME", None)
        else:
            os.environ["GH200_HOME"] = before


def promote(files: dict[Path, str]) -> list[str]:
    """Write the new pin into the bundle; series.yaml first (a version added to the series is
    harmless on its own), the recipe last (it switches the build). Returns the paths written."""
    directory = vllm_recipe_dir()
    order = sorted(files, key=lambda rel: rel.name != "series.yaml")
    for rel in order:
        # Keep the mode: the recipe hash covers the executable bit.
        atomic_write_text(directory / rel, files[rel], mode=(directory / rel).stat().st_mode & 0o7777)
    return [str(directory / rel) for rel in order]
