"""Semantic checks a schema cannot express: a profile against its host, a stack against itself."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from gh200.errors import ProfileError
from gh200.profiles.loader import load_host, load_profile, profile_path
from gh200.profiles.render import model_files, model_host_dir, resolve_model_files
from gh200.profiles.schema import HostSpec, Profile, Stack, parse_cpu_list

__all__ = ["Problem", "check_profile", "check_stack", "parse_cpu_list", "validate", "validate_or_raise"]


@dataclass(frozen=True)
class Problem:
    where: str
    field: str
    message: str
    fix: str

    def one_line(self) -> str:
        return f"{self.where}: {self.field}: {self.message} (fix: {self.fix})"


def _cpus_of(profile: Profile, host: HostSpec) -> set[int]:
    """CPUs the profile's container may use (what a stack partner must not touch).

    A list that does not parse counts as none here: the member's own check reports it.
    """
    nodes = {n.id: n for n in host.numa_nodes}
    specs: list[str] = []
    for rank in profile.placement.ranks:
        if rank.cpus:
            specs.append(rank.cpus)
        elif rank.numa_node in nodes:
            specs.append(nodes[rank.numa_node].cpus)
    cpu = profile.placement.cpu
    if cpu:
        if cpu.cpus:
            specs.append(cpu.cpus)
        elif cpu.numa_node is not None and cpu.numa_node in nodes:
            specs.append(nodes[cpu.numa_node].cpus)
    cpus: set[int] = set()
    for spec in specs:
        with contextlib.suppress(ValueError):
            cpus |= parse_cpu_list(spec)
    return cpus


def _host_cpus(host: HostSpec) -> set[int]:
    have: set[int] = set()
    for node in host.numa_nodes:
        have |= parse_cpu_list(node.cpus)
    return have


def check_profile(profile: Profile, host: HostSpec, where: str) -> list[Problem]:
    problems: list[Problem] = []
    s = profile.settings
    gpus = {g.index: g for g in host.gpus}
    nodes = {n.id: n for n in host.numa_nodes}
    ranks = profile.placement.ranks

    def add(field: str, message: str, fix: str) -> None:
        problems.append(Problem(where, field, message, fix))

    if profile.engine == "vllm":
        if len(ranks) != s.tensor_parallel_size:
            add(
                "settings.tensor_parallel_size",
                f"tensor parallel {s.tensor_parallel_size} but {len(ranks)} rank(s) placed",
                "place one GPU per rank under placement.ranks, or change tensor_parallel_size",
            )
        if sorted(r.rank for r in ranks) != list(range(len(ranks))):
            add("placement.ranks", "ranks must be numbered 0..N-1 once each", "renumber the ranks")
        used = [r.gpu for r in ranks]
        if len(set(used)) != len(used):
            add("placement.ranks", f"GPU placed twice ({used})", "give each rank its own GPU")
        if profile.placement.cpu is not None:
            add("placement.cpu", "vLLM profiles place ranks, not a CPU engine", "use placement.ranks")
        if s.threads is not None:
            add("settings.threads", "threads applies to CPU engines only", "remove it")
    else:
        if ranks:
            add(
                "placement.ranks",
                f"{profile.engine} runs on the CPU here; ranks are for GPU engines",
                "use placement.cpu (numa_node, cpus) instead",
            )
        if s.tensor_parallel_size != 1:
            add("settings.tensor_parallel_size", "tensor parallelism is a vLLM setting", "remove it")
        if s.cpu_offload_gb:
            add("settings.cpu_offload_gb", "offload is a vLLM setting", "remove it")
        if not profile.model.gguf_file:
            add(
                "model.gguf_file",
                f"{profile.engine} loads one GGUF file by name and the profile names none",
                "set model.format: gguf and model.gguf_file "
                "(the first GGUF shard, relative to the model dir)",
            )

    for rank in ranks:
        if rank.gpu not in gpus:
            add(
                f"placement.ranks[{rank.rank}].gpu",
                f"GPU {rank.gpu} does not exist on host {host.name}",
                f"use one of {sorted(gpus) or 'none (this host has no GPU)'}",
            )
        if rank.numa_node not in nodes:
            add(
                f"placement.ranks[{rank.rank}].numa_node",
                f"NUMA node {rank.numa_node} does not exist on host {host.name}",
                f"use one of {sorted(nodes)}",
            )
        elif rank.gpu in gpus and gpus[rank.gpu].numa_node != rank.numa_node:
            add(
                f"placement.ranks[{rank.rank}].numa_node",
                f"GPU {rank.gpu} sits on node {gpus[rank.gpu].numa_node}, not {rank.numa_node}: "
                "its offloaded weights would cross the slow inter-module path",
                f"set numa_node: {gpus[rank.gpu].numa_node}",
            )
        if rank.cpus:
            try:
                missing = parse_cpu_list(rank.cpus) - _host_cpus(host)
            except ValueError as err:
                add(f"placement.ranks[{rank.rank}].cpus", str(err), "write a CPU list like 0-15,32")
            else:
                if missing:
                    add(
                        f"placement.ranks[{rank.rank}].cpus",
                        f"CPUs {sorted(missing)[:4]} do not exist on host {host.name}",
                        "use CPUs the host description lists",
                    )
    if s.numa_bind and any(r.cpus for r in ranks) and not all(r.cpus for r in ranks):
        add(
            "placement.ranks",
            "CPU lists on some ranks only; vLLM's --numa-bind-cpus takes one list per rank",
            "set cpus on every rank or none",
        )
    cpu = profile.placement.cpu
    if cpu is not None and cpu.numa_node is not None and cpu.numa_node not in nodes:
        add(
            "placement.cpu.numa_node",
            f"NUMA node {cpu.numa_node} does not exist on host {host.name}",
            f"use one of {sorted(nodes)}",
        )
    if cpu is not None and cpu.cpus:
        try:
            wanted = parse_cpu_list(cpu.cpus)
            have = _host_cpus(host)
            if not wanted <= have:
                add(
                    "placement.cpu.cpus",
                    f"CPUs {sorted(wanted - have)[:4]} do not exist on host {host.name}",
                    "use CPUs the host description lists",
                )
            if s.threads and s.threads > len(wanted):
                add(
                    "settings.threads",
                    f"{s.threads} threads on {len(wanted)} CPUs",
                    "lower threads or add CPUs",
                )
        except ValueError as err:
            add("placement.cpu.cpus", str(err), "write a CPU list like 72-143")

    if s.speculative is not None:
        if s.speculative.method == "mtp" and not profile.model.provides_mtp:
            add(
                "settings.speculative",
                f"MTP requested but {profile.model.repo} ships no MTP layer",
                "add model.graft (an MTP layer from another checkpoint), or model.mtp_layers if it ships one",
            )
        if s.speculative.method == "draft" and profile.engine == "vllm":
            # The render would pass method "draft" to vLLM, whose SpeculativeConfig refuses it
            # (tests/vllm/test_vllm_dsv4_draft.py shows the refusal); model.draft is a GGUF for llama.cpp.
            add(
                "settings.speculative",
                "draft-model speculation is for llama.cpp engines; vLLM profiles here use MTP",
                "use method mtp (the checkpoint's MTP layer or a graft)",
            )
        elif s.speculative.method == "draft" and profile.model.draft is None:
            add("settings.speculative", "draft speculation needs a draft model", "add model.draft.file")
    if profile.model.graft is not None and profile.engine != "vllm":
        add("model.graft", "an MTP graft serves through vLLM only", "remove the graft or use engine vllm")

    # Memory: offloaded weights live in the rank's Grace node; the CPU engine's model in its node.
    if s.cpu_offload_gb and ranks:
        size = profile.model.size_gib
        if size is not None and s.cpu_offload_gb * s.tensor_parallel_size > size:
            add(
                "settings.cpu_offload_gb",
                f"{s.cpu_offload_gb:g} GiB x {s.tensor_parallel_size} ranks offloads more than the "
                f"{size:g} GiB model",
                "lower cpu_offload_gb",
            )
    for node_id, need in node_memory_claims(profile).items():
        if node_id in nodes and need > nodes[node_id].memory_gib:
            # vLLM pins offloaded weights per rank; a CPU engine holds the whole model in its node.
            field, fix = (
                ("settings.cpu_offload_gb", "offload less or place ranks on other nodes")
                if profile.engine == "vllm"
                else (
                    "model.size_gib",
                    "use a smaller quantization (model.files, model.gguf_file), "
                    "or bind placement.cpu.numa_node to a node with room for the model",
                )
            )
            add(
                field,
                f"{need:g} GiB on NUMA node {node_id}, which has {nodes[node_id].memory_gib:g} GiB",
                fix,
            )
    if s.gpu_memory_utilization is not None and profile.engine != "vllm":
        add("settings.gpu_memory_utilization", "applies to vLLM only", "remove it")
    if (
        s.max_num_batched_tokens
        and s.max_model_len
        and s.max_num_batched_tokens > s.max_model_len * (s.max_num_seqs or 1)
    ):
        add(
            "settings.max_num_batched_tokens",
            "more than max_model_len x max_num_seqs can ever schedule",
            "lower max_num_batched_tokens",
        )
    # On a host with the model fetched: each file (or shard pattern) the engine loads must name
    # exactly one file, as deploy will require.
    directory = model_host_dir(profile)
    if model_files(profile) and directory.is_dir():
        try:
            resolve_model_files(profile, directory)
        except ValueError as err:
            add(
                "model.gguf_file",
                f"model file {err}",
                f"fetch the model again (`gh200 models fetch {profile.name}`) or name one file",
            )
    return problems


def node_memory_claims(profile: Profile) -> dict[int, float]:
    """GiB of host memory a profile pins per NUMA node (offload per rank, or a CPU engine's model)."""
    claims: dict[int, float] = {}
    s = profile.settings
    for rank in profile.placement.ranks:
        if s.cpu_offload_gb:
            claims[rank.numa_node] = claims.get(rank.numa_node, 0.0) + s.cpu_offload_gb
    cpu = profile.placement.cpu
    if cpu is not None and cpu.numa_node is not None and profile.model.size_gib:
        claims[cpu.numa_node] = claims.get(cpu.numa_node, 0.0) + profile.model.size_gib
    return claims


def check_stack(stack: Stack, members: list[Profile], host: HostSpec, where: str) -> list[Problem]:
    problems: list[Problem] = []
    nodes = {n.id: n for n in host.numa_nodes}
    for i, first in enumerate(members):
        if first.host != stack.host:
            problems.append(
                Problem(
                    where,
                    "profiles",
                    f"{first.name} targets host {first.host}, the stack {stack.host}",
                    "make the hosts agree",
                )
            )
        for second in members[i + 1 :]:
            pair = f"{first.name} and {second.name}"
            shared_gpus = {r.gpu for r in first.placement.ranks} & {r.gpu for r in second.placement.ranks}
            if shared_gpus:
                problems.append(
                    Problem(
                        where,
                        "profiles",
                        f"{pair} both claim GPU {sorted(shared_gpus)}",
                        "place them on different GPUs",
                    )
                )
            if first.port == second.port:
                problems.append(
                    Problem(
                        where, "profiles", f"{pair} both bind port {first.port}", "give each its own port"
                    )
                )
            shared = _cpus_of(first, host) & _cpus_of(second, host)
            if shared:
                lo, hi = min(shared), max(shared)
                problems.append(
                    Problem(
                        where,
                        "profiles",
                        f"{pair} both claim CPUs {lo}-{hi} ({len(shared)} cores)",
                        "give each profile its own cores (placement cpus)",
                    )
                )
    totals: dict[int, float] = {}
    for member in members:
        for node_id, need in node_memory_claims(member).items():
            totals[node_id] = totals.get(node_id, 0.0) + need
    for node_id, need in totals.items():
        if node_id in nodes and need > nodes[node_id].memory_gib:
            problems.append(
                Problem(
                    where,
                    "profiles",
                    f"together they pin {need:g} GiB on NUMA node {node_id} "
                    f"({nodes[node_id].memory_gib:g} GiB)",
                    "offload less or move a profile",
                )
            )
    return problems


def _host_for(item: Profile | Stack, path: Path) -> HostSpec:
    """The item's host description; a missing one is reported against the profile's file."""
    try:
        return load_host(item.host, path.parent)
    except ProfileError as err:
        raise ProfileError(f"{path}: host: {err.message}", err.fix) from err


def _name_problem(item: Profile | Stack, path: Path) -> list[Problem]:
    # `render NAME`, stacks and extends find a profile by its file name.
    if item.name == path.stem:
        return []
    return [
        Problem(
            str(path),
            "name",
            f"name {item.name!r} differs from the file name {path.name!r}",
            f"set name: {path.stem} (or rename the file to {item.name}.yaml)",
        )
    ]


def validate(name_or_path: str | Path, directory: Path | None = None) -> list[Problem]:
    """Load and check one profile or stack; schema errors raise, semantic problems are returned."""
    from gh200.profiles.loader import load_any

    path = profile_path(name_or_path, directory)
    loaded = load_any(path)
    root = path.parent
    host = _host_for(loaded, path)
    problems = _name_problem(loaded, path)
    if isinstance(loaded, Stack):
        paths = [root / f"{name}.yaml" for name in loaded.profiles]
        missing = [p.stem for p in paths if not p.is_file()]
        if missing:
            known = ", ".join(sorted(p.stem for p in root.glob("*.yaml"))) or "none"
            raise ProfileError(
                f"{path}: profiles: {', '.join(missing)} not found in {root}", f"use profiles from: {known}"
            )
        members = [load_profile(p) for p in paths]
        problems += check_stack(loaded, members, host, str(path))
        for member, member_path in zip(members, paths, strict=True):
            problems += _name_problem(member, member_path)
            problems += check_profile(member, _host_for(member, member_path), str(member_path))
        return problems
    return problems + check_profile(loaded, host, str(path))


def validate_or_raise(name_or_path: str | Path, directory: Path | None = None) -> None:
    problems = validate(name_or_path, directory)
    if problems:
        first = problems[0]
        extra = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ProfileError(f"{first.where}: {first.field}: {first.message}{extra}", first.fix)
