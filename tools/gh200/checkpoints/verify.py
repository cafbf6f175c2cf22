"""`gh200 models verify DIR`: offline checks of a fetched or grafted model directory.

- With a fetch manifest (`.gh200-manifest.json`): every listed file exists with its size and sha256.
- With a safetensors index: every weight_map entry names a tensor present in that shard's header (whose
  dtype and shape are well-formed and fit the byte range), no shard on disk is unreferenced, and
  metadata.total_size matches the headers.
- With a graft record (`.gh200-graft.json`): every output it lists has its size, and the sha256 it
  recorded (the files the graft wrote; linked base shards when the base had a fetch manifest).
- For a graft (config.json has mtp_quantization_config, or OUT has the graft record): the MTP layer
  passes the graft's checks again, its tensors have the dtype and shape the record lists, and config.json
  carries what vLLM needs (architectures, quantization_config, mtp_quantization_config with the FP8
  block size, num_nextn_predict_layers >= 1).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gh200.checkpoints.checks import GraftCheckFailed, block_size, check_mtp_layer, natural_key
from gh200.checkpoints.graft import GRAFT_FORMAT, RECORD_NAME, read_record
from gh200.checkpoints.layout import layer_of
from gh200.checkpoints.local import CONFIG_NAME, INDEX_NAME, open_checkpoint
from gh200.checkpoints.safetensors_io import CorruptSafetensors, TensorEntry, read_header
from gh200.errors import BadInput, OperationFailed
from gh200.fsutil import sha256_file

MANIFEST_NAME = ".gh200-manifest.json"
MANIFEST_FORMAT = 1


class VerifyFailed(OperationFailed):
    """The directory does not match its manifest or is not loadable as it stands."""


@dataclass
class VerifyReport:
    path: Path
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files_hashed: int = 0
    bytes_hashed: int = 0
    grafted: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": str(self.path),
            "grafted": self.grafted,
            "checks": self.checks,
            "problems": self.problems,
            "warnings": self.warnings,
            "files_hashed": self.files_hashed,
            "bytes_hashed": self.bytes_hashed,
            "changed": False,
        }


def git_blob_sha1(path: Path) -> str:
    """The git object id of a (small, non-LFS) file, as the hub's blobId reports it."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"{path}: not valid JSON ({exc.msg})", "re-run `gh200 models fetch` to rewrite it"
        ) from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BadInput(f"{path}: no files map", "re-run `gh200 models fetch` to rewrite it")
    return manifest


def hash_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def check_manifest(
    root: Path,
    manifest: dict[str, Any],
    report: VerifyReport,
    on_bytes: Callable[[int], None],
    source: str = "manifest",
) -> None:
    files: dict[str, Any] = manifest["files"]
    todo: list[tuple[str, Path, dict[str, Any]]] = []
    for rel, info in sorted(files.items()):
        path = root / rel
        if not path.is_file():
            report.problems.append(f"{rel}: listed in the {source} but missing")
            continue
        size = path.stat().st_size
        if size != info.get("size"):
            report.problems.append(f"{rel}: size {size}, {source} says {info.get('size')}")
            continue
        todo.append((rel, path, info))

    def one(item: tuple[str, Path, dict[str, Any]]) -> str | None:
        rel, path, info = item
        got = sha256_file(path, on_bytes)
        if got != info.get("sha256"):
            return f"{rel}: sha256 {got[:12]}…, {source} says {str(info.get('sha256'))[:12]}…"
        return None

    with ThreadPoolExecutor(max_workers=hash_workers()) as pool:
        for (_, path, _), problem in zip(todo, pool.map(one, todo), strict=True):
            report.files_hashed += 1
            report.bytes_hashed += path.stat().st_size
            if problem:
                report.problems.append(problem)
    what = f"{MANIFEST_NAME} ({manifest.get('repo')})" if source == "manifest" else RECORD_NAME
    report.checks.append(f"sha256 of {len(files)} files against {what}")


def check_record(
    root: Path, record: dict[str, Any], report: VerifyReport, on_bytes: Callable[[int], None]
) -> None:
    """Sizes and sha256 of the outputs a graft recorded."""
    outputs = record.get("outputs")
    if record.get("format") != GRAFT_FORMAT or not isinstance(outputs, dict):
        report.warnings.append(
            f"{RECORD_NAME} has format {record.get('format')!r}, no sha256 of the outputs: "
            "re-run `gh200 models graft` to record them"
        )
        return
    manifest = {
        "files": {
            rel: {"size": info.get("size"), "sha256": info["sha256"]}
            for rel, info in outputs.items()
            if isinstance(info, dict) and "sha256" in info
        }
    }
    unhashed = sorted(rel for rel in outputs if rel not in manifest["files"])
    for rel in unhashed:
        info = outputs[rel]
        size = info.get("size") if isinstance(info, dict) else None
        path = root / rel
        if not path.is_file():
            report.problems.append(f"{rel}: listed in the graft record but missing")
        elif path.stat().st_size != size:
            report.problems.append(f"{rel}: size {path.stat().st_size}, graft record says {size}")
    check_manifest(root, manifest, report, on_bytes, source="graft record")


def check_structure(root: Path, report: VerifyReport) -> dict[str, TensorEntry]:
    """Index vs headers. Returns the header entries of the tensors in the MTP layers (if a config says)."""
    ckpt = open_checkpoint(root, require_config=False)
    cfg = ckpt.config
    first = cfg.num_hidden_layers if cfg else None
    mtp: dict[str, TensorEntry] = {}
    by_shard: dict[str, set[str]] = {}
    for name, shard in ckpt.weight_map.items():
        by_shard.setdefault(shard, set()).add(name)
    total = 0
    unlisted = 0
    for shard in ckpt.shards:
        try:
            header = read_header(root / shard)
        except CorruptSafetensors as err:
            report.problems.append(err.message)
            continue
        listed = by_shard.get(shard, set(header.tensors))
        for name in sorted(listed - header.tensors.keys(), key=natural_key)[:5]:
            report.problems.append(f"weight_map lists {name} in {shard}, but that shard has no such tensor")
        for name, entry in header.tensors.items():
            if name not in listed:
                unlisted += 1
                continue
            total += entry.nbytes
            layer = layer_of(name)
            if first is not None and layer is not None and layer >= first:
                mtp[name] = entry
    if unlisted:
        report.warnings.append(
            f"{unlisted} tensors in shards are not in the weight_map (loaders may still read them)"
        )
    if ckpt.index is not None:
        on_disk = {p.name for p in root.glob("*.safetensors")}
        for shard in sorted(on_disk - set(ckpt.shards)):
            report.problems.append(f"{shard} is not referenced by {INDEX_NAME}")
        declared = (ckpt.index.get("metadata") or {}).get("total_size")
        if declared is not None and declared != total:
            message = f"{INDEX_NAME} metadata.total_size is {declared}, the headers add up to {total}"
            (report.problems if report.grafted else report.warnings).append(message)
        report.checks.append(
            f"{len(ckpt.weight_map)} weight_map entries against the headers of {len(ckpt.shards)} shards"
        )
    else:
        report.checks.append(f"headers of {len(ckpt.shards)} shards")
    return mtp


def check_graft(root: Path, mtp: dict[str, TensorEntry], report: VerifyReport) -> None:
    ckpt = open_checkpoint(root)
    assert ckpt.config is not None
    cfg = ckpt.config
    raw = cfg.raw
    if not cfg.architectures:
        report.problems.append(f"{CONFIG_NAME}: no architectures")
    if cfg.num_hidden_layers is None:
        report.problems.append(f"{CONFIG_NAME}: no num_hidden_layers")
        return
    if not isinstance(raw.get("quantization_config"), dict):
        report.problems.append(f"{CONFIG_NAME}: no quantization_config for the base weights")
    mqc = raw.get("mtp_quantization_config")
    if not isinstance(mqc, dict) or mqc.get("quant_method") != "fp8":
        report.problems.append(f"{CONFIG_NAME}: mtp_quantization_config missing or not quant_method fp8")
        return
    count = cfg.num_nextn_predict_layers or 0
    if count < 1:
        report.problems.append(
            f"{CONFIG_NAME}: num_nextn_predict_layers is {count}, the MTP layer needs >= 1"
        )
        return
    layers = list(range(cfg.num_hidden_layers, cfg.num_hidden_layers + count))
    try:
        block = block_size(mqc)
        counts = check_mtp_layer(cfg, mtp, layers, block)
    except GraftCheckFailed as err:
        report.problems.append(err.message)
        return
    record = read_record(root)
    if record is not None:
        want = record.get("mtp_tensors") or {}
        for name, info in sorted(want.items(), key=lambda kv: natural_key(kv[0])):
            entry = mtp.get(name)
            if entry is None:
                report.problems.append(f"{name}: in {RECORD_NAME} but not in the weight_map")
            elif entry.dtype != info.get("dtype") or list(entry.shape) != info.get("shape"):
                report.problems.append(
                    f"{name}: header says {entry.dtype}{list(entry.shape)}, "
                    f"graft recorded {info.get('dtype')}{info.get('shape')}"
                )
        for name in sorted(set(mtp) - set(want), key=natural_key)[:5]:
            report.problems.append(f"{name}: in the weight_map but not in {RECORD_NAME}")
    report.checks.append(
        f"MTP layer {layers} complete ({sum(counts.values())} tensors, FP8 block {list(block)}); "
        "config.json ready for vLLM"
    )


def verify_dir(
    root: Path,
    on_phase: Callable[[str, int], None] = lambda _p, _t: None,
    on_bytes: Callable[[int], None] = lambda _n: None,
) -> VerifyReport:
    if not root.exists():
        raise BadInput(f"{root}: no such directory", "pass a model directory")
    if not root.is_dir():
        raise BadInput(f"{root}: not a directory", "pass the model's directory, not a file in it")
    has_weights = any(root.glob("*.safetensors")) or (root / INDEX_NAME).exists()
    record = read_record(root)
    if not has_weights and record is None and not (root / MANIFEST_NAME).exists():
        # Nothing to check is not a pass: an empty or mistyped directory must not print "ok".
        raise BadInput(
            f"{root}: no model here (no {MANIFEST_NAME}, no {RECORD_NAME}, no *.safetensors)",
            "pass a directory made by `gh200 models fetch` or `gh200 models graft`",
        )
    report = VerifyReport(root)
    manifest = read_manifest(root)
    config: dict[str, Any] = {}
    if (root / CONFIG_NAME).exists():
        try:
            loaded = json.loads((root / CONFIG_NAME).read_text())
            config = loaded if isinstance(loaded, dict) else {}
        except json.JSONDecodeError:
            report.problems.append(f"{CONFIG_NAME}: not valid JSON")
    report.grafted = "mtp_quantization_config" in config or (root / RECORD_NAME).exists()
    if manifest is not None:
        total = sum(int(info.get("size", 0)) for info in manifest["files"].values())
        on_phase("sha256", total)
        check_manifest(root, manifest, report, on_bytes)
    elif record is None:
        report.warnings.append(f"no {MANIFEST_NAME}: file hashes not checked (fetch writes one)")
    if has_weights:
        try:
            mtp = check_structure(root, report)
        except BadInput as err:
            report.problems.append(err.message)
        else:
            if report.grafted:
                check_graft(root, mtp, report)
    if record is None and (root / RECORD_NAME).exists():
        report.problems.append(f"{RECORD_NAME}: not a readable JSON object")
    if record is not None:
        # After the structure checks: a truncated shard is named by its header first, then by the hash.
        outputs = record.get("outputs")
        total = sum(
            int(info.get("size", 0))
            for info in (outputs.values() if isinstance(outputs, dict) else [])
            if isinstance(info, dict) and "sha256" in info
        )
        on_phase("sha256", total)
        check_record(root, record, report, on_bytes)
    return report
