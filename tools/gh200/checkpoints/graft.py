"""`gh200 models graft`: the AWQ INT4 base plus the FP8 MTP layer, without copying the base.

Designed for a 430 GiB base: base shards are hard-linked into OUT (a copy, with a warning, only across
filesystems), and the one new shard is spliced from raw byte ranges of the source files behind a freshly
written header, so the work is the MTP bytes alone and memory stays flat. Every check runs before
anything is written; OUT appears only complete (temporary sibling, then rename); the same inputs give a
byte-identical OUT, and a re-run finds the recorded input digest and reports "unchanged".
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gh200.checkpoints.checks import (
    GraftCheckFailed,
    block_size,
    check_configs_agree,
    check_mtp_layer,
    natural_key,
)
from gh200.checkpoints.layout import ModelConfig, layer_of
from gh200.checkpoints.local import CONFIG_NAME, INDEX_NAME, LocalCheckpoint, open_checkpoint
from gh200.checkpoints.safetensors_io import NewTensor, SafetensorsHeader, read_header, write_spliced
from gh200.errors import BadInput
from gh200.fsutil import atomic_dir

GRAFT_FORMAT = 1
RECORD_NAME = ".gh200-graft.json"
# Files of ours or of huggingface_hub that describe a directory rather than belong to the model.
_NOT_CARRIED = {CONFIG_NAME, INDEX_NAME, RECORD_NAME, ".gh200-manifest.json"}
_NOT_CARRIED_DIRS = {".cache", ".git"}


class GraftOutputExists(BadInput):
    """OUT exists but was not made from these inputs."""


@dataclass
class GraftPlan:
    base: LocalCheckpoint
    source: LocalCheckpoint
    mtp_layers: list[int]
    mtp_tensors: list[NewTensor]
    mtp_shard: str
    suffix_counts: dict[str, int]
    dropped: list[str]
    stale_shards: dict[str, int]
    carried: list[tuple[str, int]]
    config_bytes: bytes
    weight_map: dict[str, str]
    index_metadata: dict[str, Any]
    mtp_quantization_config: dict[str, Any]
    digest: str
    warnings: list[str] = field(default_factory=list)

    @property
    def mtp_bytes(self) -> int:
        return sum(t.nbytes for t in self.mtp_tensors)

    def record(self, mtp_size: int, index_size: int) -> dict[str, Any]:
        outputs = {rel: size for rel, size in self.carried}
        outputs[self.mtp_shard] = mtp_size
        outputs[CONFIG_NAME] = len(self.config_bytes)
        outputs[INDEX_NAME] = index_size
        return {
            "format": GRAFT_FORMAT,
            "input_digest": self.digest,
            "mtp_layers": self.mtp_layers,
            "mtp_shard": self.mtp_shard,
            "mtp_quantization_config": self.mtp_quantization_config,
            "suffix_counts": self.suffix_counts,
            "dropped_base_entries": self.dropped,
            "mtp_tensors": {t.name: {"dtype": t.dtype, "shape": list(t.shape)} for t in self.mtp_tensors},
            "outputs": dict(sorted(outputs.items())),
        }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _carried_files(base: LocalCheckpoint) -> tuple[list[Path], list[str]]:
    """Files of the base to carry into OUT (relative), and warnings about files left behind."""
    referenced = set(base.shards)
    files: list[Path] = []
    warnings: list[str] = []
    for path in sorted(base.root.rglob("*")):
        rel = path.relative_to(base.root)
        if rel.parts[0] in _NOT_CARRIED_DIRS or (len(rel.parts) == 1 and rel.name in _NOT_CARRIED):
            continue
        if path.is_dir():
            continue
        if rel.name.endswith((".incomplete", ".lock")):
            continue
        if (
            len(rel.parts) == 1
            and rel.suffix == ".safetensors"
            and base.index is not None
            and rel.name not in referenced
        ):
            warnings.append(f"base file {rel} is not in the base's index: left out of OUT")
            continue
        files.append(rel)
    return files, warnings


def _in_layers(name: str, layers: list[int]) -> bool:
    return layer_of(name) in layers


def _at_or_after(name: str, first: int) -> bool:
    layer = layer_of(name)
    return layer is not None and layer >= first


def plan_graft(
    base_dir: Path, mtp_dir: Path, mtp_config: Path | None = None, mtp_layers: int | None = None
) -> GraftPlan:
    """Read headers and configs, run every check, and compute OUT's small files and digest."""
    base = open_checkpoint(base_dir)
    source = open_checkpoint(mtp_dir, require_config=mtp_config is None, partial_ok=True)
    assert base.config is not None and base.config_bytes is not None
    if mtp_config is not None:
        try:
            source_cfg_bytes = mtp_config.read_bytes()
            source_cfg = ModelConfig.from_dict(json.loads(source_cfg_bytes))
        except (OSError, json.JSONDecodeError) as exc:
            raise BadInput(
                f"--mtp-config {mtp_config}: not a readable JSON config ({exc})", "check the path"
            ) from exc
    else:
        assert source.config is not None and source.config_bytes is not None
        source_cfg, source_cfg_bytes = source.config, source.config_bytes
    bcfg = base.config
    if bcfg.num_hidden_layers is None or bcfg.hidden_size is None:
        raise GraftCheckFailed(
            f"{base_dir / CONFIG_NAME}: no num_hidden_layers/hidden_size",
            "point --base at the AWQ model directory",
        )
    check_configs_agree(bcfg, source_cfg)
    qc = source_cfg.quantization_config
    if not qc or qc.get("quant_method") != "fp8":
        raise GraftCheckFailed(
            "MTP source config has no FP8 quantization_config "
            f"(quant_method {(qc or {}).get('quant_method')!r})",
            "take the MTP layer from the FP8 artifact (or pass its config.json with --mtp-config)",
        )
    block = block_size(qc)
    first = bcfg.num_hidden_layers
    count = mtp_layers or source_cfg.num_nextn_predict_layers or bcfg.num_nextn_predict_layers or 1
    layers = list(range(first, first + count))

    # The MTP tensors: from the source index when there is one, else from every shard header.
    source_headers: dict[str, SafetensorsHeader] = {}
    wanted: dict[str, str] = {}
    if source.index is not None:
        wanted = {n: s for n, s in source.weight_map.items() if _in_layers(n, layers)}
        shards = sorted(set(wanted.values()))
        for shard in shards:
            if not (source.root / shard).is_file():
                first_name = min((n for n, s in wanted.items() if s == shard), key=natural_key)
                raise GraftCheckFailed(
                    f"{mtp_dir}: shard {shard} (holds {first_name}) is missing", "re-fetch the MTP source"
                )
    else:
        shards = source.shards
    for shard in shards:
        source_headers[shard] = source.header(shard)
    if source.index is None:
        for shard, header in source_headers.items():
            for name in header.tensors:
                if _in_layers(name, layers):
                    wanted[name] = shard
    if not wanted:
        raise GraftCheckFailed(
            f"{mtp_dir}: no tensors of layer {first} (model.layers.{first}.*)",
            "point --mtp-from at the FP8 artifact or the MTP delta repo",
        )
    entries = {}
    for name, shard in wanted.items():
        entry = source_headers[shard].tensors.get(name)
        if entry is None:
            raise GraftCheckFailed(
                f"{mtp_dir / INDEX_NAME} lists {name} in {shard}, but that shard has no such tensor",
                "re-fetch the MTP source",
            )
        entries[name] = entry
    suffix_counts = check_mtp_layer(bcfg, entries, layers, block)

    mtp_shard = f"model-mtp-layer{first}.safetensors"
    mtp_tensors = [
        NewTensor(
            name,
            entries[name].dtype,
            entries[name].shape,
            entries[name].nbytes,
            source.root / wanted[name],
            source_headers[wanted[name]].data_start + entries[name].begin,
        )
        for name in sorted(entries, key=natural_key)
    ]

    # Base: index entries of the MTP layers are dropped; everything else is carried over.
    carried_rel, warnings = _carried_files(base)
    if any(rel.name == mtp_shard for rel in carried_rel):
        raise GraftCheckFailed(
            f"base already has a file named {mtp_shard}", "use a base without a grafted layer"
        )
    # The base's own map, edited in place: a 750B model's index has ~250k entries, copies add up.
    base_map = base.weight_map if base.index is not None else {}
    dropped = sorted((n for n in base_map if _at_or_after(n, first)), key=natural_key)
    stale: dict[str, int] = {}
    for name in dropped:
        stale[base_map[name]] = stale.get(base_map[name], 0) + 1
        del base_map[name]
    for shard, n in sorted(stale.items()):
        warnings.append(
            f"base shard {shard} still holds {n} layer-{first}+ tensors that the merged index no longer lists"
        )
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": GRAFT_FORMAT, "block": block, "layers": layers}).encode())
    digest.update(_sha(base.config_bytes).encode())
    digest.update((base.index_sha256 or "").encode())
    digest.update(_sha(source_cfg_bytes).encode())
    total_size = 0
    carried: list[tuple[str, int]] = []
    # How many entries the index assigns to each shard: every one must be found in that shard's header.
    per_shard: dict[str, int] = {}
    for shard in base_map.values():
        per_shard[shard] = per_shard.get(shard, 0) + 1
    for rel in carried_rel:
        path = base.root / rel
        if rel.suffix == ".safetensors" and len(rel.parts) == 1:
            header = read_header(path)
            ident = header.digest()
            found = 0
            for name, entry in header.tensors.items():
                if base.index is None:
                    if _at_or_after(name, first):
                        raise GraftCheckFailed(
                            f"base shard {rel} holds {name} and the base has no index to drop it from",
                            "use a base with model.safetensors.index.json",
                        )
                    base_map[name] = rel.name
                    total_size += entry.nbytes
                elif base_map.get(name) == rel.name:
                    found += 1
                    total_size += entry.nbytes
            if base.index is not None and found != per_shard.get(rel.name, 0):
                missing = min(
                    (n for n, s in base_map.items() if s == rel.name and n not in header.tensors),
                    key=natural_key,
                )
                raise GraftCheckFailed(
                    f"base index lists {missing} in {rel}, but that shard has no such tensor",
                    "re-fetch the base",
                )
            size = header.file_size
            del header
        else:
            size = path.stat().st_size
            ident = _file_sha(path)
        digest.update(f"{rel}\0{size}\0{ident}\n".encode())
        carried.append((str(rel), size))
    for shard in sorted(source_headers):
        digest.update(f"src:{shard}\0{source_headers[shard].digest()}\n".encode())
    for tensor in mtp_tensors:
        base_map[tensor.name] = mtp_shard
        total_size += tensor.nbytes

    metadata = dict((base.index or {}).get("metadata") or {})
    metadata["total_size"] = total_size
    config = dict(bcfg.raw)
    config["num_nextn_predict_layers"] = count
    config["mtp_quantization_config"] = qc
    config_bytes = (json.dumps(config, indent=2) + "\n").encode()
    return GraftPlan(
        base=base,
        source=source,
        mtp_layers=layers,
        mtp_tensors=mtp_tensors,
        mtp_shard=mtp_shard,
        suffix_counts=suffix_counts,
        dropped=dropped,
        stale_shards=stale,
        carried=carried,
        config_bytes=config_bytes,
        weight_map=base_map,
        index_metadata=metadata,
        mtp_quantization_config=qc,
        digest=digest.hexdigest(),
        warnings=warnings,
    )


def read_record(out: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((out / RECORD_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _intact(out: Path, record: dict[str, Any]) -> bool:
    outputs = record.get("outputs")
    if not isinstance(outputs, dict):
        return False
    for rel, size in outputs.items():
        try:
            if (out / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _write_index(path: Path, weight_map: dict[str, str], metadata: dict[str, Any]) -> int:
    """The merged index, keys sorted (as transformers writes them), streamed rather than built in memory."""
    index = {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}
    with open(path, "w") as handle:
        json.dump(index, handle, indent=2)
        handle.write("\n")
        return handle.tell()


@dataclass
class _Transfer:
    linked_files: int = 0
    linked_bytes: int = 0
    copied_files: int = 0
    copied_bytes: int = 0
    small_files: int = 0
    warned: bool = False


def _link_or_copy(src: Path, dst: Path, transfer: _Transfer, warnings: list[str]) -> None:
    """Hard-link src to dst; across filesystems (or where links are refused) copy, with a warning."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    size = src.stat().st_size
    try:
        os.link(src, dst)
        transfer.linked_files += 1
        transfer.linked_bytes += size
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES):
            raise
        reason = exc.strerror or "link refused"
    if not transfer.warned:
        warnings.append(
            f"cannot hard-link the base into OUT ({reason}): copying it instead; "
            "put OUT on the base's filesystem"
        )
        transfer.warned = True
    shutil.copyfile(src, dst)
    transfer.copied_files += 1
    transfer.copied_bytes += size


@dataclass
class GraftResult:
    out: Path
    changed: bool
    plan: GraftPlan
    transfer: _Transfer
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "status": "grafted" if self.changed else "unchanged",
            "out": str(self.out),
            "input_digest": self.plan.digest,
            "mtp_layers": self.plan.mtp_layers,
            "mtp_shard": self.plan.mtp_shard,
            "mtp_tensors": len(self.plan.mtp_tensors),
            "mtp_bytes": self.plan.mtp_bytes,
            "suffix_counts": self.plan.suffix_counts,
            "dropped_base_entries": len(self.plan.dropped),
            "base_files_linked": self.transfer.linked_files,
            "base_bytes_linked": self.transfer.linked_bytes,
            "base_files_copied": self.transfer.copied_files,
            "base_bytes_copied": self.transfer.copied_bytes,
            "small_files_copied": self.transfer.small_files,
            "warnings": self.plan.warnings,
            "seconds": round(self.seconds, 3),
        }


def graft(
    base_dir: Path,
    mtp_dir: Path,
    out: Path,
    *,
    mtp_config: Path | None = None,
    mtp_layers: int | None = None,
    force: bool = False,
    fsync: bool = True,
    on_phase: Callable[[str, int], None] = lambda _phase, _total: None,
    on_bytes: Callable[[int], None] = lambda _n: None,
) -> GraftResult:
    """Graft the MTP layers of `mtp_dir` onto `base_dir` into `out` (see the module doc)."""
    start = time.monotonic()
    out = out.absolute()
    for given, what in ((base_dir, "--base"), (mtp_dir, "--mtp-from")):
        if out == given.absolute() or given.absolute() in out.parents:
            raise BadInput(
                f"--out {out} is inside {what} {given}", "write OUT beside the inputs, not inside them"
            )
    plan = plan_graft(base_dir, mtp_dir, mtp_config, mtp_layers)
    transfer = _Transfer()
    if out.exists():
        record = read_record(out)
        if record and record.get("input_digest") == plan.digest and _intact(out, record):
            return GraftResult(out, False, plan, transfer, time.monotonic() - start)
        if not force:
            why = "was grafted from other inputs" if record else "is not a graft made by gh200"
            raise GraftOutputExists(
                f"{out} exists and {why}", "remove it, choose another --out, or pass --force"
            )
    for stale in out.parent.glob(f".{out.name}.old-*"):
        # Left by a --force run killed between its two renames; OUT was rebuilt or is rebuilt now.
        shutil.rmtree(stale, ignore_errors=True)
    old: Path | None = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        with atomic_dir(out) as tmp:
            # mkdtemp makes the directory 0700; a model directory must be readable by the serving user.
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)
            on_phase("link base", len(plan.carried))
            for rel, _size in plan.carried:
                src, dst = plan.base.root / rel, tmp / rel
                if rel.endswith(".safetensors"):
                    _link_or_copy(src, dst, transfer, plan.warnings)
                else:
                    # Small files are copied: an in-place edit of OUT's tokenizer must not alter the base.
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
                    transfer.small_files += 1
            on_phase("splice MTP layer", plan.mtp_bytes)
            mtp_size = write_spliced(
                tmp / plan.mtp_shard, plan.mtp_tensors, {"format": "pt"}, on_bytes, fsync
            )
            index_size = _write_index(tmp / INDEX_NAME, plan.weight_map, plan.index_metadata)
            (tmp / CONFIG_NAME).write_bytes(plan.config_bytes)
            record_bytes = (json.dumps(plan.record(mtp_size, index_size), indent=2) + "\n").encode()
            (tmp / RECORD_NAME).write_bytes(record_bytes)
            if fsync:
                for name in (INDEX_NAME, CONFIG_NAME, RECORD_NAME):
                    with open(tmp / name, "rb") as handle:
                        os.fsync(handle.fileno())
    except BaseException:
        if old is not None and not out.exists():
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return GraftResult(out, True, plan, transfer, time.monotonic() - start)
