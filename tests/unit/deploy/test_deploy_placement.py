"""Placement, model files, failure logs and per-request metrics flags: deploy's and render's own
logic without an engine (the engine tests run the same paths against a real llama-server)."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path
from typing import Any

import pytest

from gh200.deploy.deploy import (
    ModelFileUnresolved,
    PlacementRefused,
    deploy,
    first_error,
    launch_argv,
    model_files_for,
    placement_refusal,
    save_container_log,
    wait_ready,
)
from gh200.output import progress as progress_bar
from gh200.paths import cache_dir
from gh200.profiles import container_spec, list_names, load_any, load_profile
from gh200.profiles.render import argv as render_argv
from gh200.profiles.render import compile_cache_volume
from gh200.profiles.schema import Profile
from gh200.profiles.validate import validate


def _profiles() -> list[Profile]:
    return [p for p in (load_any(n) for n in list_names()) if isinstance(p, Profile)]


# --- CAP_SYS_NICE on the profiles that bind memory, and only on those ---------------------------------


def _sets_a_memory_policy(argv: list[str]) -> bool:
    """Read from the command itself: vLLM's --numa-bind membinds its workers; numactl --membind."""
    return "--numa-bind" in argv or any(a.startswith("--membind") for a in argv)


@pytest.mark.parametrize("profile", _profiles(), ids=lambda p: p.name)
def test_capability_exactly_where_the_command_binds_memory(profile: Profile) -> None:
    spec = container_spec(profile)
    binds = _sets_a_memory_policy(spec["command"])
    assert spec.get("cap_add") == (["SYS_NICE"] if binds else None), profile.name


def test_the_posts_memory_binding_profiles_carry_it() -> None:
    for name in ("glm52-awq-mtp3", "glm52-fp8-offload270", "glm52-iq2xxs-cpu"):
        assert container_spec(load_profile(name))["cap_add"] == ["SYS_NICE"]
    unbound = load_profile("glm52-iq2xxs-cpu")
    cpu = unbound.placement.cpu
    assert cpu is not None
    loose = unbound.model_copy(
        update={
            "placement": unbound.placement.model_copy(
                update={"cpu": cpu.model_copy(update={"membind": False})}
            )
        }
    )
    assert "cap_add" not in container_spec(loose)
    assert "--membind=1" not in container_spec(loose)["command"]


@pytest.mark.parametrize("profile", _profiles(), ids=lambda p: p.name)
def test_no_shm_size_beside_the_host_ipc_namespace(profile: Profile) -> None:
    spec = container_spec(profile)
    assert not (spec.get("ipc_mode") == "host" and "shm_size" in spec), profile.name


def test_a_cpu_profile_keeps_its_shm_size() -> None:
    tiny = load_profile("local-tiny").model_copy(update={"shm_size": "1g"})
    assert container_spec(tiny)["shm_size"] == "1g"


# --- per-request metrics flags, compile caches ----------------------------------------------------------


@pytest.mark.parametrize("profile", _profiles(), ids=lambda p: p.name)
def test_per_request_metrics_flags(profile: Profile) -> None:
    args = render_argv(profile)
    if profile.engine != "vllm":
        assert not any(a.startswith(("--per-request", "--enable-prompt")) for a in args)
        return
    assert args.count("--enable-prompt-tokens-details") == 1
    if profile.settings.speculative is not None:
        at = args.index("--per-request-spec-decode-metrics")
        assert args[at + 1] == "summary"
    else:
        # vLLM refuses the flag without speculative decoding (config/vllm.py).
        assert "--per-request-spec-decode-metrics" not in args


def test_compile_caches_persist_per_vllm_profile() -> None:
    seen: set[str] = set()
    for profile in _profiles():
        spec = container_spec(profile)
        named = {h: m for h, m in spec["volumes"].items() if not h.startswith("/")}
        if profile.engine != "vllm":
            assert named == {} and "VLLM_CACHE_ROOT" not in spec["environment"]
            continue
        assert named == {compile_cache_volume(profile): {"bind": "/var/cache/gh200", "mode": "rw"}}
        env = spec["environment"]
        for variable in ("VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "DG_JIT_CACHE_DIR"):
            assert env[variable].startswith("/var/cache/gh200/"), variable
        seen.add(compile_cache_volume(profile))
    assert len(seen) == len([p for p in _profiles() if p.engine == "vllm"])  # one per profile


def _vllm_file(path: str) -> str:
    sdist = cache_dir() / "sources" / "vllm-0.33.0.tar.gz"
    if not sdist.is_file():
        pytest.skip(f"needs the vLLM 0.33.0 sdist in {sdist.parent} (fetched by the images job)")
    with tarfile.open(sdist) as tar:
        for member in tar:
            if member.name.split("/", 1)[-1] == path and (handle := tar.extractfile(member)):
                return handle.read().decode()
    pytest.fail(f"{sdist} has no {path}")


def test_compile_cache_variables_are_the_ones_vllm_reads() -> None:
    envs = _vllm_file("vllm/envs.py")
    assert '"VLLM_CACHE_ROOT"' in envs
    compiler = _vllm_file("vllm/compilation/compiler_interface.py")
    # vLLM keeps a caller's TRITON_CACHE_DIR and puts Inductor's cache under VLLM_CACHE_ROOT.
    assert 'os.environ.get("TRITON_CACHE_DIR")' in compiler


def test_summary_is_a_choice_of_the_per_request_flag_in_vllm() -> None:
    source = _vllm_file("vllm/config/observability.py")
    match = re.search(r"per_request_spec_decode_metrics: Literal\[([^\]]*)\]", source)
    assert match and '"summary"' in match.group(1)


# --- a refused memory policy ends the deploy ---------------------------------------------------------


def _vllm_rejection_line() -> str:
    """The warning exactly as vLLM 0.33.0 formats it (format string read from its source)."""
    source = _vllm_file("vllm/utils/numa_utils.py")
    match = re.search(
        r'logger\.warning\(\s*("numactl args %r rejected[^)]*?)\s*,\s*numactl_args', source, re.S
    )
    assert match, "vLLM's rejection warning moved: update PLACEMENT_REFUSED"
    fmt = "".join(re.findall(r'"([^"]*)"', match.group(1)))
    message = fmt % ("--cpunodebind=0 --membind=0", "--cpunodebind=0")
    return f"(EngineCore pid=77) WARNING 12-02 10:00:00 [numa_utils.py:465] {message}"


def test_placement_refusal_finds_vllm_and_numactl_lines() -> None:
    vllm = _vllm_rejection_line()
    log = f"INFO starting\n{vllm}\nINFO Application startup complete.\n"
    assert placement_refusal(log) == vllm
    numactl = "set_mempolicy: Operation not permitted\nsetting membind: Operation not permitted\n"
    assert placement_refusal(numactl) == "set_mempolicy: Operation not permitted"
    assert placement_refusal("INFO Binding worker to NUMA node 0\nINFO ready\n") is None


class _Container:
    """What wait_ready and save_container_log read from a container (our logic under test)."""

    def __init__(self, log: str, status: str = "running") -> None:
        self.log = log.encode()
        self.status = status
        self.attrs: dict[str, Any] = {"State": {"ExitCode": 1}, "Config": {}}
        self.name = "gh200-x-0000"

    def reload(self) -> None:
        pass

    def logs(self, **_: Any) -> bytes:
        return self.log


_LABELS = {
    "io.gh200.health-url": "http://127.0.0.1:1/health",
    "io.gh200.models-url": "http://127.0.0.1:1/v1/models",
    "io.gh200.served-name": "m",
    "io.gh200.health-timeout": "5",
}


def test_ready_server_with_its_binding_refused_fails_the_deploy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gh200.deploy.deploy.probe_ready", lambda *_: (True, "ready"))
    container = _Container(f"INFO up\n{_vllm_rejection_line()}\n")
    with progress_bar(False) as bar, pytest.raises(PlacementRefused) as caught:
        wait_ready(container, "glm", _LABELS, None, bar, binds_memory=True)
    assert "rejected; falling back" in caught.value.message and "CAP_SYS_NICE" in str(caught.value.fix)
    # A profile that binds nothing is not judged by the line.
    with progress_bar(False) as bar:
        wait_ready(container, "glm", _LABELS, None, bar, binds_memory=False)


def test_numactl_exit_is_reported_as_refused_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gh200.deploy.deploy.probe_ready", lambda *_: (False, "refused"))
    container = _Container("set_mempolicy: Operation not permitted\n", status="exited")
    with progress_bar(False) as bar, pytest.raises(PlacementRefused):
        wait_ready(container, "cpu", _LABELS, None, bar, binds_memory=True)


# --- the whole log on failure ---------------------------------------------------------------------------

VLLM_FAILURE = """\
INFO 12-02 10:00:00 [api_server.py:1] vLLM API server version 0.33.0
(EngineCore pid=9) ERROR 12-02 10:00:05 [core.py:700] EngineCore failed to start.
(EngineCore pid=9) ERROR 12-02 10:00:05 [core.py:700] Traceback (most recent call last):
(EngineCore pid=9) ERROR 12-02 10:00:05 [core.py:700]   File "/x/core.py", line 690, in run
(EngineCore pid=9) ERROR 12-02 10:00:05 [core.py:700]     engine = EngineCore(*args)
(EngineCore pid=9) ERROR 12-02 10:00:06 [core.py:700] KeyError: 'model.layers.78.experts.w2_weight_scale_inv'
RuntimeError: Engine core initialization failed. See root cause above.
"""


def test_first_error_is_the_root_cause_not_the_last_line() -> None:
    plain = 'Traceback (most recent call last):\n  File "x.py", line 1\n    boom()\nValueError: bad shape\n'
    assert first_error(plain) == "Traceback (most recent call last): ... ValueError: bad shape"
    assert first_error("load ok\nerror: invalid argument: --no-such-flag\nbye\n") == (
        "error: invalid argument: --no-such-flag"
    )
    assert first_error("all fine\n") is None
    # vLLM: the first error line comes before the traceback and names the failing process.
    assert first_error(VLLM_FAILURE) == (
        "(EngineCore pid=9) ERROR 12-02 10:00:05 [core.py:700] EngineCore failed to start."
    )
    traceback_only = "\n".join(line for line in VLLM_FAILURE.splitlines() if "failed to start" not in line)
    found = first_error(traceback_only)
    assert found and found.endswith("KeyError: 'model.layers.78.experts.w2_weight_scale_inv'")


def test_save_container_log_keeps_everything_under_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GH200_STATE", str(tmp_path))
    text = "".join(f"line {i}\n" for i in range(5000)) + VLLM_FAILURE
    saved = save_container_log(_Container(text), "glm52-awq-mtp3", "smoke")
    assert saved.path.parent == tmp_path / "logs" / "glm52-awq-mtp3"
    assert saved.path.name.endswith("-smoke.log") and saved.path.read_text() == text
    assert saved.first_error and "EngineCore failed to start" in saved.first_error
    err = capsys.readouterr().err.replace("\n", "")
    assert str(saved.path) in err and "EngineCore failed to start" in err
    assert not list(saved.path.parent.glob(".*"))  # no temp sibling left behind


def test_launch_argv_is_entrypoint_then_command() -> None:
    container = _Container("")
    container.attrs["Config"] = {"Entrypoint": ["vllm"], "Cmd": ["serve", "/models/glm-5.2"]}
    assert launch_argv(container) == ["vllm", "serve", "/models/glm-5.2"]


# --- shard patterns ---------------------------------------------------------------------------------


def _store(tmp_path: Path, names: list[str]) -> Path:
    directory = tmp_path / "unsloth--GLM-5.2-GGUF"
    for name in names:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(b"GGUF")
    return directory


SHARDS = [f"UD-IQ2_XXS/GLM-5.2-UD-IQ2_XXS-0000{i}-of-00005.gguf" for i in range(1, 6)]


def test_shard_pattern_resolves_to_exactly_one_file(tmp_path: Path) -> None:
    profile = load_profile("glm52-iq2xxs-cpu")
    directory = _store(tmp_path, SHARDS)
    files = model_files_for(profile, directory)
    assert files == {"UD-IQ2_XXS/*-00001-of-*.gguf": SHARDS[0]}
    command = container_spec(profile, files=files)["command"]
    assert command[command.index("-m") + 1] == f"/models/glm-5.2-iq2xxs/{SHARDS[0]}"
    assert not any("*" in a for a in command)


@pytest.mark.parametrize(
    ("names", "found"),
    [
        ([], "matches nothing"),
        (SHARDS[1:], "matches nothing"),
        ([*SHARDS, "UD-IQ2_XXS/old-00001-of-00004.gguf"], "2 files: UD-IQ2_XXS/GLM-5.2-UD-IQ2_XXS-00001"),
    ],
)
def test_shard_pattern_matching_none_or_several_is_bad_input(
    tmp_path: Path, names: list[str], found: str
) -> None:
    directory = _store(tmp_path, names)
    directory.mkdir(exist_ok=True)
    with pytest.raises(ModelFileUnresolved) as caught:
        model_files_for(load_profile("glm52-iq2xxs-cpu"), directory)
    assert found in caught.value.message and caught.value.exit_code == 2
    assert "UD-IQ2_XXS/*-00001-of-*.gguf" in caught.value.message


def test_a_literal_model_file_must_exist(tmp_path: Path) -> None:
    tiny = load_profile("local-tiny")
    directory = tmp_path / "tiny"
    directory.mkdir()
    (directory / "tiny-llama-spm.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelFileUnresolved) as caught:
        model_files_for(tiny, directory)
    assert "tiny-llama-spm-draft.gguf" in caught.value.message


class _NoTouch:
    """An engine client that lists nothing and fails the test if deploy tries to change anything."""

    def __init__(self) -> None:
        self.containers = self

    def list(self, **_: Any) -> list[Any]:
        return []

    def create(self, **_: Any) -> Any:
        raise AssertionError("deploy created a container despite a bad model file")


def test_deploy_refuses_an_unresolved_pattern_before_any_side_effect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GH200_MODELS", str(tmp_path))
    _store(tmp_path, [*SHARDS, "UD-IQ2_XXS/old-00001-of-00004.gguf"])
    monkeypatch.setattr(
        "gh200.deploy.deploy.resolve_image", lambda *_a, **_k: pytest.fail("image step reached")
    )
    with pytest.raises(ModelFileUnresolved):
        deploy(_NoTouch(), load_profile("glm52-iq2xxs-cpu"), progress=False)


def test_validate_checks_the_pattern_where_the_model_is_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GH200_MODELS", str(tmp_path))
    assert validate("glm52-iq2xxs-cpu") == []  # no model here: nothing to check against
    directory = _store(tmp_path, SHARDS)
    assert validate("glm52-iq2xxs-cpu") == []
    (directory / "UD-IQ2_XXS/old-00001-of-00004.gguf").write_bytes(b"GGUF")
    (problem,) = validate("glm52-iq2xxs-cpu")
    assert problem.field == "model.gguf_file" and "2 files" in problem.message
