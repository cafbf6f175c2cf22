"""Where things live: the bundle's own files and the cache shared by tests, CI and the CLI."""

from __future__ import annotations

import os
from pathlib import Path


def bundle_root() -> Path:
    """The checkout that holds profiles/, containers/ and ansible/ (GH200_HOME overrides)."""
    env = os.environ.get("GH200_HOME")
    if env:
        return Path(env).resolve()
    # tools/gh200/paths.py -> repository root; the package is installed editable from the checkout.
    return Path(__file__).resolve().parents[2]


def profiles_dir() -> Path:
    return bundle_root() / "profiles"


def containers_dir() -> Path:
    return bundle_root() / "containers"


def ansible_dir() -> Path:
    return bundle_root() / "ansible"


def cache_dir() -> Path:
    """$GH200_CACHE, else $XDG_CACHE_HOME/gh200, else ~/.cache/gh200; created on first use."""
    env = os.environ.get("GH200_CACHE")
    if env:
        path = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "gh200"
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_dir() -> Path:
    """Results and run records: $GH200_STATE, else $XDG_STATE_HOME/gh200."""
    env = os.environ.get("GH200_STATE")
    if env:
        path = Path(env)
    else:
        xdg = os.environ.get("XDG_STATE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".local" / "state") / "gh200"
    path.mkdir(parents=True, exist_ok=True)
    return path
