"""A model directory on disk: config.json, the safetensors index and the shard headers."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gh200.checkpoints.layout import ModelConfig
from gh200.checkpoints.safetensors_io import SafetensorsHeader, read_header
from gh200.errors import BadInput

INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
DEFAULT_MODEL_STORE = Path("/srv/models")


class NotACheckpoint(BadInput):
    """A directory without safetensors weights, or with a broken config/index."""


def model_store() -> Path:
    """Where models live: $GH200_MODELS, else /srv/models."""
    env = os.environ.get("GH200_MODELS")
    return Path(env) if env else DEFAULT_MODEL_STORE


def model_dir(repo: str, store: Path | None = None) -> Path:
    """The directory a repo is fetched into: STORE/OWNER--NAME (as `gh200.profiles.render` names it,
    so that deploy finds it); its manifest records the revision."""
    return (store or model_store()) / repo.replace("/", "--")


def _interned(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # An index maps ~250k tensor names to ~100 shard names: share those strings (tens of MB saved).
    return {k: sys.intern(v) if isinstance(v, str) else v for k, v in pairs}


def _load_json(path: Path, what: str) -> tuple[dict[str, Any], bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotACheckpoint(f"{path}: missing {what}", "point at a complete model directory") from exc
    try:
        obj = json.loads(data, object_pairs_hook=_interned)
    except json.JSONDecodeError as exc:
        raise NotACheckpoint(
            f"{path}: {what} is not valid JSON ({exc.msg} at line {exc.lineno})", "re-fetch it"
        ) from exc
    if not isinstance(obj, dict):
        raise NotACheckpoint(f"{path}: {what} is not a JSON object", "re-fetch it")
    return obj, data


@dataclass
class LocalCheckpoint:
    root: Path
    config: ModelConfig | None
    config_bytes: bytes | None
    index: dict[str, Any] | None
    index_sha256: str | None  # the index file itself is not kept: it can be tens of MB
    shards: list[str]

    @property
    def weight_map(self) -> dict[str, str]:
        if self.index is None:
            return {}
        wm = self.index.get("weight_map")
        return wm if isinstance(wm, dict) else {}

    def header(self, shard: str) -> SafetensorsHeader:
        return read_header(self.root / shard)

    def headers(self) -> Iterator[SafetensorsHeader]:
        """Shard headers one at a time (a 750B model has ~100 shards and ~250k tensors: never all at once)."""
        for shard in self.shards:
            yield self.header(shard)


def _check_dir(root: Path) -> None:
    if not root.exists():
        raise BadInput(f"{root}: no such directory", "check the path")
    if not root.is_dir():
        raise BadInput(f"{root}: not a directory", "pass the model directory, not a file")


def read_config(root: Path) -> tuple[ModelConfig, bytes]:
    """config.json alone (parsed, and its bytes), refused as open_checkpoint refuses it."""
    _check_dir(root)
    raw, config_bytes = _load_json(root / CONFIG_NAME, CONFIG_NAME)
    return ModelConfig.from_dict(raw), config_bytes


def open_checkpoint(
    root: Path,
    *,
    require_config: bool = True,
    partial_ok: bool = False,
    config: tuple[ModelConfig, bytes] | None = None,
) -> LocalCheckpoint:
    """Open a model directory. `partial_ok`: shards the index names may be absent (an MTP source
    fetched for its MTP shards only); `shards` then lists those present. `config`: read_config's answer
    for this directory, already read (it is not read again)."""
    _check_dir(root)
    config_obj: ModelConfig | None = None
    config_bytes: bytes | None = None
    if config is not None:
        config_obj, config_bytes = config
    elif (root / CONFIG_NAME).exists() or require_config:
        config_obj, config_bytes = read_config(root)
    index: dict[str, Any] | None = None
    index_sha256: str | None = None
    if (root / INDEX_NAME).exists():
        index, index_bytes = _load_json(root / INDEX_NAME, INDEX_NAME)
        index_sha256 = hashlib.sha256(index_bytes).hexdigest()
        del index_bytes
        wm = index.get("weight_map")
        if not isinstance(wm, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in wm.items()
        ):
            raise NotACheckpoint(
                f"{root / INDEX_NAME}: weight_map must map tensor names to shard files", "re-fetch it"
            )
        shards = sorted(set(wm.values()))
        if partial_ok:
            shards = [s for s in shards if (root / s).is_file()]
        for shard in shards:
            if "/" in shard or shard.startswith("."):
                raise NotACheckpoint(
                    f"{root / INDEX_NAME}: shard name {shard!r} leaves the directory", "re-fetch it"
                )
            if not (root / shard).is_file():
                raise NotACheckpoint(
                    f"{root}: shard {shard} named in {INDEX_NAME} is missing", "re-run `gh200 models fetch`"
                )
    else:
        shards = sorted(p.name for p in root.glob("*.safetensors") if p.is_file())
    if not shards:
        raise NotACheckpoint(
            f"{root}: no safetensors weights", "point at a model directory with *.safetensors files"
        )
    return LocalCheckpoint(root, config_obj, config_bytes, index, index_sha256, shards)
