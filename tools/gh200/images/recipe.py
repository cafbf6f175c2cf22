"""Image recipes: containers/<name>/ with a Containerfile and a recipe.yaml saying how to build it.

The recipe's content hash (every file in the directory, the resolved base, the upstream pins, the
build arguments and the platform) names the image tag, so an unchanged recipe is never rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gh200.errors import BadInput
from gh200.paths import containers_dir

RECIPE_FILE = "recipe.yaml"
# Not part of a recipe's content: interpreter droppings, and the notes (no Containerfile copies them).
IGNORED = {"__pycache__", ".pytest_cache", ".mypy_cache", "README.md"}


class UnknownRecipe(BadInput):
    """No containers/<name>/recipe.yaml."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseSpec(_Strict):
    """The FROM image: built here (`local`) or a registry ref pinned through images.lock."""

    arg: str = "BASE"
    local: str | None = None
    ref: str | None = None
    lock_key: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> BaseSpec:
        if (self.local is None) == (self.ref is None):
            raise ValueError("base needs exactly one of `local` or `ref`")
        return self


class SdistSource(_Strict):
    """An sdist from PyPI that the host downloads, checks and puts in the build context."""

    package: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    version_arg: str | None = None
    sha256_arg: str | None = None


class UpstreamSource(_Strict):
    """A source archive the build itself downloads (the commit and the archive's sha256 are build args)."""

    name: str
    url: str
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    commit_arg: str
    sha256_arg: str


class ServerArgsCheck(_Strict):
    """The image build runs the llama-server it built on every argument list our renders emit for
    `engine`'s profiles (passed, one shell-quoted line each, as build arg `arg`)."""

    engine: Literal["llama_cpp", "ik_llama"]
    arg: str = "SERVER_ARGS"


class Recipe(_Strict):
    name: str
    image: str
    description: str = ""
    base: BaseSpec
    platforms: list[str] = Field(default_factory=lambda: ["linux/amd64", "linux/arm64"])
    sources: list[SdistSource] = Field(default_factory=list)
    upstream: list[UpstreamSource] = Field(default_factory=list)
    build_args: dict[str, str] = Field(default_factory=dict)
    check_server_args: ServerArgsCheck | None = None
    patch_series: str | None = None  # directory (relative) whose content hash becomes a label
    containerfile: str = "Containerfile"

    @property
    def directory(self) -> Path:
        return containers_dir() / self.name


def recipe_names() -> list[str]:
    root = containers_dir()
    return sorted(p.parent.name for p in root.glob(f"*/{RECIPE_FILE}"))


def load_recipe(name: str) -> Recipe:
    path = containers_dir() / name / RECIPE_FILE
    if "/" in name or not path.exists():
        known = ", ".join(recipe_names()) or "none"
        raise UnknownRecipe(f"no image recipe {name!r}", f"use one of: {known}")
    try:
        data = yaml.safe_load(path.read_text())
        recipe = Recipe.model_validate(data)
    except (yaml.YAMLError, ValidationError) as err:
        first = str(err).strip().splitlines()
        raise BadInput(f"{path} is not a valid recipe: {' '.join(first[:3])}", "fix the recipe file") from err
    if recipe.name != name:
        raise BadInput(f"{path} says name {recipe.name!r}", f"set name: {name}")
    if not (recipe.directory / recipe.containerfile).exists():
        raise BadInput(f"{recipe.directory / recipe.containerfile} is missing", "restore the Containerfile")
    return recipe


def recipe_files(directory: Path) -> list[Path]:
    """Every file of a recipe directory, sorted, without caches."""
    out: list[Path] = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part in IGNORED for part in rel.parts) or not path.is_file():
            continue
        out.append(path)
    return out


def tree_hash(directory: Path) -> str:
    """sha256 over relative paths, modes (the executable bit matters in an image) and contents."""
    digest = hashlib.sha256()
    for path in recipe_files(directory):
        rel = path.relative_to(directory).as_posix()
        executable = "x" if path.stat().st_mode & 0o111 else "-"
        digest.update(f"{rel}\0{executable}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def content_hash(
    recipe: Recipe, *, base_identity: str, platform: str | None, build_args: dict[str, str]
) -> str:
    """The recipe's identity: its files, what it is built FROM, its pins, its arguments, the platform."""
    facts: dict[str, Any] = {
        "files": tree_hash(recipe.directory),
        "base": base_identity,
        "platform": platform or "",
        "build_args": dict(sorted(build_args.items())),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
