"""Where the ruler's inputs come from: flags, a checkpoint on disk, the posts, a topology file.

Model bytes, in order of precedence: explicit flags; the checkpoint's safetensors headers through
`gh200.checkpoints.inspect.inspect_checkpoint` when the model is on disk (a directory, or the
profile's / REPO's directory in the model store); the posts' figures for the models they quote
(ruler.KNOWN_MODELS); for `--model REPO@REV` only, the headers fetched from the hub.

Bandwidths: `--bandwidth` flags; a probe topology file
(`--topology PATH`, else $GH200_STATE/topology.json when it exists); the posts' Part 1 table.

Results files (`--results`): JSON Lines, one object per measured shape, e.g.
  {"shape": "256:512", "concurrency": 1, "median_output_tok_s": 20.31}
The value is read from the first of `median_output_tok_s`, `output_tok_s_median`, or
`output_tok_s` (a number, or an object with a `median`). A JSON list of such objects, or an object
holding them under `records` or `results`, is read too. Lines without a value are skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gh200.errors import BadInput, Gh200Error
from gh200.ruler import ruler as r
from gh200.ruler.topology import read_topology

MODEL_FLAGS = "--routed-expert-bytes SIZE --experts N --active-experts K (optionally --dense-bytes SIZE)"


class RulerError(BadInput):
    """A ruler input that cannot be resolved."""


def _wrap(err: r.RulerInputError) -> RulerError:
    return RulerError(err.message, err.fix)


def parse_size(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return r.parse_bytes(text)
    except r.RulerInputError as err:
        raise _wrap(err) from None


@dataclass(frozen=True)
class Found:
    """Model geometry from one source (any field may be missing)."""

    routed_expert_bytes: int | None
    n_routed_experts: int | None
    n_active_experts: int | None
    dense_bytes: int | None
    source: str


def _inspect(target: Path | str) -> Found:
    """Read the geometry from safetensors headers: a directory, or REPO@REV on the hub."""
    try:
        from gh200.checkpoints.inspect import inspect_checkpoint
    except ImportError:
        raise RulerError(
            f"cannot read {target}: checkpoint inspection (gh200.checkpoints.inspect) is not available",
            f"pass {MODEL_FLAGS}",
        ) from None
    try:
        result: Any = inspect_checkpoint(target)
    except Gh200Error as err:
        raise RulerError(f"cannot inspect {target}: {err.message}", f"pass {MODEL_FLAGS}") from None

    def get(name: str) -> int | None:
        value = getattr(result, name, None)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    where = f"checkpoint headers in {target}" if isinstance(target, Path) else f"hub headers of {target}"
    return Found(
        routed_expert_bytes=get("routed_expert_bytes"),
        n_routed_experts=get("n_routed_experts"),
        n_active_experts=get("n_active_experts"),
        dense_bytes=get("dense_bytes"),
        source=where,
    )


def _known(repo: str) -> Found | None:
    known = r.KNOWN_MODELS.get(repo)
    if known is None:
        return None
    return Found(
        known.routed_expert_bytes, known.n_routed_experts, known.n_active_experts, None, known.source
    )


def _lookup(profile: str | None, model: str | None) -> Found:
    """Find the model's geometry on disk, else in the posts; fail naming the flags otherwise."""
    if profile is not None:
        from gh200.profiles import load_profile, model_host_dir

        loaded = load_profile(profile)
        repo, directory = loaded.model.repo, model_host_dir(loaded)
    else:
        assert model is not None
        if Path(model).is_dir():
            return _inspect(Path(model))
        repo = model.partition("@")[0]
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise RulerError(
                f"--model {model!r} is neither a directory nor REPO@REV",
                "pass a checkpoint directory or a Hugging Face repo such as zai-org/GLM-5.2-FP8@main",
            )
        from gh200.profiles import model_store

        directory = model_store() / repo.replace("/", "--")
    if directory.is_dir():
        return _inspect(directory)
    known = _known(repo)
    if known is not None:
        return known
    if model is not None and "@" in model:
        # Headers only, over the network: exact for any published checkpoint.
        return _inspect(model)
    raise RulerError(
        f"model {repo} is not on disk ({directory}) and the posts give no expert byte counts for it",
        f"pass {MODEL_FLAGS}, or --model DIR of the checkpoint",
    )


def _pick(flag: int | None, found: int | None) -> int | None:
    return flag if flag is not None else found


def resolve_model(
    profile: str | None,
    model: str | None,
    *,
    routed_expert_bytes: str | None,
    experts: int | None,
    active_experts: int | None,
    dense_bytes: str | None,
) -> r.ModelBytes:
    if profile is not None and model is not None:
        raise RulerError("both PROFILE and --model given", "give one of them")
    routed = parse_size(routed_expert_bytes)
    dense = parse_size(dense_bytes)
    found: Found | None = None
    complete = routed is not None and experts is not None and active_experts is not None
    if (profile is not None or model is not None) and not (complete and dense is not None):
        try:
            found = _lookup(profile, model)
        except RulerError:
            if not complete:
                raise
    values = {
        "routed_expert_bytes": _pick(routed, found.routed_expert_bytes if found else None),
        "n_routed_experts": _pick(experts, found.n_routed_experts if found else None),
        "n_active_experts": _pick(active_experts, found.n_active_experts if found else None),
    }
    missing = [name for name, value in values.items() if value is None]
    if missing:
        where = f" ({found.source} lacks {', '.join(missing)})" if found else ""
        raise RulerError(
            f"the ruler needs the model's expert geometry{where}", f"pass {MODEL_FLAGS} or a PROFILE"
        )
    overridden = [
        flag
        for flag, value in (
            ("--routed-expert-bytes", routed),
            ("--experts", experts),
            ("--active-experts", active_experts),
            ("--dense-bytes", dense),
        )
        if value is not None
    ]
    source = found.source if found else "flags"
    if found and overridden:
        source += f", overridden by {' '.join(overridden)}"
    try:
        return r.ModelBytes(
            routed_expert_bytes=int(values["routed_expert_bytes"] or 0),
            n_routed_experts=int(values["n_routed_experts"] or 0),
            n_active_experts=int(values["n_active_experts"] or 0),
            dense_bytes=dense if dense is not None else (found.dense_bytes if found else None),
            source=source,
        )
    except r.RulerInputError as err:
        raise _wrap(err) from None


def default_topology_path() -> Path:
    from gh200.paths import state_dir

    return state_dir() / "topology.json"


def resolve_bandwidths(
    overrides: list[str], topology_path: Path | None
) -> tuple[dict[str, r.Bandwidth], Path | None]:
    """Bandwidth per path name, and the topology file used (None when the posts' figures stood).

    A topology file replaces the posts' table as a whole: mixing a host's measured local path with
    the GH200's remote figure would compare two machines. Paths it lacks (remote on a one-node
    host, staged with one GPU) stay absent unless a flag gives them.
    """
    bandwidths: dict[str, r.Bandwidth] = {}
    used: Path | None = None
    path = topology_path
    if path is None:
        candidate = default_topology_path()
        path = candidate if candidate.is_file() else None
    if path is not None:
        doc = read_topology(path)
        for name in r.BANDWIDTH_NAMES:
            entry = doc["paths"].get(name)
            if entry:
                bandwidths[name] = r.Bandwidth(
                    float(entry["low_gbps"]), float(entry["high_gbps"]), f"probe topology {path}"
                )
        used = path
    else:
        bandwidths = {
            name: r.Bandwidth(low, high, r.POSTS_SOURCE) for name, (low, high) in r.POSTS_BANDWIDTHS.items()
        }
    for text in overrides:
        try:
            name, bw = r.parse_bandwidth(text)
        except r.RulerInputError as err:
            raise _wrap(err) from None
        bandwidths[name] = bw
    return bandwidths, used


def _value(record: dict[str, Any]) -> float | None:
    for key in ("median_output_tok_s", "output_tok_s_median", "output_tok_s"):
        value = record.get(key)
        if isinstance(value, dict):
            value = value.get("median")
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        ):
            return float(value)
    return None


def _label(record: dict[str, Any], fallback: str) -> str:
    parts = []
    for key in ("profile", "shape"):
        if isinstance(record.get(key), str):
            parts.append(record[key])
    if isinstance(record.get("concurrency"), int):
        parts.append(f"c{record['concurrency']}")
    return " ".join(parts) or fallback


def read_results(path: Path) -> list[tuple[str, float]]:
    """(label, median output tok/s) for every record in a smoke results file."""
    fix = 'write JSON Lines such as {"shape": "256:512", "concurrency": 1, "median_output_tok_s": 20.31}'
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RulerError(
            f"cannot read results file {path}: {err.strerror}", "check the --results path"
        ) from None
    records: list[Any]
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise RulerError(f"{path} line {number} is not JSON", fix) from None
    else:
        if isinstance(whole, dict):
            inner = whole.get("records", whole.get("results"))
            records = inner if isinstance(inner, list) else [whole]
        else:
            records = whole if isinstance(whole, list) else []
    out = []
    for number, record in enumerate(records, 1):
        if isinstance(record, dict):
            value = _value(record)
            if value is not None:
                out.append((_label(record, f"record {number}"), value))
    if not out:
        raise RulerError(f"{path} holds no record with a median output tok/s", fix)
    return out
