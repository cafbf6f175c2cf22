"""The bandwidth ruler: active expert bytes per token over a memory path's bandwidth = decode ceiling.

Pure arithmetic and verdicts, standard library only (so that the GPU host can import it without our
virtual environment). The method and its inputs come from the GLM-5.2 post ("A Bandwidth Guestimate",
/work/shared/reference/gh200-part3-glm-5.2.txt, lines 33-45):

* routed expert bytes x active / experts = bytes of experts touched per generated token
  (684 GiB x 8 / 256 = 21.38 GiB for GLM-5.2 FP8);
* that stream divided by the bandwidth of the path it crosses gives tokens per second.

Units. Checkpoint sizes are counted in bytes and shown in GiB (2**30) and GB (10**9); bandwidths are
decimal GB/s (10**9 bytes per second), as every measured figure in the posts is. The post divided
its GiB count by GB/s directly ("21.38 GiB / 377 GB/s"). That overstates tokens per second by
2**30 / 10**9 = 1.0737 against the unit-correct division; the post calls the mismatch "slightly
conservative", but the direction is the other way: the GiB-over-GB/s figure is the *higher* one.
The ruler therefore shows both: `post` (GiB count / GB/s, the post's arithmetic) and `exact`
(bytes / bytes per second). A row's band runs from the exact figure at the low bandwidth to the
post figure at the high bandwidth; verdicts use that band.

With the post's inputs the arithmetic gives (see tests/unit/ruler/test_ruler.py):
  serialised and two-module-no-overlap: 16.43-16.56 exact, 17.64-17.78 post   (post: "15-18")
  ideal two-module pipeline:           32.85-33.11 exact, 35.27-35.56 post   (post: "30-36")
  experts remote (133 GB/s):           5.79 exact, 6.22 post                  (post: "about 6")
  staged Hopper-to-Hopper (57-58):     2.48-2.53 exact, 2.67-2.71 post        (post: "2-3")
The post's upper ends (18, 36) are its GiB/GB-s figures rounded; its lower ends (15, 30) sit below
both conventions: they are a rounded-down margin, not a product of the stated inputs (the nearest
arithmetic, converting the bytes to GB *and* the bandwidth to GiB/s, gives 15.3 / 30.6). The ruler
does not invent that margin; it reports the computed band, which lies inside each of the post's.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 1024**3
GB = 10**9
# The factor the post mentions: one GiB is 1.0737 GB.
GIB_PER_GB = GIB / GB

# The posts' Part 1 topology table (quoted in gh200-part2-deepseek-v4-flash.txt lines 18-24 and
# gh200-part3-glm-5.2.txt lines 25-31), decimal GB/s. Used when no probe topology file exists.
POSTS_SOURCE = "posts' Part 1 table (gh200-part3-glm-5.2.txt lines 25-31)"
POSTS_BANDWIDTHS: dict[str, tuple[float, float]] = {
    "hbm": (3700.0, 3700.0),  # "Local HBM about 3,700 GB/s"
    "local": (377.0, 380.0),  # "Local Grace LPDDR to local Hopper about 377-380 GB/s"
    "remote": (133.0, 133.0),  # "Remote Grace LPDDR to Hopper about 133 GB/s"
    "staged": (57.0, 58.0),  # "Hopper to Hopper staged copy about 57-58 GB/s"
}
BANDWIDTH_NAMES = tuple(POSTS_BANDWIDTHS)
PATH_LABELS = {
    "hbm": "local HBM",
    "local": "local host memory to GPU (C2C on GH200)",
    "remote": "remote host memory to GPU",
    "staged": "GPU to GPU (staged Hopper-to-Hopper on GH200)",
}


@dataclass(frozen=True)
class KnownModel:
    """Expert geometry quoted in a reference post, for models not on disk."""

    repo: str
    routed_expert_bytes: int
    n_routed_experts: int
    n_active_experts: int
    moe_layers: int
    source: str


# Only figures the posts state. GLM-5.2 FP8: "the routed expert weights are about 684 GiB across
# 76 MoE layers. GLM-5.2 has 256 routed experts per MoE layer and activates 8 experts per token"
# (gh200-part3-glm-5.2.txt line 35). The posts give no byte counts for the AWQ INT4 or DeepSeek
# checkpoints, so those must come from `--model DIR` (checkpoint headers) or explicit flags.
KNOWN_MODELS: dict[str, KnownModel] = {
    "zai-org/GLM-5.2-FP8": KnownModel(
        repo="zai-org/GLM-5.2-FP8",
        routed_expert_bytes=684 * GIB,
        n_routed_experts=256,
        n_active_experts=8,
        moe_layers=76,
        source="GLM-5.2 post, 'A Bandwidth Guestimate' (gh200-part3-glm-5.2.txt line 35)",
    ),
}


class RulerInputError(ValueError):
    """A ruler input that cannot be used; the CLI turns it into BadInput."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_bytes(text: str) -> int:
    """'684GiB', '734 GB', '1.5TiB', '123456' -> bytes. GB/TB are decimal, GiB/TiB binary."""
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise RulerInputError(
            f"cannot read the size {text!r}",
            "give bytes as a number with an optional unit: B, KB, MB, GB, TB (decimal) or "
            "KiB, MiB, GiB, TiB (binary), e.g. 684GiB",
        )
    value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise RulerInputError(f"size {text!r} is not positive", "give a size above zero")
    return round(value)


@dataclass(frozen=True)
class Bandwidth:
    """A path's bandwidth range in decimal GB/s and where it came from."""

    low_gbps: float
    high_gbps: float
    source: str


def parse_bandwidth(text: str, source: str = "--bandwidth") -> tuple[str, Bandwidth]:
    """'local=377:380' or 'remote=133' -> (name, Bandwidth) in decimal GB/s."""
    fix = (
        f"write NAME=GBPS or NAME=LOW:HIGH with NAME one of {', '.join(BANDWIDTH_NAMES)}, e.g. local=377:380"
    )
    name, sep, value = text.partition("=")
    name = name.strip().lower()
    if not sep or name not in BANDWIDTH_NAMES:
        raise RulerInputError(f"cannot read the bandwidth {text!r}", fix)
    parts = value.split(":")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise RulerInputError(f"cannot read the bandwidth {text!r}", fix) from None
    if len(numbers) not in (1, 2) or any(not math.isfinite(n) or n <= 0 for n in numbers):
        raise RulerInputError(f"bandwidth {text!r} needs one or two positive GB/s figures", fix)
    low, high = min(numbers), max(numbers)
    return name, Bandwidth(low, high, source)


@dataclass(frozen=True)
class ModelBytes:
    """What a token drags across a memory path: the routed expert pool and the dense remainder."""

    routed_expert_bytes: int
    n_routed_experts: int
    n_active_experts: int
    dense_bytes: int | None
    source: str

    def __post_init__(self) -> None:
        if self.routed_expert_bytes <= 0:
            raise RulerInputError("routed expert bytes must be positive", "pass --routed-expert-bytes")
        if self.n_routed_experts <= 0 or self.n_active_experts <= 0:
            raise RulerInputError(
                "expert counts must be positive", "pass --experts and --active-experts above zero"
            )
        if self.n_active_experts > self.n_routed_experts:
            raise RulerInputError(
                f"{self.n_active_experts} active experts exceed {self.n_routed_experts} routed experts",
                "--active-experts is the number chosen per token, at most --experts",
            )
        if self.dense_bytes is not None and self.dense_bytes < 0:
            raise RulerInputError("dense bytes must not be negative", "pass --dense-bytes >= 0")

    @property
    def active_fraction(self) -> float:
        return self.n_active_experts / self.n_routed_experts

    @property
    def active_expert_bytes(self) -> float:
        """Expert bytes touched per generated token (the post's 'active expert stream')."""
        return self.routed_expert_bytes * self.active_fraction


@dataclass(frozen=True)
class RowSpec:
    """One assumption of the post's table: how the stream is split and which path it crosses."""

    key: str
    assumption: str
    path: str
    modules: int  # the expert stream is split over this many modules
    sequential_stages: int  # stages a token waits for one after another
    aggregate: bool = False


# The post's five rows, in its order and wording (gh200-part3-glm-5.2.txt lines 37-43).
ROWS: tuple[RowSpec, ...] = (
    RowSpec("serialised", "One module effectively serializes the stream", "local", 1, 1),
    RowSpec("split_no_overlap", "Two modules split the layers, no pipeline overlap", "local", 2, 2),
    RowSpec(
        "split_pipeline", "Two modules split the layers, ideal steady pipeline", "local", 2, 1, aggregate=True
    ),
    RowSpec("remote", "Offloaded experts are interleaved or remote", "remote", 1, 1),
    RowSpec("staged", "Traffic falls onto the staged Hopper-to-Hopper path", "staged", 1, 1),
)


@dataclass(frozen=True)
class Row:
    key: str
    assumption: str
    path: str
    path_label: str
    modules: int
    sequential_stages: int
    aggregate: bool
    stage_bytes: float  # expert bytes one module streams per token
    stage_gib: float
    stage_gb: float
    token_bytes: float  # expert bytes whose transfer time a token waits for
    bandwidth: Bandwidth
    tok_s_exact: tuple[float, float]  # bytes / (GB/s x 1e9)
    tok_s_post: tuple[float, float]  # GiB count / GB/s, the post's arithmetic
    band: tuple[float, float]  # exact-at-low .. post-at-high
    tok_s_with_dense: tuple[float, float] | None  # exact, dense weights read from HBM as well

    @property
    def stream_text(self) -> str:
        text = f"{self.stage_gib:.2f} GiB/token"
        if self.modules > 1:
            text += " per module"
            if self.sequential_stages > 1:
                text += f", {self.sequential_stages} sequential stages"
        return text


def _tok_s(token_bytes: float, gbps: float) -> float:
    return gbps * GB / token_bytes


def compute_rows(model: ModelBytes, bandwidths: dict[str, Bandwidth]) -> list[Row]:
    """The post's rows for `model` over `bandwidths`; a row whose path has no bandwidth is left out
    (see missing_rows). `hbm` is only used for the dense column."""
    rows: list[Row] = []
    active = model.active_expert_bytes
    for spec in ROWS:
        if spec.path not in bandwidths:
            continue
        bw = bandwidths[spec.path]
        stage = active / spec.modules
        token = stage * spec.sequential_stages
        exact = (_tok_s(token, bw.low_gbps), _tok_s(token, bw.high_gbps))
        post = (bw.low_gbps / (token / GIB), bw.high_gbps / (token / GIB))
        with_dense: tuple[float, float] | None = None
        if model.dense_bytes and "hbm" in bandwidths:
            # Dense weights (attention, shared experts, norms, head) are read from HBM every token;
            # with the layers split, each module reads its half, and stages add up as for experts.
            dense_token = model.dense_bytes / spec.modules * spec.sequential_stages
            hbm = bandwidths["hbm"]
            with_dense = (
                1.0 / (token / (bw.low_gbps * GB) + dense_token / (hbm.low_gbps * GB)),
                1.0 / (token / (bw.high_gbps * GB) + dense_token / (hbm.high_gbps * GB)),
            )
        rows.append(
            Row(
                key=spec.key,
                assumption=spec.assumption,
                path=spec.path,
                path_label=PATH_LABELS[spec.path],
                modules=spec.modules,
                sequential_stages=spec.sequential_stages,
                aggregate=spec.aggregate,
                stage_bytes=stage,
                stage_gib=stage / GIB,
                stage_gb=stage / GB,
                token_bytes=token,
                bandwidth=bw,
                tok_s_exact=exact,
                tok_s_post=post,
                band=(min(exact + post), max(exact + post)),
                tok_s_with_dense=with_dense,
            )
        )
    return rows


def missing_rows(bandwidths: dict[str, Bandwidth]) -> list[tuple[str, str]]:
    """(row key, path) for rows that compute_rows leaves out for want of a bandwidth."""
    return [(spec.key, spec.path) for spec in ROWS if spec.path not in bandwidths]


def round_band(band: tuple[float, float]) -> tuple[int, int]:
    """Whole tok/s outward (floor, ceil), the way the post writes ranges."""
    return math.floor(band[0]), math.ceil(band[1])


def band_text(band: tuple[float, float]) -> str:
    """'about 6' when both ends round to one whole number, else the outward range '16-18'."""
    if round(band[0]) == round(band[1]):
        return f"about {round(band[0])}"
    low, high = round_band(band)
    return f"{low}-{high}"


# Verdicts in the post's language (gh200-part3-glm-5.2.txt lines 45 and 61).
VERDICTS = {
    "local_streaming": (
        "near the serialised local ceiling: the system behaves as if the active experts are streamed "
        "over local C2C (the local host-memory-to-GPU path); placement looks right"
    ),
    "partial_overlap": (
        "above the serialised ceiling but below the ideal pipeline: partial pipeline overlap across "
        "the two modules (the post's 20.31 tok/s FP8 run landed here)"
    ),
    "ideal_pipeline": "at the ideal two-module steady pipeline: both modules stream their halves at once",
    "above_ceiling": (
        "above every bandwidth ceiling: fewer expert bytes cross the path than assumed (experts "
        "resident in HBM, a smaller quantisation, speculative decoding such as MTP) or the inputs are wrong"
    ),
    "remote_or_cross_module": (
        "in the remote/cross-module region (the post's 2-6 tok/s): the layout is paying remote-memory "
        "or cross-module traffic, so the settings are wrong: check NUMA binding and where offloaded "
        "experts live"
    ),
}


@dataclass(frozen=True)
class Verdict:
    measured_tok_s: float
    verdict: str
    message: str
    nearest_row: str
    nearest_assumption: str
    distances: dict[str, float] = field(default_factory=dict)  # |ln(measured / band)|, 0 inside
    label: str | None = None  # e.g. the shape a results record came from


def _log_distance(value: float, band: tuple[float, float]) -> float:
    low, high = band
    if value < low:
        return math.log(low / value)
    if value > high:
        return math.log(value / high)
    return 0.0


def judge(measured: float, rows: list[Row], label: str | None = None) -> Verdict:
    """Where a measured output tok/s sits on the ruler, and what that suggests."""
    if not math.isfinite(measured) or measured <= 0:
        raise RulerInputError(f"measured {measured!r} tok/s is not a positive number", "pass --measured TOKS")
    by_key = {row.key: row for row in rows}
    if "serialised" not in by_key or "split_pipeline" not in by_key:
        raise RulerInputError(
            "placing a measurement needs the local path's bandwidth", "pass --bandwidth local=GBPS"
        )
    distances = {row.key: round(_log_distance(measured, row.band), 4) for row in rows}
    serial, pipeline = by_key["serialised"].band, by_key["split_pipeline"].band
    if measured > pipeline[1]:
        verdict, nearest = "above_ceiling", "split_pipeline"
    elif measured >= pipeline[0]:
        verdict, nearest = "ideal_pipeline", "split_pipeline"
    elif measured > serial[1]:
        verdict, nearest = "partial_overlap", min(("serialised", "split_pipeline"), key=distances.__getitem__)
    elif measured >= serial[0]:
        verdict, nearest = "local_streaming", "serialised"
    else:
        # Below the local ceiling: whichever of local, remote and staged it sits nearest (log scale).
        candidates = [key for key in ("serialised", "remote", "staged") if key in distances]
        nearest = min(candidates, key=distances.__getitem__)
        verdict = "local_streaming" if nearest == "serialised" else "remote_or_cross_module"
    message = VERDICTS[verdict]
    if verdict == "local_streaming" and measured < serial[0]:
        message += (
            f" ({(1 - measured / serial[0]) * 100:.0f}% under the ceiling: routing, attention and "
            "synchronisation costs that the ruler leaves out)"
        )
    return Verdict(
        measured_tok_s=measured,
        verdict=verdict,
        message=message,
        nearest_row=nearest,
        nearest_assumption=by_key[nearest].assumption,
        distances=distances,
        label=label,
    )


def row_to_json(row: Row) -> dict[str, Any]:
    data = asdict(row)
    data["bandwidth"] = asdict(row.bandwidth)
    data["stream_text"] = row.stream_text
    data["band_rounded"] = list(round_band(row.band))
    data["band_text"] = band_text(row.band)
    return data


def model_to_json(model: ModelBytes) -> dict[str, Any]:
    data = asdict(model)
    data["active_fraction"] = model.active_fraction
    data["active_expert_bytes"] = model.active_expert_bytes
    data["active_expert_gib"] = model.active_expert_bytes / GIB
    data["active_expert_gb"] = model.active_expert_bytes / GB
    data["routed_expert_gib"] = model.routed_expert_bytes / GIB
    return data


UNITS_NOTE = (
    "bytes shown as GiB (2^30) and GB (10^9); bandwidth in decimal GB/s. 'post' = GiB count / GB/s "
    "(the post's arithmetic, 7.4% high); 'exact' = bytes / (GB/s x 10^9)"
)
