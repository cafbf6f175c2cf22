"""Deploy's own logic without an engine: what the Docker SDK is asked for, conflicts, the API key."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from gh200.deploy.deploy import (
    L_GPUS,
    L_KEY_FILE,
    L_PORT,
    Target,
    conflicts,
    container_name,
    create_container,
    deploy_labels,
    port_free,
)
from gh200.errors import BadInput
from gh200.profiles import container_spec, load_profile
from gh200.profiles.render import API_KEY_IN_CONTAINER
from gh200.profiles.schema import Profile
from gh200.served import ApiKeyFileInsecure, base_url, read_api_key


class _Recorder:
    """Records what would be handed to `client.containers.create` (our call, not the SDK, under test)."""

    def __init__(self) -> None:
        self.kwargs: dict[str, Any] = {}
        self.containers = self

    def create(self, **kwargs: Any) -> str:
        self.kwargs = kwargs
        return "created"


def _target(profile: Profile, stack: str | None = None) -> Target:
    return Target(profile, container_spec(profile, stack), stack)


def test_vllm_container_request_carries_gpus_numa_ipc_and_memlock() -> None:
    target = _target(load_profile("glm52-awq-mtp3"))
    client = _Recorder()
    assert create_container(client, target, "localhost/gh200-vllm:abc", None) == "created"  # type: ignore[arg-type]
    kw = client.kwargs
    assert kw["image"] == "localhost/gh200-vllm:abc"
    assert kw["entrypoint"] == ["vllm"] and kw["command"][:2] == ["serve", "/models/glm-5.2"]
    (request,) = kw["device_requests"]
    assert request["DeviceIDs"] == ["0", "1"] and request["Capabilities"] == [["gpu"]]
    assert kw["cpuset_cpus"] == "0-143" and kw["cpuset_mems"] == "0-1"
    # The host's IPC namespace means the host's /dev/shm: Podman refuses a size with it.
    assert kw["ipc_mode"] == "host" and "shm_size" not in kw
    # --numa-bind sets a memory policy: Docker's default seccomp profile needs CAP_SYS_NICE for it.
    assert kw["cap_add"] == ["SYS_NICE"] and "security_opt" not in kw
    limits = {u["Name"]: (u["Soft"], u["Hard"]) for u in kw["ulimits"]}
    assert limits["memlock"] == (-1, -1)
    assert kw["ports"] == {"8000/tcp": ("127.0.0.1", 8000)}
    (model_dir,) = [h for h in kw["volumes"] if h.startswith("/")]
    assert model_dir.endswith("cyankiwi--GLM-5.2-AWQ-INT4--mtp-graft") and kw["volumes"][model_dir] == {
        "bind": "/models/glm-5.2",
        "mode": "ro",
    }
    # The compile caches: one named volume per profile, where vLLM, Triton and DeepGEMM look.
    assert kw["volumes"]["gh200-cache-glm52-awq-mtp3"] == {"bind": "/var/cache/gh200", "mode": "rw"}
    env = kw["environment"]
    assert env["VLLM_CACHE_ROOT"].startswith("/var/cache/gh200/")
    assert env["TRITON_CACHE_DIR"].startswith("/var/cache/gh200/")
    assert env["DG_JIT_CACHE_DIR"].startswith("/var/cache/gh200/")
    assert kw["environment"]["NCCL_P2P_DISABLE"] == "1"
    labels = kw["labels"]
    assert (
        labels["io.gh200.profile"] == "glm52-awq-mtp3"
        and labels[L_GPUS] == "0,1"
        and labels[L_PORT] == "8000"
    )
    assert {
        "io.gh200.profile-hash",
        "io.gh200.image",
        "io.gh200.model-revision",
        "io.gh200.image-tag",
    } <= set(labels)
    assert kw["name"] == container_name(target) and kw["name"].startswith("gh200-glm52-awq-mtp3-")


def test_cpu_profile_gets_no_device_request_and_its_own_entrypoint() -> None:
    client = _Recorder()
    create_container(client, _target(load_profile("local-tiny")), "img:1", None)  # type: ignore[arg-type]
    kw = client.kwargs
    assert "device_requests" not in kw and "ipc_mode" not in kw and "cpuset_cpus" not in kw
    assert kw["entrypoint"] == ["llama-server"] and "-md" in kw["command"]
    assert kw["ports"] == {"18080/tcp": ("127.0.0.1", 18080)}


def test_numa_bound_cpu_profile_runs_under_numactl() -> None:
    client = _Recorder()
    create_container(client, _target(load_profile("glm52-iq2xxs-cpu")), "img:1", None)  # type: ignore[arg-type]
    assert client.kwargs["entrypoint"] == ["numactl"]
    assert client.kwargs["cpuset_mems"] == "1"


def test_api_key_reaches_the_server_but_no_label_or_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GH200_STATE", str(tmp_path / "state"))
    key_file = tmp_path / "key"
    key_file.write_text("# comment\nsk-secret-123\n")
    key_file.chmod(0o600)
    profile = load_profile("glm52-awq-mtp3").model_copy(update={"api_key_file": str(key_file)})
    target = _target(profile)
    key = read_api_key(key_file)
    assert key == "sk-secret-123"
    client = _Recorder()
    create_container(client, target, "img:1", key)  # type: ignore[arg-type]
    assert client.kwargs["environment"]["VLLM_API_KEY"] == key
    assert all(key not in str(v) for v in client.kwargs["labels"].values())
    assert key not in " ".join(client.kwargs["command"])
    assert client.kwargs["labels"][L_KEY_FILE] == str(key_file)
    # llama.cpp and ik_llama.cpp ignore LLAMA_API_KEY: the key goes in through --api-key-file,
    # a read-only copy the image's own user can read.
    for name in ("local-tiny", "glm52-iq2xxs-cpu"):
        llama = _target(load_profile(name).model_copy(update={"api_key_file": str(key_file)}))
        create_container(client, llama, "img:1", key)  # type: ignore[arg-type]
        kw = client.kwargs
        assert key not in str(kw["environment"]) and key not in " ".join(kw["command"])
        at = kw["command"].index("--api-key-file")
        assert kw["command"][at + 1] == API_KEY_IN_CONTAINER
        (copy,) = [h for h, m in kw["volumes"].items() if m["bind"] == API_KEY_IN_CONTAINER]
        assert kw["volumes"][copy]["mode"] == "ro"
        assert Path(copy).read_text() == key + "\n"
        assert Path(copy).stat().st_mode & 0o777 == 0o444
        assert Path(copy).parent.stat().st_mode & 0o777 == 0o700
        assert Path(copy).name == f"{kw['name']}.key"


def test_api_key_file_permissions_and_content(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-1\n")
    key_file.chmod(0o644)
    with pytest.raises(ApiKeyFileInsecure) as caught:
        read_api_key(key_file)
    assert (
        caught.value.exit_code == 2
        and "0644" in caught.value.message
        and f"chmod 600 {key_file}" in str(caught.value.fix)
    )
    assert "sk-1" not in caught.value.one_line()
    key_file.chmod(0o640)
    with pytest.raises(ApiKeyFileInsecure):
        read_api_key(key_file)
    key_file.chmod(0o400)
    assert read_api_key(key_file) == "sk-1"
    empty = tmp_path / "empty"
    empty.write_text("\n# only a comment\n")
    empty.chmod(0o600)
    with pytest.raises(BadInput):
        read_api_key(empty)
    with pytest.raises(BadInput):
        read_api_key(tmp_path / "missing")
    with pytest.raises(BadInput):
        read_api_key(tmp_path)


def _labels_of(profile: Profile) -> dict[str, str]:
    return deploy_labels(_target(profile), "img:1")


def test_conflicts_by_gpu_port_and_same_profile() -> None:
    glm = load_profile("glm52-awq-mtp3")
    dsv4 = load_profile("dsv4-flash-canada-mtp3")
    cpu = load_profile("glm52-iq2xxs-cpu")
    tiny = load_profile("local-tiny")
    # Two GPU profiles: same GPUs (and the same port 8000) -> the running one must make way.
    assert conflicts(_target(glm), _labels_of(dsv4)) is not None
    assert "GPU" in (conflicts(_target(glm), _labels_of(dsv4)) or "")
    # The CPU profile holds no GPU and another port: it can stay.
    assert conflicts(_target(glm), _labels_of(cpu)) is None
    assert conflicts(_target(tiny), _labels_of(glm)) is None
    # An older version of the same profile is always replaced.
    older = tiny.model_copy(update={"description": "older"})
    assert conflicts(_target(tiny), _labels_of(older)) == "an older version of the same profile"
    # Same port, different profile, no GPUs.
    other = tiny.model_copy(update={"name": "local-other"})
    assert conflicts(_target(other), _labels_of(tiny)) == "holds port 18080"
    wildcard = tiny.model_copy(update={"name": "local-wild", "bind_address": "0.0.0.0"})
    assert conflicts(_target(wildcard), _labels_of(tiny)) == "holds port 18080"
    elsewhere = tiny.model_copy(update={"name": "local-else", "bind_address": "127.0.0.2"})
    assert conflicts(_target(elsewhere), _labels_of(tiny)) is None


def test_stack_members_carry_the_stack_label() -> None:
    labels = deploy_labels(_target(load_profile("glm52-iq2xxs-cpu"), "fast-slow"), "img:1")
    assert labels["io.gh200.stack"] == "fast-slow"


def test_urls_for_wildcard_binds_use_loopback() -> None:
    tiny = load_profile("local-tiny")
    assert base_url(tiny) == "http://127.0.0.1:18080"
    assert base_url(tiny.model_copy(update={"bind_address": "0.0.0.0"})) == "http://127.0.0.1:18080"
    assert base_url(tiny.model_copy(update={"bind_address": "::"})) == "http://[::1]:18080"
    labels = _labels_of(tiny.model_copy(update={"bind_address": "0.0.0.0"}))
    assert labels["io.gh200.health-url"] == "http://127.0.0.1:18080/health"


def test_port_free_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_free("127.0.0.1", port)
    assert port_free("127.0.0.1", port)
