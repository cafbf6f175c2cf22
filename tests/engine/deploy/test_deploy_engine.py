"""Deploy against a real engine and the real llama-server image: readiness, labels, roll-out and
roll-back, faults that leave no stray container, stacks, API keys, and the CLI with --json."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_testlib import leftovers, variant

from gh200.deploy.deploy import (
    DeployFailed,
    ModelFileUnresolved,
    PlacementRefused,
    PortTaken,
    deploy,
    gh200_containers,
    key_copy_path,
    launch_argv,
    probe_ready,
    status,
    stop,
)
from gh200.profiles import container_spec, profile_hash
from gh200.profiles.schema import CpuPlacement, Expected, Placement, Profile
from gh200.served import ApiKeyFileInsecure

pytestmark = pytest.mark.engine


@pytest.fixture(autouse=True)
def _private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Saved logs, key copies and results of a test go under its own directory, not the user's."""
    monkeypatch.setenv("GH200_STATE", str(tmp_path / "state"))


def _running(engine: Any, name: str) -> list[Any]:
    return [c for c in gh200_containers(engine, profile=name) if c.status == "running"]


def _ready(profile: Profile) -> bool:
    base = f"http://127.0.0.1:{profile.port}"
    return probe_ready(f"{base}/health", f"{base}/v1/models", profile.model.served_name, None)[0]


def test_deployed_container_is_labelled_ready_and_unchanged_on_redeploy(
    engine: Any, tiny_server: Profile
) -> None:
    (container,) = _running(engine, tiny_server.name)
    labels = container.labels
    assert labels["io.gh200.profile"] == tiny_server.name
    assert labels["io.gh200.profile-hash"] == profile_hash(tiny_server)
    assert labels["io.gh200.image-tag"].startswith("localhost/gh200-llama_cpp:")
    assert labels["io.gh200.model-revision"] and labels["io.gh200.image"]
    ports = container.attrs["HostConfig"]["PortBindings"][f"{tiny_server.port}/tcp"][0]
    assert ports["HostIp"] == "127.0.0.1" and int(ports["HostPort"]) == tiny_server.port
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts["/models/tiny-llama"]["RW"] is False
    assert _ready(tiny_server)
    again = deploy(engine, tiny_server, progress=False)
    assert again.changed is False and again.targets[0]["container"] == container.name
    rows = [r for r in status(engine) if r["profile"] == tiny_server.name]
    assert len(rows) == 1 and rows[0]["health"] == "ready" and rows[0]["state"] == "running"
    # The launch argv (what run records carry) is exactly the rendered command.
    assert rows[0]["argv"] == container_spec(tiny_server)["command"] == again.targets[0]["argv"]


def test_never_ready_prints_the_log_tail_and_leaves_nothing(
    engine: Any, prepared: str, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = variant("never", health={"endpoint": "/no-such-endpoint", "timeout_s": 3})
    with pytest.raises(DeployFailed) as caught:
        deploy(engine, profile, progress=False)
    assert "not ready after 3s" in caught.value.message and "404" in caught.value.message
    assert "last log line" in caught.value.message
    assert "llama" in capsys.readouterr().err  # the log tail went to stderr
    assert gh200_containers(engine, profile=profile.name) == []


def test_exit_before_ready_fails_fast_and_keeps_the_whole_log(
    engine: Any, prepared: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GH200_STATE", str(tmp_path))
    profile = variant("crash", settings={"extra_args": ["--no-such-flag"]})
    with pytest.raises(DeployFailed) as caught:
        deploy(engine, profile, progress=False)
    message = caught.value.message
    assert "exited (code" in message and "before it was ready" in message
    assert gh200_containers(engine, profile=profile.name) == []
    # The container is gone, its whole log is not: saved, named in the error, first error shown.
    (saved,) = (tmp_path / "logs" / profile.name).iterdir()
    assert f"log saved to {saved}" in message
    text = saved.read_text()
    assert "--no-such-flag" in text and len(text.splitlines()) > 1
    assert "first error: " in message and "--no-such-flag" in message.split("first error: ", 1)[1]


def test_port_taken_by_another_process(engine: Any, prepared: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        profile = variant("porttaken", port=port)
        with pytest.raises(PortTaken) as caught:
            deploy(engine, profile, progress=False)
    assert f"port {port} on 127.0.0.1 is taken" in caught.value.message
    assert caught.value.exit_code == 1
    assert gh200_containers(engine, profile=profile.name) == []


@pytest.fixture()
def pair(engine: Any, prepared: str) -> Iterator[tuple[Profile, Profile]]:
    first = variant("old")
    second = variant("new", port=first.port)
    yield first, second
    for p in (first, second):
        stop(engine, p.name)


def test_rollout_failure_rolls_back_to_the_previous_profile(
    engine: Any, pair: tuple[Profile, Profile]
) -> None:
    old, new = pair
    deploy(engine, old, progress=False, smoke=None)
    broken = new.model_copy(
        update={"health": new.health.model_copy(update={"endpoint": "/missing", "timeout_s": 3})}
    )
    with pytest.raises(DeployFailed) as caught:
        deploy(engine, broken, progress=False)
    assert f"rolled back: {old.name} restarted and healthy" in caught.value.message
    assert gh200_containers(engine, profile=new.name) == []
    assert len(_running(engine, old.name)) == 1 and _ready(old)


def test_rollout_replaces_the_profile_holding_the_port(engine: Any, pair: tuple[Profile, Profile]) -> None:
    old, new = pair
    from gh200.orchestrate.smoke_check import short_smoke

    first = deploy(engine, old, progress=False, smoke=None)
    result = deploy(engine, new, progress=False, smoke=short_smoke)
    assert result.changed and result.stopped == [first.targets[0]["container"]]
    assert result.smoke and result.smoke[0]["runs"] == 2
    assert gh200_containers(engine, profile=old.name) == []
    assert len(_running(engine, new.name)) == 1 and _ready(new)


def test_new_version_of_a_profile_replaces_the_old(engine: Any, prepared: str) -> None:
    v1 = variant("versions")
    v2 = v1.model_copy(update={"description": "second version"})
    try:
        deploy(engine, v1, progress=False, smoke=None)
        result = deploy(engine, v2, progress=False, smoke=None)
        assert result.changed
        (container,) = gh200_containers(engine, profile=v1.name)
        assert container.labels["io.gh200.profile-hash"] == profile_hash(v2)
    finally:
        stop(engine, v1.name)


def test_stack_deploys_and_stops_as_one(engine: Any, prepared: str) -> None:
    members = [variant("stack-a"), variant("stack-b")]
    try:
        result = deploy(engine, members, stack="tdep-stack", progress=False, smoke=None)
        assert result.changed and {t["profile"] for t in result.targets} == {m.name for m in members}
        assert all(t["stack"] == "tdep-stack" for t in result.targets)
        assert all(_ready(m) for m in members)
        assert deploy(engine, members, stack="tdep-stack", progress=False).changed is False
        removed = stop(engine, "tdep-stack")
        assert len(removed) == 2
        assert all(gh200_containers(engine, profile=m.name) == [] for m in members)
    finally:
        for m in members:
            stop(engine, m.name)


def test_api_key_from_a_0600_file(engine: Any, prepared: str, tmp_path: Path) -> None:
    from gh200.bench.run import run, target_for_profile
    from gh200.bench.smoke import SetPlan

    key_file = tmp_path / "api-key"
    key_file.write_text("sk-tdep-0123456789\n")
    key_file.chmod(0o644)
    profile = variant("key", api_key_file=str(key_file))
    with pytest.raises(ApiKeyFileInsecure):
        deploy(engine, profile, progress=False)
    assert gh200_containers(engine, profile=profile.name) == []
    key_file.chmod(0o600)
    try:
        deploy(engine, profile, progress=False)
        (container,) = _running(engine, profile.name)
        assert "sk-tdep-0123456789" not in json.dumps(container.labels)
        assert "sk-tdep-0123456789" not in " ".join(container.attrs["Config"]["Cmd"] or [])
        # Without the key the server refuses; with it the benchmark runs.
        assert not _ready(profile)
        outcome = run(
            target_for_profile(profile, engine),
            [SetPlan("synthetic", 16, 8, 1, 0)],
            write_results=False,
            show_progress=False,
        )
        assert outcome.sets[0].complete
        logs = bytes(container.logs()).decode(errors="replace")
        assert "sk-tdep-0123456789" not in logs
    finally:
        stop(engine, profile.name)


def test_cli_deploy_status_logs_smoke_stop_with_json(
    engine: Any, prepared: str, tmp_path: Path, gh200_cli: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    profile = variant("cli")
    path = tmp_path / f"{profile.name}.yaml"
    path.write_text(yaml.safe_dump(profile.model_dump(mode="json", by_alias=True), sort_keys=False))
    try:
        code, out, err = gh200_cli(["deploy", str(path), "--json"])
        assert code == 0, err
        first = json.loads(out)
        assert first["changed"] is True and first["profiles"][0]["profile"] == profile.name
        code, out, _ = gh200_cli(["deploy", str(path), "--json"])
        assert code == 0 and json.loads(out)["changed"] is False
        code, out, _ = gh200_cli(["status", "--json"])
        rows = [r for r in json.loads(out)["containers"] if r["profile"] == profile.name]
        assert code == 0 and rows[0]["health"] == "ready"
        code, out, _ = gh200_cli(["logs", profile.name, "--tail", "5"])
        assert code == 0 and len(out.splitlines()) <= 5 and out.strip()
        results = tmp_path / "results.jsonl"
        args = [
            "smoke",
            str(path),
            "--shape",
            "32:16",
            "--warm",
            "2",
            "--no-real",
            "--results",
            str(results),
            "--json",
        ]
        code, out, err = gh200_cli(args)
        assert code == 0, err
        report = json.loads(out)
        assert report["ok"] is True and report["sets"][0]["summary"]["runs"] == 3
        assert report["markdown"].startswith("| Profile | Shape | Runs | Median output tok/s |")
        assert json.loads(results.read_text().splitlines()[0])["profile"] == profile.name
        code, out, err = gh200_cli(["smoke", str(path), "--shape", "2000:200", "--json"])
        assert code == 2 and "needs 2200 tokens of context" in err
        # --gate runs the expected shapes and names the shape and metric that fall short.
        gated = profile.model_copy(
            update={
                "expected": [
                    Expected(shape="32:16", metric="output_tok_s", value=0.01, source="test: surely met"),
                    Expected(
                        shape="32:16", concurrency=2, metric="output_tok_s", value=1e9, source="test: never"
                    ),
                ]
            }
        )
        path.write_text(yaml.safe_dump(gated.model_dump(mode="json", by_alias=True), sort_keys=False))
        code, out, err = gh200_cli(["smoke", str(path), "--gate", "--warm", "1", "--no-real", "--no-results"])
        assert code == 1, err
        assert "below expectation: 32:16 c2 output_tok_s: median" in err and "expected 1e+09" in err
        assert "32:16 c1" not in err.split("below expectation")[1]
        assert "| 2 x 32->16 | 2 |" in out
        code, out, _ = gh200_cli(["stop", profile.name, "--json"])
        assert code == 0 and json.loads(out)["changed"] is True
        code, out, _ = gh200_cli(["stop", profile.name, "--json"])
        assert code == 0 and json.loads(out) == {"changed": False, "stopped": []}
        code, _, err = gh200_cli(["smoke", str(path)])
        assert code == 2 and "is not deployed here" in err
    finally:
        stop(engine, profile.name)
    assert [c for c in leftovers(engine) if c.labels.get("io.gh200.profile") == profile.name] == []


def test_unhealthy_copy_of_the_same_version_is_replaced(engine: Any, prepared: str) -> None:
    profile = variant("hung")
    try:
        deploy(engine, profile, progress=False, smoke=None)
        (container,) = gh200_containers(engine, profile=profile.name)
        container.pause()  # still there, same hash, but it answers nothing
        assert not _ready(profile)
        result = deploy(engine, profile, progress=False, smoke=None)
        assert result.changed and result.stopped == []
        (fresh,) = gh200_containers(engine, profile=profile.name)
        assert fresh.id != container.id and _ready(profile)
    finally:
        stop(engine, profile.name)


# --- placement under Docker's real default seccomp profile, the API key file, shard patterns ----------

DOCKER_SECCOMP = Path("/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json")


@pytest.fixture(scope="module")
def docker_seccomp() -> list[str]:
    """Docker's own default profile (Debian's golang-github-docker-docker-dev), passed to Podman:
    it allows set_mempolicy/mbind only with CAP_SYS_NICE, where Podman's profile always allows them."""
    if not DOCKER_SECCOMP.is_file():
        pytest.fail(f"needs {DOCKER_SECCOMP}: run scripts/ensure-apt.sh (golang-github-docker-docker-dev)")
    policy = json.loads(DOCKER_SECCOMP.read_text())
    gated = [s for s in policy["syscalls"] if "set_mempolicy" in s["names"]]
    assert gated and all(s.get("includes", {}).get("caps") == ["CAP_SYS_NICE"] for s in gated)
    return [f"seccomp={DOCKER_SECCOMP}"]


def _membind(name: str, **updates: Any) -> Profile:
    """local-tiny bound to NUMA node 0 (CPUs and memory): the server runs under numactl --membind."""
    return variant(name, placement=Placement(cpu=CpuPlacement(numa_node=0, membind=True)), **updates)


def test_memory_binding_without_cap_sys_nice_is_refused_with_the_log_line(
    engine: Any,
    prepared: str,
    docker_seccomp: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gh200.profiles import container_spec as rendered

    monkeypatch.setenv("GH200_STATE", str(tmp_path))

    def without_capability(*args: Any, **kwargs: Any) -> dict[str, Any]:
        spec = rendered(*args, **kwargs)
        assert spec.pop("cap_add") == ["SYS_NICE"]  # what render gives a memory-binding profile
        return spec

    monkeypatch.setattr("gh200.deploy.deploy.container_spec", without_capability)
    profile = _membind("nocap")
    with pytest.raises(PlacementRefused) as caught:
        deploy(engine, profile, progress=False, smoke=None, security_opt=docker_seccomp)
    message = caught.value.message
    assert "NUMA memory binding was refused" in message and "Operation not permitted" in message
    assert "CAP_SYS_NICE" in str(caught.value.fix)
    (saved,) = (tmp_path / "logs" / profile.name).iterdir()
    assert str(saved) in message
    assert gh200_containers(engine, profile=profile.name) == []


def test_memory_binding_holds_with_the_rendered_capability(
    engine: Any, prepared: str, docker_seccomp: list[str]
) -> None:
    profile = _membind("membind")
    try:
        deploy(engine, profile, progress=False, smoke=None, security_opt=docker_seccomp)
        (container,) = _running(engine, profile.name)
        # Docker reports CapAdd as requested, Podman without the CAP_ prefix.
        added = {c.removeprefix("CAP_") for c in container.attrs["HostConfig"].get("CapAdd") or []}
        assert "SYS_NICE" in added
        assert launch_argv(container)[:3] == ["numactl", "--cpunodebind=0", "--membind=0"]
        # PID 1 is llama-server (numactl execs it): every mapping follows the bind policy.
        code, out = container.exec_run(["cat", "/proc/1/numa_maps"])
        assert code == 0, out
        policies = {line.split()[1] for line in out.decode().splitlines() if line.strip()}
        assert policies == {"bind:0"}, policies
        assert _ready(profile)
    finally:
        stop(engine, profile.name)


def test_llama_server_takes_the_key_from_a_read_only_file(engine: Any, prepared: str, tmp_path: Path) -> None:
    import httpx

    key = "sk-tdep-keyfile-42"
    key_file = tmp_path / "api-key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    profile = variant("keyfile", api_key_file=str(key_file))
    base = f"http://127.0.0.1:{profile.port}"
    copy: Path | None = None
    try:
        deploy(engine, profile, progress=False, smoke=None)  # readiness passed with the key
        (container,) = _running(engine, profile.name)
        assert key not in json.dumps(container.attrs["Config"].get("Env") or [])
        mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
        assert mounts["/run/secrets/gh200-api-key"]["RW"] is False
        body = {"model": profile.model.served_name, "prompt": "hello", "max_tokens": 2}
        refused = httpx.post(f"{base}/v1/completions", json=body, timeout=30)
        assert refused.status_code == 401
        wrong = {"Authorization": "Bearer sk-wrong"}
        assert httpx.post(f"{base}/v1/completions", json=body, headers=wrong, timeout=30).status_code == 401
        served = httpx.post(
            f"{base}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        assert served.status_code == 200, served.text
        assert probe_ready(f"{base}/health", f"{base}/v1/models", profile.model.served_name, key)[0]
        copy = key_copy_path(container.name)
        assert copy.is_file()
    finally:
        stop(engine, profile.name)
    assert copy is not None and not copy.exists()  # the copy goes with the container


def test_shard_pattern_resolves_to_the_one_file_it_names(
    engine: Any, prepared: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """glm52-iq2xxs-cpu's form (`UD-IQ2_XXS/*-00001-of-*.gguf`) on a store laid out like the real one,
    holding the tiny model's files under shard names: no shell in the container expands it."""
    import shutil

    from gh200.deploy.tinymodel import ensure_tiny_model
    from gh200.profiles import load_profile

    tiny = ensure_tiny_model(load_profile("local-tiny"))
    store = tmp_path / "store"
    shards = store / "tdep--shards" / "UD-TINY"
    shards.mkdir(parents=True)
    shutil.copy(tiny.target, shards / "tiny-llama-spm-00001-of-00002.gguf")
    (shards / "tiny-llama-spm-00002-of-00002.gguf").write_bytes(b"")  # never opened by name
    shutil.copy(tiny.draft, shards.parent / "tiny-llama-spm-draft.gguf")
    for path in [store, *store.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # the server's own user reads the mount
    monkeypatch.setenv("GH200_MODELS", str(store))
    model = load_profile("local-tiny").model.model_copy(
        update={"repo": "tdep/shards", "gguf_file": "UD-TINY/*-00001-of-*.gguf"}
    )
    profile = variant("shards", model=model)
    (shards / "other-00001-of-00003.gguf").write_bytes(b"")
    with pytest.raises(ModelFileUnresolved) as caught:
        deploy(engine, profile, progress=False, smoke=None)
    message = caught.value.message
    assert "2 files" in message and "other-00001-of-00003.gguf" in message
    assert caught.value.exit_code == 2
    assert gh200_containers(engine, profile=profile.name) == []
    (shards / "other-00001-of-00003.gguf").unlink()
    try:
        deploy(engine, profile, progress=False, smoke=None)
        (container,) = _running(engine, profile.name)
        wanted = "/models/tiny-llama/UD-TINY/tiny-llama-spm-00001-of-00002.gguf"
        argv = launch_argv(container)
        assert argv[argv.index("-m") + 1] == wanted
        assert _ready(profile)
    finally:
        stop(engine, profile.name)
