"""What each render setting does, one behaviour at a time (the golden files pin whole outputs).

The golden renders only show the settings the shipped profiles use; these tests vary one setting
of a real profile and say what must change in the argv, environment, container spec or compose.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from profiles_testlib import PROFILES

from gh200.profiles import render
from gh200.profiles.loader import load_profile
from gh200.profiles.locks import DIGEST_RE, write_locks
from gh200.profiles.schema import CpuPlacement, Profile, SpeculativeSpec, parse_cpu_list

SHA = "a" * 40
DIGEST = "sha256:" + "b" * 64


def _profile(name: str, **settings: Any) -> Profile:
    profile = load_profile(name, PROFILES)
    if settings:
        profile = profile.model_copy(update={"settings": profile.settings.model_copy(update=settings)})
    return profile


def _value(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} in {argv}"
    return argv[argv.index(flag) + 1]


# --- where models live ---


def test_model_store_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GH200_MODELS", raising=False)
    assert render.model_store() == Path("/srv/models")
    monkeypatch.setenv("GH200_MODELS", "/data/m")
    assert render.model_store() == Path("/data/m")


def test_model_directories(pinned_bundle: Path, tmp_path: Path) -> None:
    awq = _profile("glm52-awq")
    graft = _profile("glm52-awq-mtp3")
    assert render.model_dir_name(awq) == "cyankiwi--GLM-5.2-AWQ-INT4"
    # A grafted checkpoint is another set of files: it never shares the plain model's directory.
    assert render.model_dir_name(graft) == "cyankiwi--GLM-5.2-AWQ-INT4--mtp-graft"
    assert render.model_host_dir(awq) == Path("/srv/models/cyankiwi--GLM-5.2-AWQ-INT4")
    assert render.model_host_dir(awq, tmp_path) == tmp_path / "cyankiwi--GLM-5.2-AWQ-INT4"
    tiny = _profile("local-tiny")
    # Generated (local/) models live in the cache, not in the model store.
    cache = Path(str(pinned_bundle.parent / "cache"))
    assert render.model_host_dir(tiny) == cache / "models" / "local--tiny-llama-spm"
    assert render.model_host_dir(tiny, tmp_path) == tmp_path / "local--tiny-llama-spm"
    assert render.model_container_dir(awq) == f"/models/{awq.model.served_name}"


def test_profile_hash_follows_the_content(pinned_bundle: Path) -> None:
    awq = _profile("glm52-awq")
    assert render.profile_hash(awq) == render.profile_hash(_profile("glm52-awq"))
    assert len(render.profile_hash(awq)) == 16
    assert render.profile_hash(awq) != render.profile_hash(_profile("glm52-awq", max_num_seqs=7))
    assert render.profile_hash(awq) != render.profile_hash(awq.model_copy(update={"port": awq.port + 1}))


# --- vLLM argv ---


@pytest.mark.parametrize(
    ("settings", "flag", "value"),
    [
        ({"distributed_executor_backend": "ray"}, "--distributed-executor-backend", "ray"),
        ({"offload_backend": "prefetch"}, "--offload-backend", "prefetch"),
        ({"cpu_offload_gb": 12.5}, "--cpu-offload-gb", "12.5"),
        ({"cpu_offload_gb": 0.0}, "--cpu-offload-gb", "0"),
        ({"block_size": 64}, "--block-size", "64"),
        ({"gpu_memory_utilization": 0.9}, "--gpu-memory-utilization", "0.9"),
        ({"kv_cache_dtype": "fp8"}, "--kv-cache-dtype", "fp8"),
        ({"max_model_len": 4096}, "--max-model-len", "4096"),
        ({"max_num_batched_tokens": 2048}, "--max-num-batched-tokens", "2048"),
        ({"max_num_seqs": 3}, "--max-num-seqs", "3"),
        ({"generation_config": "vllm"}, "--generation-config", "vllm"),
        ({"tensor_parallel_size": 2}, "--tensor-parallel-size", "2"),
    ],
)
def test_each_vllm_setting_renders_its_flag(
    pinned_bundle: Path, settings: dict[str, Any], flag: str, value: str
) -> None:
    bare = _profile(
        "glm52-awq",
        distributed_executor_backend=None,
        offload_backend=None,
        cpu_offload_gb=None,
        block_size=None,
        gpu_memory_utilization=None,
        kv_cache_dtype=None,
        max_model_len=None,
        max_num_batched_tokens=None,
        max_num_seqs=None,
        generation_config=None,
    )
    assert flag == "--tensor-parallel-size" or flag not in render.argv(bare)
    varied = bare.model_copy(update={"settings": bare.settings.model_copy(update=settings)})
    assert _value(render.argv(varied), flag) == value


def test_vllm_argv_head_and_switches(pinned_bundle: Path) -> None:
    p = _profile(
        "glm52-awq", disable_custom_all_reduce=False, cpu_offload_params=[], speculative=None, numa_bind=False
    )
    argv = render.argv(p)
    assert argv[:5] == [
        "vllm",
        "serve",
        f"/models/{p.model.served_name}",
        "--served-model-name",
        p.model.served_name,
    ]
    assert _value(argv, "--host") == "0.0.0.0" and _value(argv, "--port") == str(p.port)
    for absent in (
        "--disable-custom-all-reduce",
        "--cpu-offload-params",
        "--speculative-config",
        "--numa-bind",
    ):
        assert absent not in argv
    on = _profile(
        "glm52-awq",
        disable_custom_all_reduce=True,
        cpu_offload_params=["experts", "dense"],
        speculative=SpeculativeSpec(method="mtp", num_speculative_tokens=3),
    )
    argv = render.argv(on)
    assert "--disable-custom-all-reduce" in argv
    i = argv.index("--cpu-offload-params")
    assert argv[i + 1 : i + 3] == ["experts", "dense"]
    assert json.loads(_value(argv, "--speculative-config")) == {"method": "mtp", "num_speculative_tokens": 3}


def test_numa_bind_lists_one_node_and_one_cpu_list_per_rank(pinned_bundle: Path) -> None:
    base = _profile("glm52-awq", numa_bind=True)
    ranks = sorted(base.placement.ranks, key=lambda r: r.rank)
    assert len(ranks) == 2
    # Ranks listed out of order still render in rank order.
    shuffled = [r.model_copy(update={"cpus": None}) for r in reversed(ranks)]
    p = base.model_copy(update={"placement": base.placement.model_copy(update={"ranks": shuffled})})
    argv = render.argv(p)
    i = argv.index("--numa-bind")
    assert argv[i + 1 : i + 4] == ["--numa-bind-nodes", *[str(r.numa_node) for r in ranks]]
    assert "--numa-bind-cpus" not in argv  # no lists at all: vLLM picks the node's CPUs
    with_cpus = [r.model_copy(update={"cpus": f"{r.rank * 10}-{r.rank * 10 + 3}"}) for r in ranks]
    p = base.model_copy(update={"placement": base.placement.model_copy(update={"ranks": with_cpus})})
    argv = render.argv(p)
    j = argv.index("--numa-bind-cpus")
    assert argv[j + 1 : j + 3] == ["0-3", "10-13"]
    off = _profile("glm52-awq", numa_bind=False)
    assert "--numa-bind" not in render.argv(off)


# --- llama.cpp / ik_llama.cpp argv ---


def test_llama_settings_render_only_when_given(pinned_bundle: Path) -> None:
    bare = _profile("local-tiny", threads=None, ctx_size=None, parallel=None, flash_attn=None, metrics=False)
    bare = bare.model_copy(update={"settings": bare.settings.model_copy(update={"speculative": None})})
    argv = render.argv(bare)
    assert argv[:5] == [
        "llama-server",
        "-m",
        f"/models/tiny-llama/{bare.model.gguf_file}",
        "--alias",
        "tiny-llama",
    ]
    assert argv[5:] == ["--host", "0.0.0.0", "--port", str(bare.port)]
    full = _profile("local-tiny", threads=3, ctx_size=1024, parallel=2, flash_attn="off", metrics=True)
    argv = render.argv(full)
    assert (_value(argv, "-t"), _value(argv, "-c"), _value(argv, "-np"), _value(argv, "-fa")) == (
        "3",
        "1024",
        "2",
        "off",
    )
    assert "--metrics" in argv


def test_draft_speculation_per_engine(pinned_bundle: Path) -> None:
    tiny = _profile("local-tiny", speculative=SpeculativeSpec(method="draft", num_speculative_tokens=5))
    assert tiny.model.draft is not None
    argv = render.argv(tiny)
    assert _value(argv, "-md") == f"/models/tiny-llama/{tiny.model.draft.file}"
    assert (_value(argv, "--spec-type"), _value(argv, "--spec-draft-n-max")) == ("draft-simple", "5")
    ik = render.argv(tiny.model_copy(update={"engine": "ik_llama"}))
    # ik_llama.cpp's pinned parser refuses --draft-max; its form is one --spec-type stage.
    assert _value(ik, "--spec-type") == "draft:n_max=5" and _value(ik, "-md") == _value(argv, "-md")
    assert "--draft-max" not in ik and "--spec-draft-n-max" not in ik
    # MTP speculation, or a draft setting without a draft model, adds no draft flags.
    mtp = _profile("local-tiny", speculative=SpeculativeSpec(method="mtp", num_speculative_tokens=2))
    no_model = tiny.model_copy(update={"model": tiny.model.model_copy(update={"draft": None})})
    for argv in (render.argv(mtp), render.argv(no_model)):
        assert "-md" not in argv and "--spec-type" not in argv


def test_numactl_prefix_for_a_node_bound_cpu_engine(pinned_bundle: Path) -> None:
    cpu = _profile("glm52-iq2xxs-cpu")
    assert render.argv(cpu)[:4] == ["numactl", "--cpunodebind=1", "--membind=1", "llama-server"]
    loose = cpu.model_copy(
        update={
            "placement": cpu.placement.model_copy(update={"cpu": CpuPlacement(numa_node=0, membind=False)})
        }
    )
    assert render.argv(loose)[:3] == ["numactl", "--cpunodebind=0", "llama-server"]
    unbound = cpu.model_copy(update={"placement": cpu.placement.model_copy(update={"cpu": None})})
    assert render.argv(unbound)[0] == "llama-server"
    # extra_args come last, verbatim.
    assert render.argv(cpu)[-4:] == ["-tb", "72", "--numa", "numactl"]


# --- environment, cpuset, labels, container spec, compose ---


def test_container_env_gives_llama_images_their_port(pinned_bundle: Path) -> None:
    tiny = _profile("local-tiny")
    assert render.container_env(tiny)["LLAMA_ARG_PORT"] == str(tiny.port)
    own = tiny.model_copy(update={"env": {"LLAMA_ARG_PORT": "1", "B": "2", "A": "3"}})
    assert render.container_env(own) == {"A": "3", "B": "2", "LLAMA_ARG_PORT": "1"}
    assert list(render.env(own)) == ["A", "B", "LLAMA_ARG_PORT"]
    assert "LLAMA_ARG_PORT" not in render.container_env(_profile("glm52-awq"))


@given(st.sets(st.integers(min_value=0, max_value=300), min_size=1, max_size=60))
def test_cpu_lists_are_compact_and_exact(cpus: set[int]) -> None:
    text = render._compact(cpus)
    assert parse_cpu_list(text) == cpus
    parts = text.split(",")
    # As short as it can be: no two parts could merge, and a part is a range only for 2+ CPUs.
    bounds = [tuple(int(x) for x in part.split("-")) for part in parts]
    for part in bounds:
        assert len(part) == 1 or part[0] < part[1]
    for left, right in itertools.pairwise(bounds):
        assert right[0] > left[-1] + 1


def test_cpuset_from_ranks_nodes_and_cpu_placement(pinned_bundle: Path) -> None:
    gpu = render.container_spec(_profile("glm52-awq"))
    assert gpu["cpuset_mems"] == "0-1"
    cpu = render.container_spec(_profile("glm52-iq2xxs-cpu"))
    assert (cpu["cpuset_cpus"], cpu["cpuset_mems"]) == ("72-143", "1")
    base = _profile("glm52-iq2xxs-cpu")
    node_only = base.model_copy(
        update={
            "placement": base.placement.model_copy(update={"cpu": CpuPlacement(numa_node=1, membind=False)})
        }
    )
    spec = render.container_spec(node_only)
    assert spec["cpuset_mems"] is None  # no membind: memory is not confined
    assert spec["cpuset_cpus"] == "72-143"  # the node's CPUs from the host description
    none = base.model_copy(update={"placement": base.placement.model_copy(update={"cpu": None})})
    assert (render.container_spec(none)["cpuset_cpus"], render.container_spec(none)["cpuset_mems"]) == (
        None,
        None,
    )


def _lock_everything(bundle: Path) -> None:
    write_locks(
        [_profile("glm52-awq-mtp3")],
        bundle / "profiles",
        image_resolver=lambda ref: DIGEST,
        model_resolver=lambda repo, rev: SHA,
    )


def test_labels_say_what_is_pinned(pinned_bundle: Path) -> None:
    profile = _profile("glm52-awq-mtp3")
    unlocked = render.labels(profile)
    assert unlocked["io.gh200.image"] == profile.image.ref
    assert unlocked["io.gh200.model-revision"] == "main (unlocked)"
    assert unlocked["io.gh200.profile"] == profile.name
    assert unlocked["io.gh200.profile-hash"] == render.profile_hash(profile)
    assert unlocked["io.gh200.image-recipe"] == "vllm"
    assert unlocked["io.gh200.model"] == profile.model.repo
    assert "io.gh200.stack" not in unlocked
    assert render.labels(profile, "pair")["io.gh200.stack"] == "pair"
    _lock_everything(pinned_bundle)
    locked = render.labels(profile)
    assert DIGEST_RE.fullmatch(locked["io.gh200.image"].split("@", 1)[1])
    assert locked["io.gh200.image"] == f"vllm/vllm-openai@{DIGEST}"
    assert locked["io.gh200.model-revision"] == SHA
    no_recipe = profile.model_copy(update={"image": profile.image.model_copy(update={"recipe": None})})
    assert render.labels(no_recipe)["io.gh200.image-recipe"] == ""


def test_container_spec_engine_specifics(pinned_bundle: Path) -> None:
    vllm = _profile("glm52-awq")
    spec = render.container_spec(vllm)
    assert spec["name"] == "gh200-glm52-awq"
    assert spec["ipc_mode"] == "host" and spec["ulimits"] == {
        "memlock": [-1, -1],
        "stack": [67108864, 67108864],
    }
    assert spec["gpus"] == [r.gpu for r in sorted(vllm.placement.ranks, key=lambda r: r.rank)]
    assert spec["ports"] == {f"{vllm.port}/tcp": [vllm.bind_address, vllm.port]}
    assert spec["volumes"] == {
        str(render.model_host_dir(vllm)): {"bind": render.model_container_dir(vllm), "mode": "ro"},
        "gh200-cache-glm52-awq": {"bind": "/var/cache/gh200", "mode": "rw"},
    }
    assert spec["health"] == {
        "url": f"http://{vllm.bind_address}:{vllm.port}/health",
        "models_url": f"http://{vllm.bind_address}:{vllm.port}/v1/models",
        "timeout_s": vllm.health.timeout_s,
    }
    assert "api_key_file" not in spec
    keyed = vllm.model_copy(update={"api_key_file": "/run/key"})
    assert render.container_spec(keyed)["api_key_file"] == "/run/key"
    cpu = _profile("local-tiny")
    plain = render.container_spec(cpu.model_copy(update={"shm_size": None}))
    assert not {"ipc_mode", "ulimits", "shm_size"} & set(plain)
    assert render.container_spec(cpu.model_copy(update={"shm_size": "1g"}))["shm_size"] == "1g"


def test_compose_service_shapes(pinned_bundle: Path) -> None:
    vllm = _profile("glm52-awq")
    cpu = _profile("glm52-iq2xxs-cpu")
    plain = vllm.model_copy(update={"image": vllm.image.model_copy(update={"recipe": None})})
    services = yaml.safe_load(render.compose([plain, cpu], "pair"))["services"]
    gpu, grace = services["glm52-awq"], services["glm52-iq2xxs-cpu"]
    assert gpu["image"] == plain.image.ref and "build" not in gpu
    assert grace["image"] == "gh200-ik_llama"
    assert grace["build"] == {"context": "containers/ik_llama", "args": {"BASE": cpu.image.ref}}
    assert grace["cpuset"] == "72-143" and "deploy" not in grace and "ipc" not in grace
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0", "1"], "capabilities": ["gpu"]}]
    assert gpu["ipc"] == "host" and gpu["ulimits"] == {"memlock": -1, "stack": 67108864}
    assert "shm_size" not in gpu  # ipc: host shares the host's /dev/shm; Podman refuses both
    assert gpu["ports"] == [f"{vllm.bind_address}:{vllm.port}:{vllm.port}"]
    assert gpu["labels"]["io.gh200.stack"] == "pair"
    assert gpu["command"] == render.argv(plain)


def test_a_model_file_pattern_resolves_to_exactly_one_file(tmp_path: Path) -> None:
    """There is no shell in the container: the shard pattern becomes the one file it names here."""
    profile = load_profile("glm52-iq2xxs-cpu", PROFILES)
    pattern = profile.model.gguf_file
    assert pattern == "UD-IQ2_XXS/*-00001-of-*.gguf"
    shards = tmp_path / "UD-IQ2_XXS"
    shards.mkdir()
    with pytest.raises(ValueError) as err:
        render.resolve_model_files(profile, tmp_path)
    assert str(err.value) == f"{pattern!r} matches nothing in {tmp_path}"
    (shards / "GLM-00001-of-00002.gguf").write_bytes(b"")
    (shards / "GLM-00002-of-00002.gguf").write_bytes(b"")
    assert render.resolve_model_files(profile, tmp_path) == {pattern: "UD-IQ2_XXS/GLM-00001-of-00002.gguf"}
    (shards / "dir-00001-of-00002.gguf").mkdir()  # a directory is not a model file
    assert render.resolve_model_files(profile, tmp_path) == {pattern: "UD-IQ2_XXS/GLM-00001-of-00002.gguf"}
    for name in ("A", "B", "C", "D"):
        (shards / f"{name}-00001-of-00003.gguf").write_bytes(b"")
        listed = sorted(p.name for p in shards.glob("*-00001-of-*.gguf") if p.is_file())
        with pytest.raises(ValueError) as err:
            render.resolve_model_files(profile, tmp_path)
        shown = ", ".join(f"UD-IQ2_XXS/{n}" for n in listed[:4])
        more = " ..." if len(listed) > 4 else ""
        assert str(err.value) == f"{pattern!r} matches {len(listed)} files: {shown}{more} in {tmp_path}"
    assert len(listed) == 5 and str(err.value).endswith(f" ... in {tmp_path}")


def test_the_draft_model_file_is_resolved_too(tmp_path: Path) -> None:
    profile = load_profile("local-tiny", PROFILES)
    assert profile.model.draft is not None
    (tmp_path / "tiny-llama-spm.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match=r"'tiny-llama-spm-draft\.gguf' matches nothing"):
        render.resolve_model_files(profile, tmp_path)
    (tmp_path / "tiny-llama-spm-draft.gguf").write_bytes(b"")
    assert render.resolve_model_files(profile, tmp_path) == {
        "tiny-llama-spm.gguf": "tiny-llama-spm.gguf",
        "tiny-llama-spm-draft.gguf": "tiny-llama-spm-draft.gguf",
    }
    assert render.model_files(profile) == ["tiny-llama-spm.gguf", "tiny-llama-spm-draft.gguf"]


def test_compose_carries_a_cpu_profiles_shm_size_and_keeps_long_arguments_on_one_line(
    pinned_bundle: Path,
) -> None:
    cpu = _profile("glm52-iq2xxs-cpu")
    long_arg = "--override-kv " + ",".join(f"key{i}=value{i}" for i in range(6)) + " spaced words"
    assert 80 < len(long_arg) < 110
    cpu = cpu.model_copy(
        update={
            "shm_size": "16g",
            "settings": cpu.settings.model_copy(update={"extra_args": [long_arg]}),
        }
    )
    text = render.compose([cpu])
    service = yaml.safe_load(text)["services"]["glm52-iq2xxs-cpu"]
    assert service["shm_size"] == "16g"
    assert service["command"][-1] == long_arg
    assert any(line.strip() == f"- {long_arg}" for line in text.splitlines()), "wrapped below 120 columns"
    plain = yaml.safe_load(render.compose([_profile("glm52-iq2xxs-cpu")]))["services"]["glm52-iq2xxs-cpu"]
    assert "shm_size" not in plain


def test_the_container_loads_the_files_deploy_resolved(pinned_bundle: Path) -> None:
    """A shard pattern and a draft become the files deploy found, in argv and in the container spec."""
    cpu = _profile("glm52-iq2xxs-cpu")
    pattern = cpu.model.gguf_file
    assert pattern is not None
    first = "UD-IQ2_XXS/GLM-5.2-UD-IQ2_XXS-00001-of-00006.gguf"
    where = render.model_container_dir(cpu)
    assert _value(render.argv(cpu, {pattern: first}), "-m") == f"{where}/{first}"
    assert _value(render.container_spec(cpu, files={pattern: first})["command"], "-m") == f"{where}/{first}"
    assert _value(render.argv(cpu), "-m") == f"{where}/{pattern}"  # a render shows the pattern
    tiny = _profile("local-tiny")
    assert tiny.model.draft is not None
    resolved = {"tiny-llama-spm.gguf": "q/main.gguf", tiny.model.draft.file: "q/draft.gguf"}
    command = render.container_spec(tiny, files=resolved)["command"]
    there = render.model_container_dir(tiny)
    assert (_value(command, "-m"), _value(command, "-md")) == (
        f"{there}/q/main.gguf",
        f"{there}/q/draft.gguf",
    )


def test_a_vllm_profile_loads_no_model_file_by_name() -> None:
    assert render.model_files(_profile("glm52-awq")) == []
    assert render.model_files(_profile("glm52-iq2xxs-cpu")) == ["UD-IQ2_XXS/*-00001-of-*.gguf"]


@pytest.mark.parametrize("name", ["glm52-iq2xxs-cpu", "local-tiny"])
def test_a_llama_server_with_a_key_file_reads_the_mounted_copy(pinned_bundle: Path, name: str) -> None:
    profile = _profile(name)
    keyless = render.argv(profile.model_copy(update={"api_key_file": None}))
    assert "--api-key-file" not in keyless
    keyed = render.argv(profile.model_copy(update={"api_key_file": "/home/me/key"}))
    extra = list(profile.settings.extra_args)
    body = keyed[: len(keyed) - len(extra)] if extra else keyed
    assert body == [*keyless[: len(keyless) - len(extra)], "--api-key-file", render.API_KEY_IN_CONTAINER]
    assert keyed[len(body) :] == extra


def test_every_top_level_name_of_render_is_used_by_the_shipped_code() -> None:
    """No dead code: each function, class and constant of render.py is named again somewhere in the
    package or scripts (a name only the tests use is dead in what ships)."""
    import ast
    import re

    src = Path(render.__file__)
    names: list[str] = []
    for node in ast.parse(src.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    package = src.parents[1]  # tools/gh200 (or the mutation stage's src/gh200)
    shipped = [p.read_text() for p in package.rglob("*.py")]
    scripts = package.parents[1] / "scripts"
    shipped += [p.read_text() for p in scripts.glob("*.py")] if scripts.is_dir() else []
    dead = [n for n in names if sum(len(re.findall(rf"\b{n}\b", t)) for t in shipped) < 2]
    assert dead == []
