"""Load profiles and stacks from YAML: `extends:` inheritance, schema errors as one line each."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gh200.errors import ProfileError
from gh200.paths import profiles_dir
from gh200.profiles.schema import HostSpec, Profile, Stack

MAX_EXTENDS_DEPTH = 8
HOSTS_SUBDIR = "hosts"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,99}")


class _Loader(yaml.SafeLoader):
    """SafeLoader whose value errors carry a position, like every other YAML error.

    PyYAML raises bare ValueError/TypeError/KeyError for scalars it resolves but cannot build
    (`2026-13-01` as a date, `!!int abc`, `!!bool maybe`), without saying where.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, LookupError, AttributeError, ArithmeticError) as err:
            value = f" {node.value!r}" if isinstance(node, yaml.ScalarNode) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read value{value} as {node.tag.rsplit(':', 1)[-1]}", node.start_mark
            ) from err


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ProfileError(f"{path}: cannot read ({err.strerror})", "check the path") from err
    except UnicodeDecodeError as err:
        raise ProfileError(f"{path}: not UTF-8 text", "save the profile as UTF-8 YAML") from err
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no arbitrary objects
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        constructing = isinstance(err, yaml.constructor.ConstructorError)
        fix = "quote the value" if constructing else "fix the YAML syntax"
        raise ProfileError(f"{path}:{where}: {problem}", fix) from err
    except RecursionError as err:
        raise ProfileError(f"{path}: YAML nested too deeply", "flatten the document") from err
    if data is None:
        raise ProfileError(f"{path}: the file is empty", "write the profile's fields (see profiles/)")
    if not isinstance(data, dict):
        raise ProfileError(
            f"{path}: top level is {type(data).__name__}, not a mapping", "write key: value pairs"
        )
    for key in data:
        if not isinstance(key, str):
            raise ProfileError(f"{path}: key {key!r} is not a string", "quote the key")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; lists and scalars in `override` replace the base's."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def profile_path(name_or_path: str | Path, directory: Path | None = None) -> Path:
    """A profile name in profiles/ (or `directory`), or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    root = directory or profiles_dir()
    path = root / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(list_names(root)) or "none"
        raise ProfileError(f"no profile named {name_or_path!r} in {root}", f"use one of: {known}")
    return path


def list_names(directory: Path | None = None) -> list[str]:
    root = directory or profiles_dir()
    return sorted(p.stem for p in root.glob("*.yaml"))


def resolve_raw(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The profile's mapping with its `extends:` chain merged in (base first)."""
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not NAME_RE.fullmatch(parent):
        raise ProfileError(
            f"{path}: extends must be a profile name, not {parent!r:.60}", "write extends: <profile-name>"
        )
    if len(_seen) >= MAX_EXTENDS_DEPTH or path.resolve() in _seen:
        chain = " -> ".join(p.stem for p in (*_seen, path.resolve()))
        raise ProfileError(f"{path}: extends loops or nests too deep ({chain})", "break the extends cycle")
    parent_path = path.parent / f"{parent}.yaml"
    if not parent_path.exists():
        raise ProfileError(
            f"{path}: extends {parent!r}, which does not exist in {path.parent}", "fix the name"
        )
    base = resolve_raw(parent_path, (*_seen, path.resolve()))
    return deep_merge(base, data)


def _format_validation(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "missing":
        message = "required field is missing"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{path}: {field}: {message}{more}"


def _fix_for(err: ValidationError) -> str:
    kind = err.errors()[0]["type"]
    if kind == "extra_forbidden":
        return "remove it or correct its spelling (the schema is in profiles/README.md)"
    if kind == "missing":
        return "add the field"
    return "correct the value"


def load_any(name_or_path: str | Path, directory: Path | None = None) -> Profile | Stack:
    path = profile_path(name_or_path, directory)
    raw = resolve_raw(path)
    try:
        if raw.get("kind") == "stack":
            return Stack.model_validate(raw)
        return Profile.model_validate(raw)
    except ValidationError as err:
        raise ProfileError(_format_validation(path, err), _fix_for(err)) from err
    except (TypeError, ValueError, RecursionError) as err:
        raise ProfileError(f"{path}: {err}", "correct the profile") from err


def load_profile(name_or_path: str | Path, directory: Path | None = None) -> Profile:
    loaded = load_any(name_or_path, directory)
    if isinstance(loaded, Stack):
        raise ProfileError(f"{loaded.name} is a stack, not a profile", "name one of its profiles")
    return loaded


def load_stack(name_or_path: str | Path, directory: Path | None = None) -> Stack:
    loaded = load_any(name_or_path, directory)
    if not isinstance(loaded, Stack):
        raise ProfileError(f"{loaded.name} is a profile, not a stack", "name a stack (kind: stack)")
    return loaded


def load_host(name: str, directory: Path | None = None) -> HostSpec:
    """Host description `name` from <directory>/hosts/, else from the bundle's profiles/hosts/.

    A profile kept outside profiles/ (a user's own file, the test suite's) still runs on the
    bundle's hosts unless its directory describes its own.
    """
    roots = list(dict.fromkeys(d / HOSTS_SUBDIR for d in (directory or profiles_dir(), profiles_dir())))
    path = next((r / f"{name}.yaml" for r in roots if (r / f"{name}.yaml").is_file()), None)
    if path is None:
        known = sorted({p.stem for r in roots for p in r.glob("*.yaml")})
        where = " or ".join(str(r) for r in roots)
        raise ProfileError(
            f"no host description {name!r} in {where}", f"set host: to one of: {', '.join(known) or 'none'}"
        )
    raw = _read_yaml(path)
    try:
        return HostSpec.model_validate(raw)
    except ValidationError as err:
        raise ProfileError(_format_validation(path, err), _fix_for(err)) from err
