"""The reference profiles carry what the posts ran: flags, environment, placement, expected numbers.

Values are copied from the posts (each block cites its table), not from the profiles, so a
profile edited away from its post fails here even after its golden file is regenerated.
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest
from profiles_testlib import PROFILES, REFERENCE_PROFILES, run_gh200

from gh200.paths import cache_dir
from gh200.profiles import container_spec, load_profile, load_stack, validate
from gh200.profiles.render import argv as render_argv
from gh200.profiles.schema import Profile


def _argv(name: str) -> list[str]:
    return render_argv(load_profile(name, PROFILES))


def _value(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} appears {args.count(flag)} times in {args}"
    return args[args.index(flag) + 1]


def _values(args: list[str], flag: str, count: int) -> list[str]:
    at = args.index(flag)
    return args[at + 1 : at + 1 + count]


def _speculative(args: list[str]) -> dict[str, object]:
    config = json.loads(_value(args, "--speculative-config"))
    assert isinstance(config, dict)
    return config


def test_cli_argv_of_the_launcher_default() -> None:
    """The issue's own check, through the installed CLI: `render glm52-awq-mtp3 --as argv`."""
    run = run_gh200(["profiles", "render", "glm52-awq-mtp3", "--as", "argv", "--json"])
    assert run.code == 0, run.stderr
    args = json.loads(run.stdout)["argv"]
    assert _value(args, "--tensor-parallel-size") == "2"
    assert _value(args, "--cpu-offload-gb") == "170"
    assert _value(args, "--kv-cache-dtype") == "fp8_ds_mla"
    assert _value(args, "--max-model-len") == "635904"
    assert _speculative(args) == {"method": "mtp", "num_speculative_tokens": 3}
    # Part 3, "Context Capacity": MAX_NUM_SEQS=2, GPU_UTIL=0.90.
    assert _value(args, "--max-num-seqs") == "2"
    assert _value(args, "--gpu-memory-utilization") == "0.9"


# Part 2, "The main vLLM flags were" and "I also used", plus its benchmark-shape table.
DSV4_FLAGS = {
    "--distributed-executor-backend": "mp",
    "--tensor-parallel-size": "2",
    "--block-size": "256",
    "--gpu-memory-utilization": "0.97",
    "--kv-cache-dtype": "fp8",
    "--generation-config": "vllm",
    "--max-model-len": "32768",
    "--max-num-batched-tokens": "8192",
    "--max-num-seqs": "1",
}
DSV4_ENV = {"NCCL_P2P_DISABLE": "1", "VLLM_USE_FLASHINFER_SAMPLER": "0"}


@pytest.mark.parametrize("name", ["dsv4-flash-canada-mtp3", "dsv4-flash-official-mtp3", "dsv4-flash-canada"])
def test_dsv4_flash_holds_every_flag_and_env_var_of_part2(name: str) -> None:
    args = _argv(name)
    for flag, value in DSV4_FLAGS.items():
        assert _value(args, flag) == value, flag
    assert "--disable-custom-all-reduce" in args
    spec = container_spec(load_profile(name, PROFILES))
    for key, value in DSV4_ENV.items():
        assert spec["environment"].get(key) == value, key
    # Everything sits in HBM: Part 2 never offloads.
    assert "--cpu-offload-gb" not in args
    assert spec["gpus"] == [0, 1]


def test_dsv4_flash_models_and_mtp_depth() -> None:
    canada = load_profile("dsv4-flash-canada-mtp3", PROFILES)
    official = load_profile("dsv4-flash-official-mtp3", PROFILES)
    assert canada.model.repo == "canada-quant/DeepSeek-V4-Flash-W4A16-FP8-MTP"
    assert official.model.repo == "deepseek-ai/DeepSeek-V4-Flash"
    for name in ("dsv4-flash-canada-mtp3", "dsv4-flash-official-mtp3"):
        assert _speculative(_argv(name)) == {"method": "mtp", "num_speculative_tokens": 3}
    assert "--speculative-config" not in _argv("dsv4-flash-canada")


def test_dsv4_flash_cli_env_rendering() -> None:
    run = run_gh200(["profiles", "render", "dsv4-flash-canada-mtp3", "--as", "env"])
    assert run.code == 0, run.stderr
    assert run.stdout.splitlines() == ["NCCL_P2P_DISABLE=1", "VLLM_USE_FLASHINFER_SAMPLER=0"]


# Part 3: TP2, CPU_OFFLOAD_GB=170, expert UVA offload, local NUMA binding, FP8 MLA KV cache;
# the sweep ran MAX_MODEL_LEN=9216, MAX_NUM_BATCHED_TOKENS=9216, MAX_NUM_SEQS=1.
GLM_AWQ_COMMON = {
    "--tensor-parallel-size": "2",
    "--cpu-offload-gb": "170",
    "--offload-backend": "uva",
    "--cpu-offload-params": "experts",
    "--kv-cache-dtype": "fp8_ds_mla",
}


@pytest.mark.parametrize(
    ("name", "model_len", "batched", "seqs", "mtp"),
    [
        ("glm52-awq", "9216", "9216", "1", None),
        ("glm52-awq-mtp3-bench", "9216", "9216", "1", 3),
        ("glm52-awq-mtp3-c4", "9216", "9216", "4", 3),
        ("glm52-awq-mtp3", "635904", "9216", "2", 3),
    ],
)
def test_glm52_awq_family(name: str, model_len: str, batched: str, seqs: str, mtp: int | None) -> None:
    args = _argv(name)
    for flag, value in GLM_AWQ_COMMON.items():
        assert _value(args, flag) == value, flag
    assert "--numa-bind" in args
    assert _values(args, "--numa-bind-nodes", 2) == ["0", "1"]
    assert _value(args, "--max-model-len") == model_len
    assert _value(args, "--max-num-batched-tokens") == batched
    assert _value(args, "--max-num-seqs") == seqs
    profile = load_profile(name, PROFILES)
    assert profile.model.repo == "cyankiwi/GLM-5.2-AWQ-INT4"
    if mtp is None:
        assert "--speculative-config" not in args
        assert profile.model.graft is None
    else:
        assert _speculative(args) == {"method": "mtp", "num_speculative_tokens": mtp}
        # The AWQ checkpoint ships no MTP layer: the FP8 layer-78 delta is grafted on.
        assert profile.model.graft is not None
        assert profile.model.graft.mtp_from == "dnhkng/GLM-5.2-AWQ-INT4-FP8-MTP-delta"


def test_glm52_fp8_profiles() -> None:
    base = _argv("glm52-fp8-offload270")
    assert _value(base, "--cpu-offload-gb") == "270"
    assert _value(base, "--max-model-len") == "4096"
    assert _value(base, "--tensor-parallel-size") == "2"
    assert "--speculative-config" not in base
    mtp = _argv("glm52-fp8-mtp3")
    assert _value(mtp, "--max-num-batched-tokens") == "4096"
    assert _speculative(mtp) == {"method": "mtp", "num_speculative_tokens": 3}
    for name in ("glm52-fp8-offload270", "glm52-fp8-mtp3"):
        assert load_profile(name, PROFILES).model.repo == "zai-org/GLM-5.2-FP8"


def test_glm52_gguf_on_grace_node1() -> None:
    """Part 3: ik_llama.cpp, node1 bind/membind, 72 threads; both GPUs stay free."""
    profile = load_profile("glm52-iq2xxs-cpu", PROFILES)
    assert profile.engine == "ik_llama"
    args = render_argv(profile)
    assert args[:3] == ["numactl", "--cpunodebind=1", "--membind=1"]
    assert _value(args, "-t") == "72"
    spec = container_spec(profile)
    assert spec["gpus"] == []
    assert spec["cpuset_cpus"] == "72-143"
    assert spec["cpuset_mems"] == "1"


def test_fast_slow_pair_shares_nothing() -> None:
    stack = load_stack("fast-slow", PROFILES)
    members = [load_profile(n, PROFILES) for n in stack.profiles]
    assert {m.engine for m in members} == {"vllm", "ik_llama"}
    specs = [container_spec(m, stack.name) for m in members]
    gpus = [set(s["gpus"]) for s in specs]
    assert gpus[0].isdisjoint(gpus[1])
    assert len({m.port for m in members}) == 2
    from gh200.profiles.validate import parse_cpu_list

    cpus = [parse_cpu_list(s["cpuset_cpus"]) for s in specs]
    assert cpus[0].isdisjoint(cpus[1])
    assert all(s["labels"]["io.gh200.stack"] == "fast-slow" for s in specs)
    assert validate("fast-slow", PROFILES) == []


# (profile, shape, concurrency, metric, value): the design table's headline numbers from the posts.
EXPECTED = [
    ("glm52-awq-mtp3", "2048:512", 1, "output_tok_s", 43.39),
    ("glm52-awq-mtp3-c4", "2048:512", 4, "output_tok_s", 54.92),
    ("glm52-awq", "2048:512", 1, "output_tok_s", 24.03),
    ("glm52-fp8-offload270", "256:512", 1, "output_tok_s", 20.31),
    ("glm52-fp8-offload270", "2048:64", 4, "total_tok_s", 543.66),
    ("glm52-fp8-mtp3", "2048:512", 1, "output_tok_s", 25.66),
    ("glm52-iq2xxs-cpu", "256:128", 1, "decode_tok_s", 3.65),  # TG: a decode rate
    ("glm52-iq2xxs-cpu", "256:128", 1, "prompt_tok_s", 51.54),
    ("dsv4-flash-canada-mtp3", "8192:1024", 1, "output_tok_s", 193.0),
    ("dsv4-flash-canada", "8192:1024", 1, "output_tok_s", 105.9),
    ("dsv4-flash-official-mtp3", "8192:1024", 1, "output_tok_s", 149.5),
]


@pytest.mark.parametrize(("name", "shape", "concurrency", "metric", "value"), EXPECTED)
def test_expected_numbers_from_the_posts(
    name: str, shape: str, concurrency: int, metric: str, value: float
) -> None:
    profile = load_profile(name, PROFILES)
    matches = [
        e
        for e in profile.expected
        if (e.shape, e.concurrency, e.metric) == (shape, concurrency, metric) and e.value == value
    ]
    assert matches, f"{name} lacks {value} {metric} @{shape} c{concurrency}: {profile.expected}"
    assert all(e.source for e in matches)


@pytest.mark.parametrize("name", [n for n in REFERENCE_PROFILES if n != "fast-slow"])
def test_reference_profiles_validate_clean(name: str) -> None:
    assert validate(name, PROFILES) == []


# --- the flags we render exist in the vLLM release the image pins (read from its real source) ---


def _vllm_sources(version: str) -> dict[str, str]:
    wanted = {
        "vllm/engine/arg_utils.py",
        "vllm/entrypoints/common/cli_args.py",
        "vllm/config/cache.py",
    }
    for tree in sorted((cache_dir() / "vllm-src").glob(f"{version}-*")):
        roots = [tree, *tree.glob(f"vllm-{version}")]
        for root in roots:
            if all((root / w).is_file() for w in wanted):
                return {w: (root / w).read_text() for w in wanted}
    sdist = cache_dir() / "sources" / f"vllm-{version}.tar.gz"
    if not sdist.is_file():
        pytest.skip(f"needs the vLLM {version} sdist in {sdist.parent} (fetched by the images job)")
    found: dict[str, str] = {}
    with tarfile.open(sdist) as tar:
        for member in tar:
            name = member.name.split("/", 1)[-1]
            if name in wanted and (handle := tar.extractfile(member)) is not None:
                found[name] = handle.read().decode()
                if len(found) == len(wanted):
                    break
    assert set(found) == wanted, f"{sdist} lacks {wanted - set(found)}"
    return found


def _vllm_profiles() -> list[Profile]:
    from gh200.profiles.loader import list_names, load_any

    loaded = [load_any(n, PROFILES) for n in list_names(PROFILES)]
    return [p for p in loaded if isinstance(p, Profile) and p.engine == "vllm"]


def test_rendered_vllm_flags_exist_in_the_pinned_vllm_source() -> None:
    profiles = _vllm_profiles()
    versions = {re.search(r":v(\d+\.\d+\.\d+)", p.image.ref) for p in profiles}
    assert None not in versions, "every vLLM image ref carries :vX.Y.Z"
    for version in sorted(m.group(1) for m in versions if m):
        sources = _vllm_sources(version)
        known = set(re.findall(r'"(--[a-z0-9-]+)"', sources["vllm/engine/arg_utils.py"]))
        # Frontend flags (--host, --port) are generated from dataclass fields.
        fields = re.findall(r"^    ([a-z_]+): ", sources["vllm/entrypoints/common/cli_args.py"], re.M)
        known |= {"--" + f.replace("_", "-") for f in fields}
        cache_dtypes = set(
            re.findall(r'"([a-z0-9_]+)"', sources["vllm/config/cache.py"].split("CacheDType = Literal[")[1])
        )
        for profile in (p for p in profiles if f":v{version}" in p.image.ref):
            flags = {a for a in render_argv(profile)[3:] if a.startswith("--")}
            assert flags <= known, f"{profile.name}: vLLM {version} has no {sorted(flags - known)}"
            if profile.settings.kv_cache_dtype:
                assert profile.settings.kv_cache_dtype in cache_dtypes, profile.name


def test_partial_numa_cpu_lists_are_refused(tmp_path: Path) -> None:
    """vLLM rejects an empty --numa-bind-cpus entry: CPU lists go on every rank or none."""
    from gh200.profiles.render import vllm_argv

    text = (PROFILES / "glm52-awq.yaml").read_text()
    text = text.replace("{rank: 0, gpu: 0, numa_node: 0}", '{rank: 0, gpu: 0, numa_node: 0, cpus: "0-35"}')
    path = tmp_path / "glm52-awq.yaml"
    path.write_text(text)
    problems = validate(path)
    assert [p.field for p in problems] == ["placement.ranks"], problems
    assert "" not in vllm_argv(load_profile(path))
