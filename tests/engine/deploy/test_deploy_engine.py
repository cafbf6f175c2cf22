"""Deploy against a real engine and the real llama-server image: readiness, labels, roll-out and
roll-back, faults that leave no stray container, stacks, API keys, and the CLI with --json."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_testlib import leftovers, variant

from gh200.deploy.deploy import (
    ApiKeyFileInsecure,
    DeployFailed,
    PortTaken,
    deploy,
    gh200_containers,
    probe_ready,
    status,
    stop,
)
from gh200.profiles import profile_hash
from gh200.profiles.schema import Expected, Profile

pytestmark = pytest.mark.engine


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


def test_exit_before_ready_fails_fast(engine: Any, prepared: str) -> None:
    profile = variant("crash", settings={"extra_args": ["--no-such-flag"]})
    with pytest.raises(DeployFailed) as caught:
        deploy(engine, profile, progress=False)
    assert "exited (code" in caught.value.message and "before it was ready" in caught.value.message
    assert gh200_containers(engine, profile=profile.name) == []


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
    first = deploy(engine, old, progress=False, smoke=None)
    result = deploy(engine, new, progress=False)
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


@pytest.fixture()
def gh200_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[[list[str]], tuple[int, str, str]]:
    from gh200.cli import main

    def run(args: list[str]) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["gh200", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


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
