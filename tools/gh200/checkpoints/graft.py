"""`gh200 models graft`: the AWQ INT4 base plus the FP8 MTP layer, without copying the base.

Designed for a 430 GiB base: base shards are hard-linked into OUT (a copy, with a warning, only across
filesystems), and the one new shard is spliced from raw byte ranges of the source files behind a freshly
written header, so the work is the MTP bytes alone and memory stays flat. Every check runs before
anything is written; OUT appears only complete (temporary sibling, then rename; files, directories and
the rename fsynced); the same inputs give a byte-identical OUT.

The record (`.gh200-graft.json`) names the input digest and every output with its size, and with the
sha256 of each file the graft writes (for linked base shards: the base's fetch-manifest sha256 when it
has one). A re-run reports "unchanged" only when the input digest matches, every output has its recorded
size, every written file its recorded sha256 and every linked shard the base's header; anything else
made from the same inputs is rebuilt and the result names what was repaired (`models verify` hashes
all recorded files, base shards included).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
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
from gh200.checkpoints.local import CONFIG_NAME, INDEX_NAME, LocalCheckpoint, open_checkpoint, read_config
from gh200.checkpoints.safetensors_io import (
    NewTensor,
    SafetensorsHeader,
    SplicedHash,
    read_header,
    start_writeback,
    write_spliced,
)
from gh200.errors import BadInput, Gh200Error
from gh200.fsutil import atomic_dir, sha256_file

# 2: outputs map to {size, sha256}; a format-1 OUT (sizes only) is rebuilt as a repair.
GRAFT_FORMAT = 2
RECORD_NAME = ".gh200-graft.json"
# Same name as verify.MANIFEST_NAME (verify imports this module, so the constant cannot come from there).
_MANIFEST_NAME = ".gh200-manifest.json"
# Files of ours or of huggingface_hub that describe a directory rather than belong to the model.
_NOT_CARRIED = {CONFIG_NAME, INDEX_NAME, RECORD_NAME, _MANIFEST_NAME}
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
    # Per carried file: the header digest of a linked shard (its identity without reading the data).
    carried_ident: dict[str, str] = field(default_factory=dict)
    # Per carried shard: its sha256 from the base's fetch manifest, when the base has one.
    carried_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def mtp_bytes(self) -> int:
        return sum(t.nbytes for t in self.mtp_tensors)

    def record(self, written: dict[str, tuple[int, str]]) -> dict[str, Any]:
        """The record; `written` maps each file the graft wrote (or copied) to its size and sha256."""
        outputs: dict[str, dict[str, Any]] = {}
        for rel, size in self.carried:
            entry: dict[str, Any] = {"size": size, "from_base": rel not in written}
            if rel in self.carried_sha256 and rel not in written:
                entry["sha256"] = self.carried_sha256[rel]
            outputs[rel] = entry
        for rel, (size, sha) in written.items():
            outputs[rel] = {"size": size, "sha256": sha, "from_base": False}
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


def _manifest_sha256(base: LocalCheckpoint) -> dict[str, tuple[int, str]]:
    """(size, sha256) per file from the base's fetch manifest; empty when there is none (or it is bad)."""
    try:
        manifest = json.loads((base.root / _MANIFEST_NAME).read_text())
        files = manifest["files"]
        return {
            rel: (int(info["size"]), str(info["sha256"]))
            for rel, info in files.items()
            if isinstance(info, dict) and "sha256" in info
        }
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


def _check_shard(root: Path, shard: str, weight_map: dict[str, str], expected: int) -> tuple[str, int, int]:
    """One base shard against the index: (header digest, file size, bytes of the tensors the index keeps).

    The header is read and validated; every one of the `expected` entries the index assigns to this shard
    must be in it (GraftCheckFailed names the first that is not)."""
    header = read_header(root / shard)
    found = 0
    nbytes = 0
    for name, entry in header.tensors.items():
        if weight_map.get(name) == shard:
            found += 1
            nbytes += entry.nbytes
    if found != expected:
        missing = min(
            (n for n, s in weight_map.items() if s == shard and n not in header.tensors), key=natural_key
        )
        raise GraftCheckFailed(
            f"base index lists {missing} in {shard}, but that shard has no such tensor", "re-fetch the base"
        )
    return header.digest(), header.file_size, nbytes


# At most this many processes read base headers (a 750B base has ~100 shards; more buys little).
_MAX_HEADER_WORKERS = 8


def _header_workers(shards: int, cpus: int | None = None) -> int:
    """How many forked processes check the base's shards: one CPU (of `cpus`, default this process's)
    is left to the hash child; none (this process alone) on one CPU, without fork, or when threads run
    here (a fork copies no thread, and a lock one of them held would stay held in the child)."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return 1
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
    return _worker_count(shards, cpus)


def _worker_count(shards: int, cpus: int) -> int:
    return max(1, min(shards, cpus - 1, _MAX_HEADER_WORKERS))


def _check_shards(
    root: Path, shards: list[str], weight_map: dict[str, str], per_shard: dict[str, int]
) -> dict[str, tuple[str, int, int]]:
    """_check_shard for every shard, in forked processes when there are CPUs for it (JSON decoding holds
    the GIL: threads would take turns). The first failing shard in the given order raises, as it would
    one after the other; a worker that dies is redone here."""
    workers = _header_workers(len(shards))
    outcomes: dict[str, tuple[str, Any]] = {}
    if workers > 1:
        children: list[tuple[int, int]] = []
        for k in range(workers):
            mine = shards[k::workers]
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker: the index is already here (copy-on-write), only answers go back
                try:
                    os.close(read_end)
                    answers = {s: _outcome(root, s, weight_map, per_shard.get(s, 0)) for s in mine}
                    with os.fdopen(write_end, "wb") as pipe:
                        pickle.dump(answers, pipe)
                finally:
                    os._exit(0)
            os.close(write_end)
            children.append((pid, read_end))
        for pid, read_end in children:
            with os.fdopen(read_end, "rb") as pipe:
                data = pipe.read()
            os.waitpid(pid, 0)
            with contextlib.suppress(Exception):  # a dead worker's shards are checked below
                outcomes.update(pickle.loads(data))
    results: dict[str, tuple[str, int, int]] = {}
    for shard in shards:
        kind, value = outcomes.get(shard) or _outcome(root, shard, weight_map, per_shard.get(shard, 0))
        if kind == "ok":
            results[shard] = value
        elif kind == "gh200":
            cls, message, fix = value
            raise cls(message, fix)
        else:
            raise value
    return results


def _outcome(root: Path, shard: str, weight_map: dict[str, str], expected: int) -> tuple[str, Any]:
    """_check_shard's answer or its error, as a value that crosses a pipe (Gh200Error's fix would not)."""
    try:
        return "ok", _check_shard(root, shard, weight_map, expected)
    except Gh200Error as exc:
        return "gh200", (type(exc), exc.message, exc.fix)
    except Exception as exc:
        return "error", exc


def plan_graft(
    base_dir: Path,
    mtp_dir: Path,
    mtp_config: Path | None = None,
    mtp_layers: int | None = None,
    on_mtp_tensors: Callable[[list[NewTensor]], None] = lambda _tensors: None,
) -> GraftPlan:
    """Read headers and configs, run every check, and compute OUT's small files and digest.

    `on_mtp_tensors` gets the MTP layer's tensors as soon as they are known, before the base's checks
    (graft starts the read-only hash of the MTP shard-to-be there)."""
    # The base's config now, its index (the larger read) after the MTP tensors are known: the hash,
    # the longest step, starts the sooner.
    base_config = read_config(base_dir)
    source = open_checkpoint(mtp_dir, require_config=mtp_config is None, partial_ok=True)
    if mtp_config is not None:
        try:
            source_cfg_bytes = mtp_config.read_bytes()
            loaded = json.loads(source_cfg_bytes)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInput(
                f"--mtp-config {mtp_config}: not a readable JSON config ({exc})", "check the path"
            ) from exc
        if not isinstance(loaded, dict):
            raise BadInput(
                f"--mtp-config {mtp_config}: not a JSON object", "pass the FP8 artifact's config.json"
            )
        source_cfg = ModelConfig.from_dict(loaded)
    else:
        assert source.config is not None and source.config_bytes is not None
        source_cfg, source_cfg_bytes = source.config, source.config_bytes
    bcfg = base_config[0]
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
    # Hashing reads only the ranges the headers just validated; a layer that fails the checks below
    # stops it (graft's finally).
    on_mtp_tensors(mtp_tensors)
    suffix_counts = check_mtp_layer(bcfg, entries, layers, block)
    base = open_checkpoint(base_dir, config=base_config)
    assert base.config_bytes is not None

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
    if base.index is not None and not base_map:
        raise GraftCheckFailed(
            f"{base_dir}: every tensor of the base is in layer {first} or later",
            "point --base at the AWQ model",
        )
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
    carried_ident: dict[str, str] = {}
    carried_sha256: dict[str, str] = {}
    fetched = _manifest_sha256(base)
    # How many entries the index assigns to each shard: every one must be found in that shard's header.
    per_shard: dict[str, int] = {}
    for shard in base_map.values():
        per_shard[shard] = per_shard.get(shard, 0) + 1
    # Shard headers with an index: read and checked side by side (each one alone), the slow part of the plan.
    checked: dict[str, tuple[str, int, int]] = {}
    if base.index is not None:
        names = [rel.name for rel in carried_rel if rel.suffix == ".safetensors" and len(rel.parts) == 1]
        checked = _check_shards(base.root, names, base_map, per_shard)
    for rel in carried_rel:
        path = base.root / rel
        if rel.name in checked and len(rel.parts) == 1:
            ident, size, nbytes = checked[rel.name]
            total_size += nbytes
            known = fetched.get(str(rel))
            if known is not None and known[0] == size:
                carried_sha256[str(rel)] = known[1]
        elif rel.suffix == ".safetensors" and len(rel.parts) == 1:
            # No index: every tensor of the shard is the base's, and none may be of the MTP layers.
            header = read_header(path)
            ident = header.digest()
            shard_name = rel.name  # a Path property: not recomputed per tensor
            for name, entry in header.tensors.items():
                if _at_or_after(name, first):
                    raise GraftCheckFailed(
                        f"base shard {rel} holds {name} and the base has no index to drop it from",
                        "use a base with model.safetensors.index.json",
                    )
                base_map[name] = shard_name
                total_size += entry.nbytes
            size = header.file_size
            del header
            known = fetched.get(str(rel))
            if known is not None and known[0] == size:
                carried_sha256[str(rel)] = known[1]
        else:
            size = path.stat().st_size
            ident = sha256_file(path)
        # The fetch manifest's sha256 too: a new revision with the same shapes has the same headers.
        digest.update(f"{rel}\0{size}\0{ident}\0{carried_sha256.get(str(rel), '')}\n".encode())
        carried.append((str(rel), size))
        carried_ident[str(rel)] = ident
    source_fetched = _manifest_sha256(source)
    for shard in sorted(source_headers):
        known = source_fetched.get(shard)
        sha = known[1] if known is not None and known[0] == source_headers[shard].file_size else ""
        digest.update(f"src:{shard}\0{source_headers[shard].digest()}\0{sha}\n".encode())
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
        carried_ident=carried_ident,
        carried_sha256=carried_sha256,
    )


def read_record(out: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((out / RECORD_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def damage(out: Path, record: dict[str, Any], plan: GraftPlan) -> list[str]:
    """What is wrong with an OUT whose record names this plan's inputs (empty: intact).

    Sizes of every output; sha256 of every file the graft wrote; the header of every linked base shard
    against the base's (a linked shard's data is the base's own inode or a copy the base's fetch checks).
    """
    if record.get("format") != GRAFT_FORMAT:
        return [f"{RECORD_NAME} has format {record.get('format')!r}, not {GRAFT_FORMAT} (no output sha256)"]
    outputs = record.get("outputs")
    if not isinstance(outputs, dict):
        return [f"{RECORD_NAME} has no outputs map"]
    expected = {rel for rel, _ in plan.carried} | {plan.mtp_shard, CONFIG_NAME, INDEX_NAME}
    problems = [f"{rel}: not in {RECORD_NAME}" for rel in sorted(expected - outputs.keys())]
    for rel, info in sorted(outputs.items()):
        if not isinstance(info, dict) or not isinstance(info.get("size"), int):
            problems.append(f"{rel}: malformed entry in {RECORD_NAME}")
            continue
        path = out / rel
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{rel}: missing")
            continue
        if size != info["size"]:
            problems.append(f"{rel}: {size} bytes, recorded {info['size']}")
            continue
        if info.get("from_base"):
            ident = plan.carried_ident.get(rel)
            if ident is None:
                problems.append(f"{rel}: not a file of the base")
            else:
                try:
                    same = read_header(path).digest() == ident
                except BadInput:
                    same = False
                if not same:
                    problems.append(f"{rel}: header differs from the base's")
        elif not isinstance(info.get("sha256"), str):
            problems.append(f"{rel}: no sha256 in {RECORD_NAME}")
        elif sha256_file(path) != info["sha256"]:
            problems.append(f"{rel}: sha256 differs from {RECORD_NAME}")
    return problems


def _write_index(path: Path, weight_map: dict[str, str], metadata: dict[str, Any]) -> int:
    """The merged index, keys sorted (as transformers writes them): the bytes of json.dump(indent=2).

    json.dump with an indent runs the pure-Python encoder (a third of a second on the graft's
    critical path for 36k entries); the flat weight_map is written line by line with the C string
    encoder instead, and only the small metadata goes through json."""
    encode = encode_basestring_ascii  # what json.dump uses (ensure_ascii), in C
    head = json.dumps({"metadata": metadata, "weight_map": {}}, indent=2)
    assert head.endswith('"weight_map": {}\n}')
    with open(path, "w") as handle:
        if not weight_map:
            handle.write(head)
        else:
            handle.write(head[: -len("{}\n}")] + "{\n    ")
            handle.write(",\n    ".join(f"{encode(k)}: {encode(v)}" for k, v in sorted(weight_map.items())))
            handle.write("\n  }\n}")
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
    # What was wrong with an OUT made from these same inputs, now rebuilt (empty: not a repair).
    repaired: list[str] = field(default_factory=list)
    # Seconds per step, in order (plan, link base, splice MTP layer, ...): what `make bench-graft` shows.
    phase_s: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # the whole call, set by graft()

    @property
    def status(self) -> str:
        if not self.changed:
            return "unchanged"
        return "repaired" if self.repaired else "grafted"

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "status": self.status,
            "repaired": self.repaired,
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
    if base_dir.absolute() == mtp_dir.absolute():
        raise BadInput(f"--base and --mtp-from are both {base_dir}", "take the MTP layer from the FP8 model")
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file", "choose a directory path for OUT")
    for given, what in ((base_dir, "--base"), (mtp_dir, "--mtp-from")):
        if out == given.absolute() or given.absolute() in out.parents:
            raise BadInput(
                f"--out {out} is inside {what} {given}", "write OUT beside the inputs, not inside them"
            )
    phase_s: dict[str, float] = {}
    clock = [start]

    def lap(name: str) -> None:
        now = time.monotonic()
        phase_s[name] = now - clock[0]
        clock[0] = now

    # The hash of the MTP shard-to-be is the longest step: its child process starts now (its interpreter
    # comes up while the headers are read) and hashes as soon as the plan knows the MTP tensors (read-only,
    # so before the base's checks).
    hasher = SplicedHash()
    try:
        plan = plan_graft(
            base_dir,
            mtp_dir,
            mtp_config,
            mtp_layers,
            on_mtp_tensors=lambda tensors: hasher.feed(tensors, {"format": "pt"}),
        )
        lap("plan")
        result = _graft_planned(
            plan,
            out,
            force=force,
            fsync=fsync,
            hasher=hasher,
            on_phase=on_phase,
            on_bytes=on_bytes,
            lap=lap,
        )
    finally:
        hasher.stop()  # a refused or unchanged graft needs no hash (no-op once collected)
    result.seconds = time.monotonic() - start
    result.phase_s = phase_s
    return result


def _graft_planned(
    plan: GraftPlan,
    out: Path,
    *,
    force: bool,
    fsync: bool,
    hasher: SplicedHash,
    on_phase: Callable[[str, int], None],
    on_bytes: Callable[[int], None],
    lap: Callable[[str], None],
) -> GraftResult:
    transfer = _Transfer()
    repaired: list[str] = []
    if out.exists():
        record = read_record(out)
        if record and record.get("input_digest") == plan.digest:
            # Made from these inputs: unchanged if intact, else rebuilt (no --force needed for a repair).
            repaired = damage(out, record, plan)
            lap("check existing OUT")
            if not repaired:
                _remove_replaced_copies(out)
                return GraftResult(out, False, plan, transfer)
        elif not force:
            why = "was grafted from other inputs" if record else "is not a graft made by gh200"
            raise GraftOutputExists(
                f"{out} exists and {why}", "remove it, choose another --out, or pass --force"
            )
    _remove_replaced_copies(out)
    old: Path | None = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    # Files written, made durable together at the end: the disk writes each while the next is made, and
    # the small files' fsyncs find their bytes written and their metadata in the MTP shard's commit.
    unsynced: list[Path] = []

    def finish(path: Path) -> tuple[int, str]:
        if fsync:
            unsynced.append(path)
        return _finish(path, fsync)

    try:
        with atomic_dir(out, durable=fsync) as tmp:
            # mkdtemp makes the directory 0700; a model directory must be readable by the serving user.
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)
            on_phase("link base", len(plan.carried))
            written: dict[str, tuple[int, str]] = {}
            for rel, _size in plan.carried:
                src, dst = plan.base.root / rel, tmp / rel
                if rel.endswith(".safetensors"):
                    _link_or_copy(src, dst, transfer, plan.warnings)
                else:
                    # Small files are copied: an in-place edit of OUT's tokenizer must not alter the base.
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
                    transfer.small_files += 1
                    written[rel] = finish(dst)
            lap("link base")
            on_phase("splice MTP layer", plan.mtp_bytes)
            mtp_path = tmp / plan.mtp_shard
            # The disk starts writing as the bytes land; the fsync waits below, after the small files.
            write_spliced(mtp_path, plan.mtp_tensors, {"format": "pt"}, on_bytes, False, writeback=fsync)
            if fsync:
                unsynced.insert(0, mtp_path)  # the big one first: the others ride on its commit
            lap("splice MTP layer")
            _write_index(tmp / INDEX_NAME, plan.weight_map, plan.index_metadata)
            written[INDEX_NAME] = finish(tmp / INDEX_NAME)
            (tmp / CONFIG_NAME).write_bytes(plan.config_bytes)
            written[CONFIG_NAME] = finish(tmp / CONFIG_NAME)
            lap("index and config")
            for path in unsynced:
                _fsync(path)
            lap("fsync")
            # The recorded sha256 is of the bytes the shard must hold (hashed from the sources beside
            # the copy), so that `models verify` catches a faulty copy rather than record it.
            written[plan.mtp_shard] = (mtp_path.stat().st_size, hasher.result())
            lap("wait for sha256")
            record_bytes = (json.dumps(plan.record(written), indent=2) + "\n").encode()
            (tmp / RECORD_NAME).write_bytes(record_bytes)
            if fsync:
                _fsync(tmp / RECORD_NAME)
            lap("record")
    except BaseException:
        if old is not None and not out.exists():
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    lap("rename")
    return GraftResult(out, True, plan, transfer, repaired)


def _remove_replaced_copies(out: Path) -> None:
    """Litter beside OUT: a replaced copy that a --force run could not remove, or one it left when
    killed between its two renames (OUT is then missing and is being rebuilt)."""
    for stale in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _finish(path: Path, fsync: bool) -> tuple[int, str]:
    """Size and sha256 of a small file just written; when it is to be durable, its writeback starts
    now (the caller fsyncs it later, with the others)."""
    sha = sha256_file(path)
    if fsync:
        with open(path, "rb") as handle:
            start_writeback(handle.fileno(), 0, 0)
    return path.stat().st_size, sha
