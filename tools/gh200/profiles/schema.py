"""The profile schema: one serving setup, pinned and typed.

Typed fields cover what the reference posts tune; anything else goes through `extra_args`.
Unknown keys are errors (a typo must not silently drop a setting).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

Engine = Literal["vllm", "ik_llama", "llama_cpp"]
Metric = Literal["output_tok_s", "total_tok_s", "prompt_tok_s", "decode_tok_s", "tpot_ms", "acceptance"]

KV_CACHE_DTYPES = ("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla", "f16", "q8_0")
SHAPE_RE = re.compile(r"^(\d+):(\d+)$")
# Names become file names (<name>.yaml, hosts/<host>.yaml): keep them short and path-free.
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,99}$"
HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
CPU_ITEM_RE = re.compile(r"(\d{1,9})(?:-(\d{1,9}))?", re.ASCII)
MAX_CPU_ID = 65535  # beyond any Linux host; stops "0-999999999" from allocating a billion ids


def parse_cpu_list(spec: str) -> set[int]:
    """numactl / cpuset syntax: '0-3,8,10-11'. ValueError names what is wrong."""
    cpus: set[int] = set()
    for raw in spec.split(","):
        part = raw.strip()
        if not part:
            raise ValueError(f"empty item in CPU list {spec!r}")
        match = CPU_ITEM_RE.fullmatch(part)
        if not match:
            raise ValueError(f"{part!r} in CPU list {spec!r} is not N or N-M")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if last > MAX_CPU_ID:
            raise ValueError(f"CPU {last} in {spec!r} is beyond any host (max {MAX_CPU_ID})")
        if last < first:
            raise ValueError(f"range {part!r} runs backwards")
        cpus.update(range(first, last + 1))
    return cpus


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageSpec(Strict):
    """The image a profile runs: an upstream reference, optionally with a bundle recipe on top."""

    ref: str = Field(description="upstream image by tag, e.g. vllm/vllm-openai:v0.33.0-aarch64")
    lock_key: str = Field(description="key in profiles/images.lock that holds the resolved digest")
    recipe: str | None = Field(default=None, description="containers/<recipe> builds on top of `ref`")
    platform: str = "linux/arm64"

    @field_validator("ref")
    @classmethod
    def _ref_has_tag(cls, value: str) -> str:
        name = value.split("@", 1)[0]
        if ":" not in name.rsplit("/", 1)[-1]:
            raise ValueError(
                "image ref needs an explicit tag (e.g. repo:v1.2.3); 'latest' by omission is not pinned"
            )
        return value


class GraftSpec(Strict):
    """An MTP layer grafted onto the base checkpoint (GLM-5.2 AWQ + FP8 MTP)."""

    mtp_from: str = Field(description="HF repo holding the MTP tensors (delta repo or full FP8 checkpoint)")
    revision: str = "main"
    lock_key: str
    mtp_layers: int = Field(default=1, ge=1)


class DraftSpec(Strict):
    """A separate draft model (llama.cpp speculative decoding)."""

    file: str


class ModelSpec(Strict):
    repo: str = Field(description="Hugging Face repo id (org/name), or local/<name> for generated models")
    revision: str = "main"
    lock_key: str
    files: list[str] = Field(default_factory=lambda: ["*"], description="allow patterns for the fetch")
    served_name: str
    format: Literal["safetensors", "gguf"] = "safetensors"
    gguf_file: str | None = Field(default=None, description="first GGUF shard, relative to the model dir")
    mtp_layers: int = Field(default=0, ge=0, description="usable MTP layers the checkpoint itself ships")
    graft: GraftSpec | None = None
    draft: DraftSpec | None = None
    size_gib: float | None = Field(default=None, gt=0, description="approximate weight footprint")

    @field_validator("repo")
    @classmethod
    def _repo_form(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value):
            raise ValueError("model repo must look like org/name")
        return value

    @model_validator(mode="after")
    def _gguf_file(self) -> ModelSpec:
        if self.format == "gguf" and not self.gguf_file:
            raise ValueError("format gguf needs gguf_file (the first shard to load)")
        return self

    @property
    def provides_mtp(self) -> bool:
        return self.mtp_layers > 0 or self.graft is not None


class SpeculativeSpec(Strict):
    method: Literal["mtp", "draft"]
    num_speculative_tokens: int = Field(ge=1, le=16)


class EngineSettings(Strict):
    """Engine flags the posts tune. None means "engine default" and renders nothing."""

    tensor_parallel_size: int = Field(default=1, ge=1)
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    disable_custom_all_reduce: bool = False
    cpu_offload_gb: float | None = Field(
        default=None, ge=0, description="GiB per rank (vLLM --cpu-offload-gb)"
    )
    offload_backend: Literal["uva", "prefetch"] | None = None
    cpu_offload_params: list[str] = Field(default_factory=list)
    kv_cache_dtype: str | None = None
    max_model_len: int | None = Field(default=None, ge=1)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    block_size: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    generation_config: str | None = None
    numa_bind: bool = False
    speculative: SpeculativeSpec | None = None
    threads: int | None = Field(default=None, ge=1, description="CPU engines: worker threads")
    ctx_size: int | None = Field(default=None, ge=1, description="llama.cpp context size")
    parallel: int | None = Field(default=None, ge=1, description="llama.cpp server slots")
    flash_attn: Literal["on", "off", "auto"] | None = None
    metrics: bool = True
    extra_args: list[str] = Field(default_factory=list)

    @field_validator("kv_cache_dtype")
    @classmethod
    def _kv_dtype(cls, value: str | None) -> str | None:
        if value is not None and value not in KV_CACHE_DTYPES:
            raise ValueError(f"unknown kv_cache_dtype {value!r}; one of {', '.join(KV_CACHE_DTYPES)}")
        return value


def _cpu_list(value: str | None) -> str | None:
    if value is not None:
        parse_cpu_list(value)
    return value


class RankPlacement(Strict):
    rank: int = Field(ge=0)
    gpu: int = Field(ge=0)
    numa_node: int = Field(ge=0, description="Grace NUMA node whose CPUs and memory serve this rank")
    cpus: str | None = Field(
        default=None, description="explicit CPU list (numactl syntax) instead of the node"
    )


class CpuPlacement(Strict):
    numa_node: int | None = Field(default=None, ge=0)
    cpus: str | None = None
    membind: bool = True


class Placement(Strict):
    ranks: list[RankPlacement] = Field(default_factory=list)
    cpu: CpuPlacement | None = None


class HealthSpec(Strict):
    endpoint: str = "/health"
    models_endpoint: str = "/v1/models"
    timeout_s: int = Field(default=1800, ge=1)


class Expected(Strict):
    """A number the posts measured, which `gh200 smoke --gate` compares against."""

    shape: str = Field(description="input:output tokens, e.g. 2048:512")
    concurrency: int = Field(default=1, ge=1)
    metric: Metric = "output_tok_s"
    # warm_*: over the warm runs only, where the post left the cold run out of its figure.
    statistic: Literal["median", "mean", "best", "warm_median", "warm_mean", "warm_best"] = "median"
    value: float = Field(gt=0)
    source: str = Field(description="post and table the number comes from")
    tolerance: float | None = Field(default=None, gt=0, lt=1)

    @property
    def warm_only(self) -> bool:
        return self.statistic.startswith("warm_")

    @field_validator("shape")
    @classmethod
    def _shape(cls, value: str) -> str:
        if not SHAPE_RE.match(value):
            raise ValueError("shape must be INPUT:OUTPUT tokens, e.g. 2048:512")
        return value

    @property
    def input_tokens(self) -> int:
        return int(parse_shape(self.shape)[0])

    @property
    def output_tokens(self) -> int:
        return int(parse_shape(self.shape)[1])


def parse_shape(shape: str) -> tuple[int, int]:
    match = SHAPE_RE.match(shape)
    if not match:
        raise ValueError(f"bad shape {shape!r}")
    return int(match.group(1)), int(match.group(2))


class Profile(Strict):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    name: str = Field(pattern=NAME_PATTERN)
    description: str
    source: str = Field(description="where the settings come from (post and section)")
    engine: Engine
    host: str = Field(default="dual-gh200", pattern=HOST_PATTERN)
    image: ImageSpec
    model: ModelSpec
    settings: EngineSettings = Field(default_factory=EngineSettings)
    env: dict[str, str] = Field(default_factory=dict)
    placement: Placement = Field(default_factory=Placement)
    port: int = Field(ge=1, le=65535)
    bind_address: str = "127.0.0.1"
    api_key_file: str | None = None
    shm_size: str | None = None
    health: HealthSpec = Field(default_factory=HealthSpec)
    expected: list[Expected] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"env name {key!r} is not a valid variable name")
        return value


class Stack(Strict):
    """Profiles that run together on one host (the fast/slow pair)."""

    schema_version: Literal[1] = Field(default=1, alias="schema")
    kind: Literal["stack"]
    name: str = Field(pattern=NAME_PATTERN)
    description: str
    source: str
    host: str = Field(default="dual-gh200", pattern=HOST_PATTERN)
    profiles: list[Annotated[str, StringConstraints(pattern=NAME_PATTERN)]] = Field(min_length=2)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class HostGpu(Strict):
    index: int = Field(ge=0)
    name: str
    memory_gib: float = Field(gt=0)
    numa_node: int = Field(ge=0)


class HostNumaNode(Strict):
    id: int = Field(ge=0)
    cpus: str
    memory_gib: float = Field(gt=0)

    _cpus = field_validator("cpus")(_cpu_list)


class HostSpec(Strict):
    """What a host offers; profiles are validated against it."""

    name: str
    description: str
    gpus: list[HostGpu] = Field(default_factory=list)
    numa_nodes: list[HostNumaNode] = Field(min_length=1)
