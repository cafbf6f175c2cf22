"""Two booting test hosts at once: `gh200 fleet rollout` runs the real `gh200 rollout` on each, one
host at a time, and stops at the first host that regressed.

Each host runs its bundle's own CLI (installed by the gh200_bundle role) against the machine's
Podman through a bind-mounted API socket (a service of this test's own), and shares the machine's
network so the llama-server its rollout starts (published on 127.0.0.1) answers its gh200. A
container's bind mounts are resolved by that engine on the machine, so each host's cache (the
tiny model) and state (run records, baselines) live in a directory mounted at the same path in
the host. The hosts serve their own copies of local-tiny (own name, own port), so they cannot
collide with each other or with other tests' local-tiny on the same engine.

Scenario: both hosts get a baseline (`--accept`); then ws1 serves a slowed variant of its copy
(12 drafted tokens, none accepted: see SLOW_SETTINGS), and the fleet rollout
regresses on ws1, which rolls itself back, and never touches ws2: the fleet exits 3. Last, the
unchanged profiles on both hosts pass at the floor this machine needs (PASS_FLOOR, set as the
inventory's gh200_fleet_min_effect) and the fleet completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_testhost import ROOT, SSH_OPTIONS, TestHost, gh200, inventory_vars, podman

pytestmark = [pytest.mark.ansible, pytest.mark.slow]

SOCKET_IN_HOST = "/run/gh200-test/podman.sock"
# The slowed variant, as tests/engine/orchestrate slows local-tiny: 12 drafted tokens per step,
# none accepted (synthetic acceptance). Far beyond the gate's floor and the noise of a
# shared 2-core machine, so the regression never depends on luck.
SLOW_DRAFT = 12
SLOW_SETTINGS = {
    "speculative": {"method": "draft", "num_speculative_tokens": SLOW_DRAFT},
    "extra_args": ["--spec-synth-rates", ",".join(["0"] * SLOW_DRAFT)],
}
# About a second per run on local-tiny; the gate's default one cold + 10 warm runs. 1024 prompt
# tokens, not 64: at 64 TTFT is ~10-20 ms, mostly scheduling, and doubled between two in-place
# measurements of one deployment; at 1024 prefill is ~90 ms (tests/engine/orchestrate measures it).
SHAPE = "1024:128"
# The floor the every-host-passes run gates at. Each host's rollout measures the deployment that is
# already running (its baseline's, or the one restored after the regression), so only time separates
# the two run sets. `make bench-gate` on this kind of machine (a shared 2-core VM) measured the
# smallest floor with <= 5% false alarms between fresh deployments at 18-46%; one deployment measured
# twice drifts no more, and two hosts must both pass by chance: the top of that range, rounded up.
# Each host's rollout measures a flagged set again (--confirm 1) before it counts: once, a whole set
# measured right after a roll-back was 1.8x slower (tpot) with nothing changed.
# The slowed host above gates at the default 5%. As in the engine test, no floor covers CPU-bound
# jobs at the servers' own priority: beside mutation runs, a host's TTFT at 64:128 (about 20 ms)
# doubled between two in-place measurements.
PASS_FLOOR = 0.5
LABEL_PROFILE = "io.gh200.profile"


@dataclass
class FleetHost:
    name: str  # inventory name
    host: TestHost
    shared: Path  # mounted at the same path in the host: cache/ and state/ of its gh200
    profile: str  # this host's copy of local-tiny
    normal: Path
    slow: Path

    @property
    def state(self) -> Path:
        return self.shared / "state"

    def run_records(self) -> list[str]:
        return sorted(str(p.relative_to(self.state)) for p in self.state.rglob("*") if p.is_file())

    def containers(self) -> list[dict[str, Any]]:
        out = podman("ps", "--all", "--filter", f"label={LABEL_PROFILE}={self.profile}", "--format", "json")
        return list(json.loads(out.stdout or "[]"))


def _identity(containers: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    return sorted((c["Id"], c["State"], c.get("StartedAt")) for c in containers)


@pytest.fixture(scope="module")
def engine_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This test's own Podman API service on the machine's store, its socket open to the hosts'
    gh200 user (it is bind-mounted into them; the directory holding it stays root's)."""
    from gh200.engine import podman_env

    sock = tmp_path_factory.mktemp("fleet-engine") / "podman.sock"
    log = open(sock.parent / "service.log", "ab")  # noqa: SIM115 - handed to the service
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        env=podman_env(),
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert service.poll() is None and time.monotonic() < deadline, (
                sock.parent / "service.log"
            ).read_text()
            time.sleep(0.2)
        sock.chmod(0o666)
        yield sock
    finally:
        service.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def llama_image(engine: Any) -> str:
    """The llama.cpp image, built here once if missing; the hosts' gh200 find it by its recipe hash."""
    from gh200.images.build import ensure_image

    return ensure_image(engine, "llama_cpp", progress=False)


def _distinct_ports(count: int) -> list[int]:
    """Free ports, all different: the sockets stay open until all are chosen (a closed port may be
    handed out again at once). Rootful Podman publishes by DNAT without holding the port, so two
    servers on one port both start, and each host's client would measure whichever answers."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _profile_copies(shared: Path, name: str, port: int) -> tuple[Path, Path]:
    """local-tiny under this host's name and port; the slow one differs in its draft."""
    raw = yaml.safe_load((ROOT / "profiles" / "local-tiny.yaml").read_text())
    # One server thread on a 2-core machine, as in tests/engine/orchestrate: a core for the client.
    raw.update(name=name, port=port, settings={**raw["settings"], "threads": 1})
    normal = shared / "profiles" / f"{name}.yaml"
    slow = shared / "profiles-slow" / f"{name}.yaml"
    for path, data in (
        (normal, raw),
        (
            slow,
            {**raw, "settings": {**raw["settings"], **SLOW_SETTINGS}},
        ),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return normal, slow


def _pregenerate_model(shared: Path, profile_path: Path) -> None:
    """The tiny model in the host's cache, made here: generating it needs the llama.cpp sdist's
    vocab, which lives in this machine's cache (the host has no network)."""
    from gh200.deploy.tinymodel import ensure_tiny_model
    from gh200.profiles import load_profile
    from gh200.profiles.render import model_dir_name

    profile = load_profile(profile_path)
    ensure_tiny_model(profile, directory=shared / "cache" / "models" / model_dir_name(profile))


def write_fleet_inventory(
    path: Path,
    hosts: list[FleetHost],
    slow: set[str],
    bundle: str,
    paths: dict[str, Path] | None = None,
    *,
    floor: float | None = None,
) -> Path:
    """Both hosts in group gh200, in order; each rolls out its own copy of local-tiny (the slowed
    one for the hosts in `slow`, or the path given in `paths`), at the gate's floor `floor` when
    given (the role's gh200_fleet_min_effect, as a user sets it in an inventory)."""
    entries = {}
    for fh in hosts:
        profile = (paths or {}).get(fh.name) or (fh.slow if fh.name in slow else fh.normal)
        entries[fh.name] = {
            "ansible_host": "127.0.0.1",
            "ansible_port": fh.host.port,
            "ansible_user": "ops",
            "ansible_become": True,
            "ansible_ssh_private_key_file": str(fh.host.key),
            "ansible_ssh_common_args": " ".join(SSH_OPTIONS),
            "gh200_fleet_profile_paths": {"local-tiny": str(profile)},
            "gh200_fleet_environment": {
                "DOCKER_HOST": f"unix://{SOCKET_IN_HOST}",
                "GH200_CACHE": str(fh.shared / "cache"),
                "GH200_STATE": str(fh.state),
            },
        }
        if floor is not None:
            entries[fh.name]["gh200_fleet_min_effect"] = floor
    inventory = {"all": {"children": {"gh200": {"hosts": entries}}}}
    path.mkdir(parents=True, exist_ok=True)
    (path / "hosts.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    (path / "group_vars").mkdir(exist_ok=True)
    (path / "group_vars" / "gh200.yml").write_text(
        yaml.safe_dump(inventory_vars(hosts[0].host, bundle), sort_keys=False)
    )
    return path / "hosts.yml"


@pytest.fixture(scope="module")
def fleet(
    new_testhost: Any,
    engine_socket: Path,
    bundle_archive: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[FleetHost]]:
    """Two booted hosts with the bundle installed (gh200_bundle role, one provision run for both).
    The servers their rollouts started run on the machine's engine: removed at the end."""
    started = time.monotonic()
    hosts = []
    for n, port in zip((1, 2), _distinct_ports(2), strict=True):
        shared = tmp_path_factory.mktemp(f"fleet-ws{n}")
        name = f"fleet-{os.getpid()}-ws{n}"
        normal, slow = _profile_copies(shared, name, port)
        _pregenerate_model(shared, normal)
        host = new_testhost(
            host_network=True, volumes=(f"{shared}:{shared}:rw", f"{engine_socket}:{SOCKET_IN_HOST}:rw")
        )
        hosts.append(FleetHost(f"ws{n}", host, shared, name, normal, slow))
    inventory = write_fleet_inventory(tmp_path_factory.mktemp("fleet-inv"), hosts, set(), bundle_archive)
    done = gh200("provision", "--inventory", str(inventory), "--tags", "bundle", "--json", timeout=1800)
    assert done.returncode == 0, (done.stderr[-2000:], done.stdout[-4000:])
    for fh in hosts:
        # The bundle's user (made by the role) owns its cache and state, as on a real host.
        fh.host.sh(f"chown -R gh200:gh200 {fh.shared}")
    print(f"fleet: two hosts booted and converged (bundle) in {time.monotonic() - started:.0f}s")
    try:
        yield hosts
    finally:
        for fh in hosts:
            for container in fh.containers():
                podman("rm", "--force", "--time", "5", container["Id"], check=False)


def fleet_rollout(
    hosts: list[FleetHost],
    bundle: str,
    where: Path,
    *args: str,
    slow: frozenset[str] = frozenset(),
    floor: float | None = None,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    inventory = write_fleet_inventory(where / "inv", hosts, set(slow), bundle, floor=floor)
    started = time.monotonic()
    done = gh200(
        "fleet",
        "rollout",
        "local-tiny",
        "--inventory",
        str(inventory),
        "--results",
        str(where / "results"),
        "--artifacts",
        str(where / "artifacts"),
        "--shape",
        SHAPE,
        *args,
        "--json",
        timeout=2400,
    )
    assert done.stdout.strip(), (
        f"no JSON from gh200 fleet rollout (rc {done.returncode}): {done.stderr[-3000:]}"
    )
    summary: dict[str, Any] = json.loads(done.stdout)
    outcomes = [(h["host"], h["outcome"], h["rollout_outcome"]) for h in summary["hosts"]]
    took = time.monotonic() - started
    print(f"gh200 fleet rollout {' '.join(args)}: rc {done.returncode} in {took:.0f}s; {outcomes}")
    return done, summary


def test_a_host_that_refuses_its_rollout_stops_the_fleet(
    fleet: list[FleetHost], bundle_archive: str, tmp_path: Path
) -> None:
    """ws1's copy of the profile is missing on ws1: its real gh200 refuses (exit 2) before any
    change, the fleet keeps that error line, stops, and never reaches ws2. (Needs no image.)"""
    ws1, ws2 = fleet
    records = [fh.run_records() for fh in fleet]
    missing = ws1.shared / "no-such-profile.yaml"
    inventory = write_fleet_inventory(tmp_path / "inv", fleet, set(), bundle_archive, {"ws1": missing})
    done = gh200(
        "fleet", "rollout", "local-tiny", "-i", str(inventory), "--results", str(tmp_path / "r"), "--json"
    )
    summary = json.loads(done.stdout)
    assert done.returncode == 1, (done.stderr[-2000:], summary)
    assert [(h["host"], h["outcome"]) for h in summary["hosts"]] == [
        ("ws1", "failed"),
        ("ws2", "not_attempted"),
    ]
    first = summary["hosts"][0]
    assert first["rc"] == 2 and str(missing) in first["message"] and "cannot read" in first["message"]
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["ws1.json"]
    assert [fh.run_records() for fh in fleet] == records and ws2.containers() == []
    assert "fleet stopped at ws1" in done.stderr and "not attempted: ws2" in done.stderr


@pytest.fixture(scope="module")
def baselines(
    fleet: list[FleetHost], llama_image: str, bundle_archive: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    done, summary = fleet_rollout(
        fleet, bundle_archive, tmp_path_factory.mktemp("fleet-baseline"), "--accept"
    )
    assert done.returncode == 0, (done.stderr[-2000:], summary)
    return summary


def test_both_hosts_get_a_baseline_of_their_own(baselines: dict[str, Any], fleet: list[FleetHost]) -> None:
    assert [(h["host"], h["outcome"]) for h in baselines["hosts"]] == [
        ("ws1", "accepted"),
        ("ws2", "accepted"),
    ]
    assert baselines["stopped_at"] is None and baselines["counts"]["accepted"] == 2
    for fh in fleet:
        # The real rollout ran on the host: its own run record and baseline, in its own state.
        records = fh.run_records()
        assert any("baseline" in r for r in records), records
        running = [c for c in fh.containers() if c["State"] == "running"]
        assert len(running) == 1, fh.containers()
        # The host's gh200 is the bundle's, not this checkout's.
        assert fh.host.sh("readlink /opt/gh200/current").startswith("/opt/gh200/releases/")


def test_a_slowed_host_stops_the_fleet_and_the_next_host_is_not_touched(
    baselines: dict[str, Any], fleet: list[FleetHost], bundle_archive: str, tmp_path: Path
) -> None:
    ws1, ws2 = fleet
    before1 = [c for c in ws1.containers() if c["State"] == "running"]
    before2 = ws2.containers()
    records2 = ws2.run_records()
    done, summary = fleet_rollout(fleet, bundle_archive, tmp_path, slow=frozenset({"ws1"}))
    assert done.returncode == 3, (done.stderr[-2000:], summary)
    assert [(h["host"], h["outcome"]) for h in summary["hosts"]] == [
        ("ws1", "regressed"),
        ("ws2", "not_attempted"),
    ]
    assert summary["stopped_at"] == "ws1" and summary["stopped_because"] == "regressed"
    first = summary["hosts"][0]
    assert first["rollout_outcome"] == "rolled_back" and first["rc"] == 3
    assert first["regressions"], first
    assert all(
        r["change_pct"] < 0 or "ttft" in r["metric"] or "tpot" in r["metric"] for r in first["regressions"]
    )
    # The record says what changed between the baseline and the new version (the launch flags).
    assert first["changes"], first
    assert first["restored"], first
    # ws1 serves its old version again (the same container, restored); nothing new left running.
    after1 = [c for c in ws1.containers() if c["State"] == "running"]
    assert [c["Labels"]["io.gh200.profile-hash"] for c in after1] == [
        c["Labels"]["io.gh200.profile-hash"] for c in before1
    ]
    # ws2: untouched. Same containers, no new record, no result file.
    assert _identity(ws2.containers()) == _identity(before2) and ws2.run_records() == records2
    assert not (tmp_path / "results" / "ws2.json").exists()
    assert "fleet stopped at ws1" in done.stderr and "not attempted: ws2" in done.stderr


def test_when_every_host_passes_the_fleet_completes(
    baselines: dict[str, Any], fleet: list[FleetHost], bundle_archive: str, tmp_path: Path
) -> None:
    # One fleet run; the floor comes from the inventory (gh200_fleet_min_effect), not `--min-effect`.
    done, summary = fleet_rollout(fleet, bundle_archive, tmp_path, floor=PASS_FLOOR)
    assert done.returncode == 0, (done.stderr[-2000:], summary)
    assert [(h["host"], h["outcome"]) for h in summary["hosts"]] == [("ws1", "passed"), ("ws2", "passed")]
    assert summary["stopped_at"] is None and summary["outcome"] == "completed"
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["ws1.json", "ws2.json"]
    for host in summary["hosts"]:
        assert host["rollout_outcome"] == "passed" and host["run_id"] and host["baseline_run_id"], host
        # Each host's own gh200 was given the floor by the role and gated at it.
        kept = json.loads(Path(host["result_file"]).read_text())
        assert kept["argv"][-2:] == ["--min-effect", str(PASS_FLOOR)], kept["argv"]
        assert kept["result"]["min_effect"] == PASS_FLOOR
