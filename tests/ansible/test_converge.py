"""Scenario "bare host, reboot allowed": one `gh200 provision` run converges a booting test host,
rebooting it once inline, and a second run changes nothing (`--idempotence`). Then the host's
state is read back directly (dpkg, apt, systemd, files) and through the shipped testinfra suite.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from ansible_testhost import TestHost, gh200, provision

pytestmark = [pytest.mark.ansible, pytest.mark.slow]

ABI = "6.14.0-1013-nvidia-64k"
GRACE_ARGS = ("init_on_alloc=0", "numa_balancing=disable", "acpi_power_meter.force_cap_on=y")


@pytest.fixture(scope="module")
def testhost(new_testhost: Any) -> TestHost:
    host: TestHost = new_testhost()
    return host


@pytest.fixture(scope="module")
def inventory(testhost: TestHost) -> Path:
    return testhost.inventory


@pytest.fixture(scope="module")
def converged(testhost: TestHost, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    artifacts = tmp_path_factory.mktemp("artifacts")
    assert testhost.boot()["kernel"].endswith("-generic") and testhost.restarts() == 0
    done, result = provision(testhost.inventory, "--idempotence", "--artifacts", str(artifacts))
    if done.returncode != 0:
        failed = [t for run in result["runs"] for t in run["failed_tasks"] + run["changed_tasks"]]
        pytest.fail(
            f"gh200 provision failed: {done.stderr.strip()[-2000:]}\n{json.dumps(failed, indent=1)[:4000]}"
        )
    return result


def test_first_run_changes_the_host_and_second_changes_nothing(converged: dict[str, Any]) -> None:
    first, second = converged["runs"]
    assert converged["ok"] is True and converged["idempotent"] is True
    assert converged["reboot_pending"] == {}
    assert first["hosts"]["testhost"]["changed"] > 10
    assert first["hosts"]["testhost"]["failed"] == 0
    assert "Reboot the host" in [t["task"] for t in first["changed_tasks"]]
    assert second["hosts"]["testhost"]["changed"] == 0, second["changed_tasks"]
    assert second["hosts"]["testhost"]["ok"] > 30
    assert Path(first["artifacts_dir"]).is_dir() and Path(second["artifacts_dir"]).is_dir()
    assert first["artifacts_dir"] != second["artifacts_dir"]


def test_driver_is_ubuntus_precompiled_build_at_the_pinned_version(
    converged: dict[str, Any], testhost: TestHost
) -> None:
    versions = dict(
        line.split()
        for line in testhost.sh(
            "dpkg-query -W -f='${Package} ${Version}\\n' 'nvidia-*' 'libnvidia-*' 'linux-modules-nvidia-*'"
            " 2>/dev/null | awk 'NF==2'"
        ).splitlines()
    )
    # The pin keeps 580.105.08 although Ubuntu offers 580.126.09, and the CUDA pin keeps NVIDIA's
    # 580.105.08-1ubuntu1 (a higher revision of the same names) out.
    for name in (
        "nvidia-utils-580-server",
        "libnvidia-compute-580-server",
        "nvidia-headless-no-dkms-580-server-open",
    ):
        assert versions.get(name) == "580.105.08-0ubuntu0.24.04.2", (name, versions)
    # The matched set: the precompiled modules of the kernel ABI built against 580.105.08.
    assert versions.get(f"linux-modules-nvidia-580-server-open-{ABI}") == "6.14.0-1013.13~24.04.1"
    # Precompiled modules, not DKMS.
    assert "nvidia-dkms-580-server-open" not in versions
    policy = testhost.sh("apt-cache policy libnvidia-compute-580-server")
    assert re.search(r"580\.105\.08-1ubuntu1 -1\n\s+500 http://cuda\.mirror\.test", policy), policy


def test_packages_are_held(converged: dict[str, Any], testhost: TestHost) -> None:
    held = set(testhost.sh("apt-mark showhold").split())
    assert {
        f"linux-image-{ABI}",
        f"linux-modules-nvidia-580-server-open-{ABI}",
        "nvidia-headless-no-dkms-580-server-open",
        "nvidia-utils-580-server",
        "cuda-toolkit-13-0",
    } <= held


def test_cuda_comes_from_the_mirror_only(converged: dict[str, Any], testhost: TestHost) -> None:
    own = testhost.read("/etc/apt/sources.list.d/cuda-ubuntu2404-sbsa.list")
    assert "developer.download.nvidia.com" not in own and own.startswith("# Replaced by gh200-stack")
    sources = testhost.read("/etc/apt/sources.list.d/gh200-cuda.sources")
    assert "URIs: http://cuda.mirror.test:8080/cuda/" in sources
    # apt itself: no configured source anywhere still names NVIDIA's server.
    assert "developer.download.nvidia.com" not in testhost.sh("apt-get indextargets --format '$(URI)'")
    installed = testhost.sh("dpkg-query -W -f='${Status} ${Version}' cuda-toolkit-13-0")
    assert installed == "hold ok installed 13.0.2-1"
    # 13.1 is offered too; the toolkit package for the configured 13.0 is the one installed.
    other = testhost.sh("dpkg-query -W -f='${db:Status-Status}' cuda-toolkit-13-1 2>/dev/null || echo absent")
    assert other.strip() in ("absent", "not-installed")


def test_container_toolkit_pinned_and_daemon_json_merged(
    converged: dict[str, Any], testhost: TestHost
) -> None:
    version = testhost.sh("dpkg-query -W -f='${Version}' nvidia-container-toolkit")
    assert version == "1.18.0-1"  # 1.19.0-1 is offered, the pin holds 1.18.0-1
    config = json.loads(testhost.read("/etc/docker/daemon.json"))
    assert config["log-driver"] == "json-file"  # kept from before
    assert config["log-opts"] == {"max-size": "10m", "max-file": "3"}  # merged
    assert config["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    # nvidia-ctk configured the runtime once (first run) and not again once it was present.
    calls = testhost.read("/var/log/nvidia-ctk-standin.log").splitlines()
    assert [c for c in calls if c.startswith("runtime")] == [
        "runtime configure --runtime=docker --config=/etc/docker/daemon.json"
    ]
    # The CDI spec is nvidia-cdi-refresh's, made at the boot that loaded the driver, for that driver;
    # no second spec of our own.
    assert "# driver 580.105.08" in testhost.read("/var/run/cdi/nvidia.yaml")
    assert not testhost.exists("/etc/cdi/nvidia.yaml")
    assert testhost.sh("getent group docker").startswith("docker:")
    assert testhost.sh("systemctl is-active docker nvidia-cdi-refresh.path").split() == ["active", "active"]


def test_rebooted_once_into_the_64k_kernel_with_the_driver(
    converged: dict[str, Any], testhost: TestHost
) -> None:
    # One reboot, inline, by the run itself (the container's restart policy brought it back).
    assert testhost.restarts() == 1
    boot = testhost.boot()
    assert (boot["kernel"], boot["driver"]) == (ABI, "580.105.08")
    cmdline = testhost.read("/proc/cmdline").split()
    assert cmdline[0] == f"BOOT_IMAGE=/boot/vmlinuz-{ABI}" and set(GRACE_ARGS) <= set(cmdline)
    # GRUB's default is the 64K kernel although the generic kernel is newer.
    grub = testhost.read("/boot/grub/grub.cfg")
    assert f'set default="Advanced options for Ubuntu>Ubuntu, with Linux {ABI}"' in grub
    assert not testhost.exists("/var/run/reboot-required")
    assert testhost.sh("systemctl is-active nvidia-persistenced").strip() == "active"
    assert "--persistence-mode" in testhost.read("/var/run/nvidia-persistenced/args")


def test_bundle_installed_and_runs(converged: dict[str, Any], testhost: TestHost) -> None:
    assert testhost.sh("/usr/local/bin/gh200 --version").strip().startswith("gh200 ")
    current = testhost.sh("readlink /opt/gh200/current").strip()
    assert re.fullmatch(r"/opt/gh200/releases/gh200-stack-[0-9a-f]{16}", current), current
    assert testhost.sh("stat -c '%U:%G %a' /srv/models").strip() == "gh200:gh200 2775"
    assert "GH200_MODELS=/srv/models" in testhost.read("/etc/gh200/environment")


def test_host_suite_passes_over_ssh(converged: dict[str, Any], inventory: Path) -> None:
    done = gh200("verify", "--inventory", str(inventory), "--json", timeout=600)
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert done.returncode == 0, [c for c in result["checks"] if c["outcome"] != "passed"]
    assert result["changed"] is False and result["hosts"] == ["ansible://testhost"]
    outcomes = {c["check"]: c for c in result["checks"]}
    for check in (
        "Driver packages installed, at the pinned version",
        "NVIDIA's CUDA repository cannot supply driver packages",
        "CUDA source points at the configured repository (or mirror) only",
        "daemon.json has the nvidia runtime and the configured settings",
        "NCCL settings (NCCL_P2P_DISABLE=1) in /etc/nccl.conf and the environment",
        "Model store exists, owned by the bundle user, with the free space required",
    ):
        assert outcomes[check]["outcome"] == "passed", outcomes[check]
    # The booting host runs what a container could not before: the boot and the services.
    for check in (
        "Running kernel booted with the Grace command line",
        "nvidia-persistenced enabled and running",
        "Docker running, with the nvidia runtime registered",
    ):
        assert outcomes[check]["outcome"] == "passed", outcomes[check]
    # What a container cannot have is skipped, and says why; never passed.
    skipped = {c["check"]: c["detail"] for c in result["checks"] if c["outcome"] == "skipped"}
    assert "gh200_verify_gpu_count: 0" in skipped["GPU count as expected"]
    assert all(skipped.values())
    assert result["summary"]["passed"] >= 15 and result["summary"]["failed"] == 0


def test_verify_playbook_checks_the_host_itself_and_changes_nothing_twice(
    converged: dict[str, Any], inventory: Path, tmp_path: Path
) -> None:
    done = gh200(
        "provision",
        "--inventory",
        str(inventory),
        "--playbook",
        "verify",
        "--idempotence",
        "--artifacts",
        str(tmp_path),
        "--json",
    )
    result = json.loads(done.stdout)
    assert done.returncode == 0, (done.stderr[-2000:], result["runs"][-1]["failed_tasks"])
    assert result["idempotent"] is True
    # The suite ran on the host as the bundle's user (`gh200 verify --local`), from the bundle.
    events = list((Path(result["runs"][1]["artifacts_dir"]) / "job_events").glob("*.json"))
    runs = [json.loads(p.read_text()) for p in events]
    verify = [
        e["event_data"]["res"]
        for e in runs
        if e.get("event") == "runner_on_ok" and e["event_data"].get("task", "").startswith("Run gh200 verify")
    ]
    assert len(verify) == 1 and verify[0]["changed"] is False
    report = json.loads(verify[0]["stdout"])
    assert (
        report["target"] == "local://"
        and report["summary"]["failed"] == 0
        and report["summary"]["passed"] >= 15
    )


def test_check_mode_on_a_provisioned_host_changes_nothing(converged: dict[str, Any], inventory: Path) -> None:
    done = gh200("provision", "--inventory", str(inventory), "--check", "--json")
    result = json.loads(done.stdout)
    assert done.returncode == 0, result["runs"][0]["failed_tasks"]
    assert result["runs"][0]["hosts"]["testhost"]["changed"] == 0, result["runs"][0]["changed_tasks"]


def _refused(inventory: Path, tag: str, extra_var: str) -> tuple[Any, list[dict[str, Any]]]:
    """Provision one tag with a bad variable: the run must fail, and its failed tasks come back."""
    done = gh200("provision", "--inventory", str(inventory), "--tags", tag, "-e", extra_var, "--json")
    assert done.returncode == 1
    return done, json.loads(done.stdout)["runs"][0]["failed_tasks"]


def test_a_repository_key_with_the_wrong_fingerprint_is_refused(
    converged: dict[str, Any], inventory: Path
) -> None:
    done, failed = _refused(
        inventory,
        "container_runtime",
        "gh200_container_runtime_docker_key_fingerprint=0123456789ABCDEF0123456789ABCDEF01234567",
    )
    assert [t["task"] for t in failed] == ["Check the key of docker"]
    assert "0123456789ABCDEF0123456789ABCDEF01234567" in failed[0]["message"]
    assert "error: container_runtime" not in done.stderr and "failed on testhost" in done.stderr


def test_a_hugepage_size_the_kernel_does_not_offer_is_refused(
    converged: dict[str, Any], inventory: Path, testhost: TestHost
) -> None:
    _, failed = _refused(inventory, "tuning", "gh200_tuning_hugepages_size_kb=3")
    assert [t["task"] for t in failed] == ["Check the hugepage size"]
    offered = ", ".join(str(s) for s in testhost.hugepage_sizes)
    assert f"offers hugepages of {offered} kB, not 3 kB" in failed[0]["message"]


def test_a_model_store_without_the_free_space_is_refused(converged: dict[str, Any], inventory: Path) -> None:
    _, failed = _refused(inventory, "bundle", "gh200_bundle_model_store_min_free_gb=1000000000")
    assert [t["task"] for t in failed] == ["Check the model store has room for the checkpoints"]
    assert re.search(r"/srv/models has [0-9.]+ GB free, needs 1000000000 GB", failed[0]["message"])
