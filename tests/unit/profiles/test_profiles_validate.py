"""Semantic checks, one rule at a time, at their boundaries (the broken/ corpus drives the CLI).

Each test takes a real profile that validates clean, changes one thing, and says which field is
reported (or that nothing is, exactly at the limit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from profiles_testlib import PROFILES

from gh200.errors import ProfileError
from gh200.profiles.loader import load_host, load_profile, load_stack
from gh200.profiles.schema import CpuPlacement, HostSpec, Profile, RankPlacement, SpeculativeSpec
from gh200.profiles.validate import (
    check_profile,
    check_stack,
    node_memory_claims,
    validate,
    validate_or_raise,
)

HOST = load_host("dual-gh200", PROFILES)


def _vary(name: str, settings: dict[str, Any] | None = None, **fields: Any) -> Profile:
    profile = load_profile(name, PROFILES)
    if settings:
        fields["settings"] = profile.settings.model_copy(update=settings)
    return profile.model_copy(update=fields)


def _fields(profile: Profile, host: HostSpec = HOST) -> list[str]:
    return [p.field for p in check_profile(profile, host, "here")]


def _ranks(profile: Profile, *ranks: RankPlacement) -> dict[str, Any]:
    return {"placement": profile.placement.model_copy(update={"ranks": list(ranks)})}


def _cpu(profile: Profile, cpu: CpuPlacement | None) -> dict[str, Any]:
    return {"placement": profile.placement.model_copy(update={"cpu": cpu})}


R0 = RankPlacement(rank=0, gpu=0, numa_node=0)
R1 = RankPlacement(rank=1, gpu=1, numa_node=1)


@pytest.mark.parametrize("name", ["glm52-awq", "glm52-iq2xxs-cpu", "local-tiny", "glm52-fp8-offload270"])
def test_the_starting_points_are_clean(name: str) -> None:
    host = load_host(load_profile(name, PROFILES).host, PROFILES)
    assert _fields(load_profile(name, PROFILES), host) == []


def test_vllm_rank_rules() -> None:
    awq = load_profile("glm52-awq", PROFILES)
    assert _fields(_vary("glm52-awq", **_ranks(awq, R0))) == ["settings.tensor_parallel_size"]
    assert _fields(_vary("glm52-awq", **_ranks(awq, R0, R1.model_copy(update={"rank": 2})))) == [
        "placement.ranks"
    ]
    assert _fields(_vary("glm52-awq", **_ranks(awq, R1, R0))) == []  # order does not matter
    twice = R1.model_copy(update={"gpu": 0, "numa_node": 0})
    assert _fields(_vary("glm52-awq", **_ranks(awq, R0, twice))) == ["placement.ranks"]
    assert _fields(_vary("glm52-awq", **_cpu(awq, CpuPlacement(cpus="0-3")))) == ["placement.cpu"]
    assert _fields(_vary("glm52-awq", {"threads": 4})) == ["settings.threads"]


def test_cpu_engine_rules() -> None:
    cpu = load_profile("glm52-iq2xxs-cpu", PROFILES)
    assert _fields(_vary("glm52-iq2xxs-cpu", **_ranks(cpu, R0))) == ["placement.ranks"]
    assert _fields(_vary("glm52-iq2xxs-cpu", {"tensor_parallel_size": 2})) == [
        "settings.tensor_parallel_size"
    ]
    assert _fields(_vary("glm52-iq2xxs-cpu", {"cpu_offload_gb": 1.0})) == ["settings.cpu_offload_gb"]
    assert _fields(_vary("glm52-iq2xxs-cpu", {"cpu_offload_gb": 0.0})) == []
    assert _fields(_vary("glm52-iq2xxs-cpu", {"gpu_memory_utilization": 0.5})) == [
        "settings.gpu_memory_utilization"
    ]
    assert _fields(_vary("glm52-awq", {"gpu_memory_utilization": 0.5})) == []


def test_rank_placement_against_the_host() -> None:
    awq = load_profile("glm52-awq", PROFILES)
    problems = check_profile(
        _vary("glm52-awq", **_ranks(awq, R0, R1.model_copy(update={"gpu": 5}))), HOST, "x"
    )
    assert [p.field for p in problems] == ["placement.ranks[1].gpu"]
    assert "GPU 5 does not exist on host dual-gh200" in problems[0].message and "[0, 1]" in problems[0].fix
    far = R1.model_copy(update={"numa_node": 9})
    assert _fields(_vary("glm52-awq", **_ranks(awq, R0, far))) == ["placement.ranks[1].numa_node"]
    crossed = R1.model_copy(update={"numa_node": 0})
    problems = check_profile(_vary("glm52-awq", **_ranks(awq, R0, crossed)), HOST, "x")
    assert [p.field for p in problems] == ["placement.ranks[1].numa_node"]
    assert problems[0].fix == "set numa_node: 1"
    lacking = R1.model_copy(update={"cpus": "140-150"})
    problems = check_profile(_vary("glm52-awq", {"numa_bind": False}, **_ranks(awq, R0, lacking)), HOST, "x")
    assert [p.field for p in problems] == ["placement.ranks[1].cpus"]
    assert "[144, 145, 146, 147]" in problems[0].message  # the first missing CPUs, four at most
    fits = R1.model_copy(update={"cpus": "72-143"})
    assert _fields(_vary("glm52-awq", {"numa_bind": False}, **_ranks(awq, R0, fits))) == []


def test_numa_bind_needs_cpu_lists_on_all_ranks_or_none() -> None:
    awq = load_profile("glm52-awq", PROFILES)
    some = _ranks(awq, R0.model_copy(update={"cpus": "0-7"}), R1)
    assert _fields(_vary("glm52-awq", {"numa_bind": True}, **some)) == ["placement.ranks"]
    assert _fields(_vary("glm52-awq", {"numa_bind": False}, **some)) == []
    every = _ranks(awq, R0.model_copy(update={"cpus": "0-7"}), R1.model_copy(update={"cpus": "72-79"}))
    assert _fields(_vary("glm52-awq", {"numa_bind": True}, **every)) == []


def test_cpu_placement_against_the_host_and_threads() -> None:
    cpu = load_profile("glm52-iq2xxs-cpu", PROFILES)  # 72 threads on 72-143
    assert _fields(_vary("glm52-iq2xxs-cpu", **_cpu(cpu, CpuPlacement(numa_node=3)))) == [
        "placement.cpu.numa_node"
    ]
    problems = check_profile(_vary("glm52-iq2xxs-cpu", **_cpu(cpu, CpuPlacement(cpus="140-149"))), HOST, "x")
    # 10 CPUs listed, 4 of them on the host; 72 threads on 10 CPUs is reported too.
    assert [p.field for p in problems] == ["placement.cpu.cpus", "settings.threads"]
    assert "[144, 145, 146, 147]" in problems[0].message and problems[1].message == "72 threads on 10 CPUs"
    # Threads up to the number of CPUs are fine; one more is reported.
    exact = _vary("glm52-iq2xxs-cpu", {"threads": 72})
    assert _fields(exact) == []
    assert _fields(_vary("glm52-iq2xxs-cpu", {"threads": 73})) == ["settings.threads"]
    few = _vary("glm52-iq2xxs-cpu", {"threads": 9}, **_cpu(cpu, CpuPlacement(numa_node=1, cpus="72-79")))
    assert _fields(few) == ["settings.threads"]


def test_speculation_needs_its_model() -> None:
    awq = _vary("glm52-awq", {"speculative": SpeculativeSpec(method="mtp", num_speculative_tokens=1)})
    assert _fields(awq) == ["settings.speculative"]
    assert _fields(_vary("glm52-awq-mtp3")) == []  # the graft provides the MTP layer
    tiny = load_profile("local-tiny", PROFILES)
    local = load_host(tiny.host, PROFILES)
    no_draft = tiny.model_copy(update={"model": tiny.model.model_copy(update={"draft": None})})
    assert _fields(no_draft, local) == ["settings.speculative"]


def test_a_graft_needs_vllm() -> None:
    graft = load_profile("glm52-awq-mtp3", PROFILES)
    cpu = load_profile("glm52-iq2xxs-cpu", PROFILES)
    assert graft.model.graft is not None
    moved = cpu.model_copy(update={"model": cpu.model.model_copy(update={"graft": graft.model.graft})})
    assert "model.graft" in _fields(moved)


def test_offload_limits_at_their_boundaries() -> None:
    awq = load_profile("glm52-awq", PROFILES)
    size = awq.model.size_gib
    assert size is not None and awq.settings.tensor_parallel_size == 2
    # 2 ranks x size/2 offloads the whole model: allowed; a little more is not.
    assert "settings.cpu_offload_gb" not in _fields(_vary("glm52-awq", {"cpu_offload_gb": size / 2}))
    over = check_profile(_vary("glm52-awq", {"cpu_offload_gb": size / 2 + 1}), HOST, "x")
    assert [p.field for p in over] == ["settings.cpu_offload_gb"] and "ranks offloads more" in over[0].message
    # Node memory: 480 GiB per node; a model this size cannot overflow it through offload, a CPU
    # engine's model can.
    cpu = load_profile("glm52-iq2xxs-cpu", PROFILES)
    fits = cpu.model_copy(update={"model": cpu.model.model_copy(update={"size_gib": 480.0})})
    assert _fields(fits) == []
    spills = cpu.model_copy(update={"model": cpu.model.model_copy(update={"size_gib": 480.5})})
    problems = check_profile(spills, HOST, "x")
    assert [p.field for p in problems] == ["model.size_gib"]
    assert "480.5 GiB on NUMA node 1, which has 480 GiB" in problems[0].message


def test_node_memory_claims() -> None:
    awq = _vary("glm52-awq", {"cpu_offload_gb": 10.0})
    assert node_memory_claims(awq) == {0: 10.0, 1: 10.0}
    assert node_memory_claims(_vary("glm52-awq", {"cpu_offload_gb": None})) == {}
    cpu = load_profile("glm52-iq2xxs-cpu", PROFILES)
    assert node_memory_claims(cpu) == {1: cpu.model.size_gib}
    unbound = cpu.model_copy(update=_cpu(cpu, CpuPlacement(cpus="72-143")))
    assert node_memory_claims(unbound) == {}
    two = awq.model_copy(update=_ranks(awq, R0, R1.model_copy(update={"numa_node": 0})))
    assert node_memory_claims(two) == {0: 20.0}


def test_batched_tokens_against_what_can_be_scheduled() -> None:
    settings = {"max_model_len": 1000, "max_num_seqs": 4}
    assert _fields(_vary("glm52-awq", {**settings, "max_num_batched_tokens": 4000})) == []
    assert _fields(_vary("glm52-awq", {**settings, "max_num_batched_tokens": 4001})) == [
        "settings.max_num_batched_tokens"
    ]
    one_seq = {"max_model_len": 1000, "max_num_seqs": None}
    assert _fields(_vary("glm52-awq", {**one_seq, "max_num_batched_tokens": 1000})) == []
    assert _fields(_vary("glm52-awq", {**one_seq, "max_num_batched_tokens": 1001})) == [
        "settings.max_num_batched_tokens"
    ]


def _stack_problems(*members: Profile) -> list[str]:
    """The lines `profiles validate` prints for the stack: where, field, message and fix."""
    stack = load_stack("fast-slow", PROFILES)
    return [p.one_line() for p in check_stack(stack, list(members), HOST, "s")]


def test_stack_members_share_nothing() -> None:
    fast = load_profile("dsv4-flash-canada-mtp3-fastslow", PROFILES)
    slow = load_profile("glm52-iq2xxs-cpu", PROFILES)
    assert _stack_problems(fast, slow) == []
    same_port = slow.model_copy(update={"port": fast.port})
    assert _stack_problems(fast, same_port) == [
        f"s: profiles: dsv4-flash-canada-mtp3-fastslow and glm52-iq2xxs-cpu both bind port {fast.port} "
        "(fix: give each its own port)"
    ]
    awq = load_profile("glm52-awq", PROFILES).model_copy(update={"port": 9999})
    assert (
        "s: profiles: dsv4-flash-canada-mtp3-fastslow and glm52-awq both claim GPU [0, 1] "
        "(fix: place them on different GPUs)"
    ) in _stack_problems(fast, awq)
    other_host = slow.model_copy(update={"host": "local"})
    assert _stack_problems(fast, other_host) == [
        "s: profiles: glm52-iq2xxs-cpu targets host local, the stack dual-gh200 (fix: make the hosts agree)"
    ]


def test_stack_cpu_overlap_names_the_range_and_count() -> None:
    slow = load_profile("glm52-iq2xxs-cpu", PROFILES)
    left = slow.model_copy(update={"name": "left", **_cpu(slow, CpuPlacement(cpus="72-99", membind=False))})
    right = slow.model_copy(
        update={"name": "right", "port": 9000, **_cpu(slow, CpuPlacement(cpus="90-120", membind=False))}
    )
    assert _stack_problems(left, right) == [
        "s: profiles: left and right both claim CPUs 90-99 (10 cores) "
        "(fix: give each profile its own cores (placement cpus))"
    ]
    # A node without a CPU list claims the node's CPUs; apart, nothing is reported.
    node0 = right.model_copy(update=_cpu(right, CpuPlacement(numa_node=0, membind=False)))
    assert _stack_problems(left, node0) == []
    node1 = right.model_copy(update=_cpu(right, CpuPlacement(numa_node=1, membind=False)))
    assert [line.split(" (fix")[0] for line in _stack_problems(left, node1)] == [
        "s: profiles: left and right both claim CPUs 72-99 (28 cores)"
    ]
    # A node the host does not have, or no placement at all, claims no CPUs.
    nowhere = right.model_copy(update=_cpu(right, CpuPlacement(numa_node=7, membind=False)))
    assert _stack_problems(left, nowhere) == []
    unplaced = right.model_copy(update=_cpu(right, CpuPlacement(membind=False)))
    assert _stack_problems(left, unplaced) == []


def test_stack_overlap_counts_every_rank() -> None:
    awq = load_profile("glm52-awq", PROFILES)
    ranked = awq.model_copy(
        update={
            "name": "ranked",
            **_ranks(awq, R0.model_copy(update={"cpus": "0-3"}), R1.model_copy(update={"cpus": "72-75"})),
        }
    )
    slow = load_profile("glm52-iq2xxs-cpu", PROFILES)
    first_rank = slow.model_copy(
        update={"name": "a", "port": 9000, **_cpu(slow, CpuPlacement(cpus="0-1", membind=False))}
    )
    assert [line.split(" (fix")[0] for line in _stack_problems(ranked, first_rank)] == [
        "s: profiles: ranked and a both claim CPUs 0-1 (2 cores)"
    ]
    far_node = ranked.model_copy(update=_ranks(awq, R0, R1.model_copy(update={"numa_node": 5})))
    assert _stack_problems(far_node, first_rank)[0].startswith(
        "s: profiles: ranked and a both claim CPUs 0-1 "
    )


def test_stack_memory_adds_up_per_node() -> None:
    slow = load_profile("glm52-iq2xxs-cpu", PROFILES)  # 234 GiB on node 1
    twin = slow.model_copy(
        update={"name": "twin", "port": 9000, **_cpu(slow, CpuPlacement(numa_node=1, cpus="72-73"))}
    )
    half = slow.model_copy(
        update={
            "model": slow.model.model_copy(update={"size_gib": 240.0}),
            **_cpu(slow, CpuPlacement(numa_node=1, cpus="74-75")),
        }
    )
    half_twin = twin.model_copy(update={"model": twin.model.model_copy(update={"size_gib": 240.0})})
    assert _stack_problems(half, half_twin) == []  # 480 of 480 GiB
    more = half_twin.model_copy(update={"model": half_twin.model.model_copy(update={"size_gib": 240.5})})
    assert _stack_problems(half, more) == [
        "s: profiles: together they pin 480.5 GiB on NUMA node 1 (480 GiB) "
        "(fix: offload less or move a profile)"
    ]


def test_validate_names_the_file_and_raises_with_a_count(tmp_path: Path) -> None:
    text = (PROFILES / "glm52-awq.yaml").read_text()
    (tmp_path / "hosts").mkdir()
    (tmp_path / "hosts" / "dual-gh200.yaml").write_text((PROFILES / "hosts" / "dual-gh200.yaml").read_text())
    renamed = tmp_path / "other-name.yaml"
    renamed.write_text(text)
    problems = validate(renamed)
    assert [(p.where, p.field) for p in problems] == [(str(renamed), "name")]
    assert problems[0].one_line() == (
        f"{renamed}: name: name 'glm52-awq' differs from the file name 'other-name.yaml' "
        "(fix: set name: other-name (or rename the file to glm52-awq.yaml))"
    )
    with pytest.raises(ProfileError) as err:
        validate_or_raise("other-name", tmp_path)  # by name, in that directory
    assert (
        err.value.message == f"{renamed}: name: name 'glm52-awq' differs from the file name 'other-name.yaml'"
    )
    assert err.value.fix == problems[0].fix
    renamed.write_text(text.replace("  max_num_seqs: 1", "  threads: 4\n  max_num_seqs: 1"))
    assert [p.field for p in validate(renamed)] == ["name", "settings.threads"]
    with pytest.raises(ProfileError, match=r"\(\+1 more\)"):
        validate_or_raise(renamed)
    clean = tmp_path / "glm52-awq.yaml"
    clean.write_text(text)
    assert validate(clean) == []
    validate_or_raise(clean)


def test_a_fetched_model_must_hold_each_file_the_engine_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a host with the model fetched, a shard pattern naming no file (or several) is reported."""
    from gh200.profiles.render import model_host_dir

    monkeypatch.setenv("GH200_MODELS", str(tmp_path))
    profile = load_profile("glm52-iq2xxs-cpu", PROFILES)
    host = load_host(profile.host, PROFILES)
    directory = model_host_dir(profile)
    assert check_profile(profile, host, "here") == []  # not fetched here: nothing to check
    (directory / "UD-IQ2_XXS").mkdir(parents=True)
    problems = check_profile(profile, host, "here")
    assert [p.one_line() for p in problems] == [
        f"here: model.gguf_file: model file 'UD-IQ2_XXS/*-00001-of-*.gguf' matches nothing in {directory} "
        f"(fix: fetch the model again (`gh200 models fetch {profile.name}`) or name one file)"
    ]
    (directory / "UD-IQ2_XXS" / "GLM-00001-of-00002.gguf").write_bytes(b"")
    assert check_profile(profile, host, "here") == []
