"""Render a profile as the engine's argv, its environment, a container spec, or compose YAML.

Deterministic: the same profile gives byte-identical output (golden-file tested). The container
spec is what `gh200 deploy` hands to the Docker SDK.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from gh200 import __version__
from gh200.profiles.locks import image_pin, model_pins
from gh200.profiles.schema import Profile

MODELS_IN_CONTAINER = "/models"
LABEL_PREFIX = "io.gh200"
DEFAULT_MODEL_STORE = "/srv/models"
# Docker's default seccomp profile allows mbind/set_mempolicy/get_mempolicy only with CAP_SYS_NICE
# (Podman's own profile allows them always, which hides the problem): without it numactl's
# --membind exits and vLLM's --numa-bind silently drops --membind.
NUMA_CAPABILITY = "SYS_NICE"
# llama.cpp and ik_llama.cpp read the key only from --api-key / --api-key-file (not LLAMA_API_KEY);
# deploy mounts a read-only copy of the profile's key file here.
API_KEY_IN_CONTAINER = "/run/secrets/gh200-api-key"
# vLLM's compile caches (torch.compile/Inductor and Triton under VLLM_CACHE_ROOT, Triton kernels
# built outside torch.compile, DeepGEMM's JIT, FlashInfer's JIT, the CUDA PTX cache) live in one
# named volume per profile, so a redeploy reuses them instead of recompiling.
COMPILE_CACHE_IN_CONTAINER = "/var/cache/gh200"
COMPILE_CACHE_ENV = {
    "VLLM_CACHE_ROOT": f"{COMPILE_CACHE_IN_CONTAINER}/vllm",
    "TRITON_CACHE_DIR": f"{COMPILE_CACHE_IN_CONTAINER}/triton",
    "DG_JIT_CACHE_DIR": f"{COMPILE_CACHE_IN_CONTAINER}/deep_gemm",
    "FLASHINFER_WORKSPACE_BASE": f"{COMPILE_CACHE_IN_CONTAINER}/flashinfer",
    "CUDA_CACHE_PATH": f"{COMPILE_CACHE_IN_CONTAINER}/nv-compute",
}


def model_store() -> Path:
    """Where fetched checkpoints live on the host ($GH200_MODELS, default /srv/models)."""
    return Path(os.environ.get("GH200_MODELS", DEFAULT_MODEL_STORE))


def model_dir_name(profile: Profile) -> str:
    """Directory name of the profile's model in the store; a grafted model gets its own."""
    name = profile.model.repo.replace("/", "--")
    return f"{name}--mtp-graft" if profile.model.graft else name


def model_host_dir(profile: Profile, store: Path | None = None) -> Path:
    if profile.model.repo.startswith("local/"):
        from gh200.paths import cache_dir

        return (store or cache_dir() / "models") / model_dir_name(profile)
    return (store or model_store()) / model_dir_name(profile)


def model_container_dir(profile: Profile) -> str:
    return f"{MODELS_IN_CONTAINER}/{profile.model.served_name}"


def binds_memory(profile: Profile) -> bool:
    """Whether the server sets a NUMA memory policy (vLLM --numa-bind, numactl --membind)."""
    if profile.engine == "vllm":
        return profile.settings.numa_bind and bool(profile.placement.ranks)
    cpu = profile.placement.cpu
    return cpu is not None and cpu.numa_node is not None and cpu.membind


def compile_cache_volume(profile: Profile) -> str:
    """The named volume holding a vLLM profile's compile caches (kept across redeploys)."""
    return f"gh200-cache-{profile.name}"


def model_files(profile: Profile) -> list[str]:
    """Files the engine loads by name, relative to the model directory (may be shard patterns)."""
    files = [profile.model.gguf_file] if profile.model.gguf_file else []
    if profile.model.draft is not None:
        files.append(profile.model.draft.file)
    return files


def resolve_model_files(profile: Profile, directory: Path) -> dict[str, str]:
    """Each file the engine loads, resolved against the fetched model: exactly one match each.

    There is no shell in the container to expand `UD-IQ2_XXS/*-00001-of-*.gguf`, so the pattern
    becomes the one file it names here. ValueError says what was found instead.
    """
    resolved: dict[str, str] = {}
    for name in model_files(profile):
        found = sorted(str(p.relative_to(directory)) for p in directory.glob(name) if p.is_file())
        if len(found) != 1:
            what = "nothing" if not found else f"{len(found)} files: {', '.join(found[:4])}"
            what += " ..." if len(found) > 4 else ""
            raise ValueError(f"{name!r} matches {what} in {directory}")
        resolved[name] = found[0]
    return resolved


def profile_hash(profile: Profile) -> str:
    canonical = json.dumps(
        profile.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _num(value: float) -> str:
    return f"{value:g}"


def vllm_argv(profile: Profile) -> list[str]:
    s = profile.settings
    argv = ["vllm", "serve", model_container_dir(profile), "--served-model-name", profile.model.served_name]
    argv += ["--host", "0.0.0.0", "--port", str(profile.port)]
    argv += ["--tensor-parallel-size", str(s.tensor_parallel_size)]
    if s.distributed_executor_backend:
        argv += ["--distributed-executor-backend", s.distributed_executor_backend]
    if s.disable_custom_all_reduce:
        argv.append("--disable-custom-all-reduce")
    if s.offload_backend:
        argv += ["--offload-backend", s.offload_backend]
    if s.cpu_offload_gb is not None:
        argv += ["--cpu-offload-gb", _num(s.cpu_offload_gb)]
    if s.cpu_offload_params:
        argv += ["--cpu-offload-params", *s.cpu_offload_params]
    ranks = sorted(profile.placement.ranks, key=lambda r: r.rank)
    if s.numa_bind and ranks:
        argv += ["--numa-bind", "--numa-bind-nodes", *[str(r.numa_node) for r in ranks]]
        # One list per rank or none: vLLM refuses an empty entry (validation reports partial lists).
        if all(r.cpus for r in ranks):
            argv += ["--numa-bind-cpus", *[r.cpus or "" for r in ranks]]
    if s.block_size is not None:
        argv += ["--block-size", str(s.block_size)]
    if s.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", _num(s.gpu_memory_utilization)]
    if s.kv_cache_dtype:
        argv += ["--kv-cache-dtype", s.kv_cache_dtype]
    if s.max_model_len is not None:
        argv += ["--max-model-len", str(s.max_model_len)]
    if s.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(s.max_num_batched_tokens)]
    if s.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(s.max_num_seqs)]
    if s.generation_config:
        argv += ["--generation-config", s.generation_config]
    if s.speculative is not None:
        config = {
            "method": s.speculative.method,
            "num_speculative_tokens": s.speculative.num_speculative_tokens,
        }
        argv += ["--speculative-config", json.dumps(config, separators=(",", ":"))]
        # Acceptance per response (rate, mean acceptance length, histogram): other traffic on the
        # server cannot pollute it the way it pollutes /metrics deltas.
        argv += ["--per-request-spec-decode-metrics", "summary"]
    # usage.prompt_tokens_details.cached_tokens: the bench's prefix-cache guard needs it.
    argv.append("--enable-prompt-tokens-details")
    return argv + list(s.extra_args)


def llama_argv(profile: Profile, files: dict[str, str] | None = None) -> list[str]:
    """llama.cpp and ik_llama.cpp `llama-server`; a node-bound CPU profile runs under numactl.

    `files` maps a model file pattern to the file deploy resolved it to (see resolve_model_files).
    """
    s = profile.settings
    model_dir = model_container_dir(profile)
    files = files or {}
    argv: list[str] = []
    cpu = profile.placement.cpu
    if cpu is not None and cpu.numa_node is not None:
        argv += ["numactl", f"--cpunodebind={cpu.numa_node}"]
        if cpu.membind:
            argv.append(f"--membind={cpu.numa_node}")
    argv += [
        "llama-server",
        "-m",
        f"{model_dir}/{files.get(profile.model.gguf_file or '', profile.model.gguf_file)}",
        "--alias",
        profile.model.served_name,
    ]
    argv += ["--host", "0.0.0.0", "--port", str(profile.port)]
    if s.threads is not None:
        argv += ["-t", str(s.threads)]
    if s.ctx_size is not None:
        argv += ["-c", str(s.ctx_size)]
    if s.parallel is not None:
        argv += ["-np", str(s.parallel)]
    if s.flash_attn is not None:
        argv += ["-fa", s.flash_attn]
    if s.metrics:
        argv.append("--metrics")
    if s.speculative is not None and s.speculative.method == "draft" and profile.model.draft is not None:
        draft = profile.model.draft.file
        argv += ["-md", f"{model_dir}/{files.get(draft, draft)}"]
        if profile.engine == "llama_cpp":
            argv += [
                "--spec-type",
                "draft-simple",
                "--spec-draft-n-max",
                str(s.speculative.num_speculative_tokens),
            ]
        else:
            # ik_llama.cpp refuses the legacy --draft-max (common/common.cpp at the pinned commit);
            # its one form is a --spec-type stage. p_min is left at the parser's default, as
            # llama.cpp's draft-simple above leaves its own.
            argv += ["--spec-type", f"draft:n_max={s.speculative.num_speculative_tokens}"]
    if profile.api_key_file:
        argv += ["--api-key-file", API_KEY_IN_CONTAINER]
    return argv + list(s.extra_args)


def argv(profile: Profile, files: dict[str, str] | None = None) -> list[str]:
    return vllm_argv(profile) if profile.engine == "vllm" else llama_argv(profile, files)


def env(profile: Profile) -> dict[str, str]:
    """The container environment: the profile's own variables, sorted (secrets never live here)."""
    return dict(sorted(profile.env.items()))


def container_env(profile: Profile) -> dict[str, str]:
    """The profile's environment plus what the image itself reads: the llama.cpp images' health
    check probes $LLAMA_ARG_PORT, so it must name the port the server listens on."""
    variables = env(profile)
    if profile.engine != "vllm":
        variables.setdefault("LLAMA_ARG_PORT", str(profile.port))
    else:
        for key, value in COMPILE_CACHE_ENV.items():
            variables.setdefault(key, value)
    return dict(sorted(variables.items()))


def _cpuset(profile: Profile) -> tuple[str | None, str | None]:
    from gh200.profiles.loader import load_host
    from gh200.profiles.schema import parse_cpu_list

    node_cpus = {n.id: n.cpus for n in load_host(profile.host).numa_nodes}
    cpus: set[int] = set()
    mems: set[int] = set()
    for rank in profile.placement.ranks:
        spec = rank.cpus or node_cpus.get(rank.numa_node)
        if spec:
            cpus |= parse_cpu_list(spec)
        mems.add(rank.numa_node)
    cpu = profile.placement.cpu
    if cpu is not None:
        spec = cpu.cpus or (node_cpus.get(cpu.numa_node) if cpu.numa_node is not None else None)
        if spec:
            cpus |= parse_cpu_list(spec)
        if cpu.numa_node is not None and cpu.membind:
            mems.add(cpu.numa_node)
    return (_compact(cpus) if cpus else None, _compact(mems) if mems else None)


def _compact(values: set[int]) -> str:
    ordered = sorted(values)
    parts: list[str] = []
    start = prev = ordered[0]
    for value in ordered[1:]:
        if value == prev + 1:
            prev = value
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = value
    parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)


def labels(profile: Profile, stack: str | None = None) -> dict[str, str]:
    pins = model_pins(profile)
    image = image_pin(profile)
    out = {
        f"{LABEL_PREFIX}.profile": profile.name,
        f"{LABEL_PREFIX}.profile-hash": profile_hash(profile),
        f"{LABEL_PREFIX}.image": image.pinned_ref if image.state == "locked" else image.ref,
        f"{LABEL_PREFIX}.image-recipe": profile.image.recipe or "",
        f"{LABEL_PREFIX}.model": profile.model.repo,
        f"{LABEL_PREFIX}.model-revision": pins[0].value or f"{profile.model.revision} ({pins[0].state})",
        f"{LABEL_PREFIX}.bundle-version": __version__,
    }
    if stack:
        out[f"{LABEL_PREFIX}.stack"] = stack
    return out


def container_spec(
    profile: Profile, stack: str | None = None, files: dict[str, str] | None = None
) -> dict[str, Any]:
    """Everything `gh200 deploy` passes to the Docker SDK, with the image still by recipe/base.

    `files`: model file patterns resolved against the model store (deploy passes them; a render
    shows the patterns as written).
    """
    cpus, mems = _cpuset(profile)
    image = image_pin(profile)
    spec: dict[str, Any] = {
        "name": f"gh200-{profile.name}",
        "image": {"base": image.pinned_ref, "state": image.state, "recipe": profile.image.recipe},
        "command": argv(profile, files),
        "environment": container_env(profile),
        "ports": {f"{profile.port}/tcp": [profile.bind_address, profile.port]},
        "gpus": [r.gpu for r in sorted(profile.placement.ranks, key=lambda r: r.rank)],
        "cpuset_cpus": cpus,
        "cpuset_mems": mems,
        "volumes": {
            str(model_host_dir(profile)): {"bind": model_container_dir(profile), "mode": "ro"},
        },
        "labels": labels(profile, stack),
        "health": {
            "url": f"http://{profile.bind_address}:{profile.port}{profile.health.endpoint}",
            "models_url": f"http://{profile.bind_address}:{profile.port}{profile.health.models_endpoint}",
            "timeout_s": profile.health.timeout_s,
        },
    }
    if profile.engine == "vllm":
        # Tensor-parallel workers share tensors over /dev/shm and pin host memory for offload.
        # With the host's IPC namespace the host's /dev/shm is used: no shm_size (Podman refuses
        # the pair, Docker ignores the size).
        spec["ipc_mode"] = "host"
        spec["ulimits"] = {"memlock": [-1, -1], "stack": [67108864, 67108864]}
        spec["volumes"][compile_cache_volume(profile)] = {"bind": COMPILE_CACHE_IN_CONTAINER, "mode": "rw"}
    elif profile.shm_size:
        spec["shm_size"] = profile.shm_size
    if binds_memory(profile):
        spec["cap_add"] = [NUMA_CAPABILITY]
    if profile.api_key_file:
        spec["api_key_file"] = profile.api_key_file
    return spec


def compose(profiles: list[Profile], stack: str | None = None) -> str:
    services: dict[str, Any] = {}
    named_volumes: dict[str, Any] = {}
    for profile in profiles:
        spec = container_spec(profile, stack)
        service: dict[str, Any] = {
            "image": spec["image"]["base"]
            if not spec["image"]["recipe"]
            else f"gh200-{spec['image']['recipe']}",
            "command": spec["command"],
            "environment": spec["environment"],
            "ports": [f"{profile.bind_address}:{profile.port}:{profile.port}"],
            "volumes": [f"{host}:{v['bind']}:{v['mode']}" for host, v in spec["volumes"].items()],
            "labels": spec["labels"],
        }
        if spec["image"]["recipe"]:
            service["build"] = {
                "context": f"containers/{spec['image']['recipe']}",
                "args": {"BASE": spec["image"]["base"]},
            }
        if spec["cpuset_cpus"]:
            service["cpuset"] = spec["cpuset_cpus"]
        if spec["gpus"]:
            service["deploy"] = {
                "resources": {
                    "reservations": {
                        "devices": [
                            {
                                "driver": "nvidia",
                                "device_ids": [str(g) for g in spec["gpus"]],
                                "capabilities": ["gpu"],
                            }
                        ]
                    }
                }
            }
        if spec.get("ipc_mode"):
            service["ipc"] = spec["ipc_mode"]
        if spec.get("shm_size"):
            service["shm_size"] = spec["shm_size"]
        if spec.get("ulimits"):
            service["ulimits"] = {"memlock": -1, "stack": 67108864}
        if spec.get("cap_add"):
            service["cap_add"] = spec["cap_add"]
        named_volumes.update({host: {} for host in spec["volumes"] if not host.startswith("/")})
        services[profile.name] = service
    document: dict[str, Any] = {"services": services}
    if named_volumes:
        document["volumes"] = named_volumes
    return yaml.safe_dump(document, sort_keys=True, width=120)
