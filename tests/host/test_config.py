"""Configuration the gh200 roles provision: packages, pins, holds, files, services, the bundle."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

pytestmark = pytest.mark.config


def _installed_version(host: Any, name: str) -> str | None:
    out = host.run("dpkg-query -W -f='${db:Status-Abbrev} ${Version}' %s", name)
    # Status-Abbrev: wanted (i install, h hold), state (i installed), error flag.
    if out.rc != 0 or out.stdout[1:2] != "i":
        return None
    return str(out.stdout.split()[-1])


def _held(host: Any) -> set[str]:
    return set(host.check_output("apt-mark showhold").split())


def _driver_packages(expect: dict[str, Any]) -> list[str]:
    key = (
        "gh200_nvidia_driver_dkms_packages"
        if expect.get("gh200_nvidia_driver_use_dkms")
        else ("gh200_nvidia_driver_precompiled_packages")
    )
    return list(expect[key]) + list(expect.get("gh200_nvidia_driver_extra_packages") or [])


# --- kernel and boot -----------------------------------------------------------------------------


def test_kernel_packages_installed_and_held(host: Any, expect: dict[str, Any]) -> None:
    """Kernel packages installed (and held)."""
    held = _held(host)
    for name in expect["gh200_kernel_packages"]:
        assert _installed_version(host, name), f"{name} is not installed"
        if expect.get("gh200_kernel_hold"):
            assert name in held, f"{name} is not held"


def test_grub_dropin_carries_the_kernel_command_line(host: Any, expect: dict[str, Any]) -> None:
    """GRUB drop-in carries the Grace kernel command line."""
    dropin = host.file(expect["gh200_kernel_grub_dropin"])
    assert dropin.exists, f"{dropin.path} is missing"
    line = next(
        (ln for ln in dropin.content_string.splitlines() if ln.startswith("GRUB_CMDLINE_LINUX_DEFAULT=")), ""
    )
    words = line.partition("=")[2].strip().strip('"').split()
    for arg in list(expect["gh200_kernel_cmdline"]) + list(expect.get("gh200_kernel_cmdline_extra") or []):
        assert arg in words, f"{arg} missing from {dropin.path}: {line}"


def test_running_kernel_command_line(host: Any, expect: Any) -> None:
    """Running kernel booted with the Grace command line."""
    if not expect.flag("gh200_kernel_manage_boot"):
        pytest.skip(
            "the host's boot is not managed (gh200_kernel_manage_boot: false): no own kernel command line"
        )
    cmdline = host.file("/proc/cmdline").content_string.split()
    missing = [a for a in list(expect["gh200_kernel_cmdline"]) if a not in cmdline]
    assert not missing, f"/proc/cmdline lacks {missing} (reboot pending? see /var/run/reboot-required)"


# --- NVIDIA driver -------------------------------------------------------------------------------


def test_driver_packages_installed_at_the_pinned_version(host: Any, expect: dict[str, Any]) -> None:
    """Driver packages installed, at the pinned version."""
    version = str(expect.get("gh200_nvidia_driver_version") or "")
    for name in _driver_packages(expect):
        installed = _installed_version(host, name)
        assert installed, f"{name} is not installed"
        if version and not name.startswith("linux-modules-"):
            assert installed.startswith(version + "-"), f"{name} is {installed}, pinned {version}"


def test_precompiled_modules_not_dkms(host: Any, expect: dict[str, Any]) -> None:
    """Precompiled signed kernel modules, no DKMS build."""
    if expect.get("gh200_nvidia_driver_use_dkms"):
        pytest.skip("DKMS chosen for this host (gh200_nvidia_driver_use_dkms: true)")
    branch = expect["gh200_nvidia_driver_branch"]
    assert _installed_version(host, f"nvidia-dkms-{branch}-open") is None
    assert _installed_version(host, f"nvidia-dkms-{branch}") is None
    modules = [p for p in _driver_packages(expect) if p.startswith("linux-modules-nvidia-")]
    assert modules and all("-open-" in p for p in modules), modules


def test_driver_pinned_and_held(host: Any, expect: dict[str, Any]) -> None:
    """Driver version pinned in apt and the packages held."""
    version = str(expect.get("gh200_nvidia_driver_version") or "")
    if version:
        pin = host.file(expect["gh200_nvidia_driver_pin_file"])
        assert pin.exists and f"Pin: version {version}-*" in pin.content_string
        branch = expect["gh200_nvidia_driver_branch"]
        policy = host.check_output("apt-cache policy libnvidia-compute-%s", branch)
        installed = re.search(r"Installed: (\S+)", policy)
        assert installed and installed.group(1).startswith(version + "-"), policy
    if expect.get("gh200_nvidia_driver_hold"):
        missing = set(_driver_packages(expect)) - _held(host)
        assert not missing, f"not held: {sorted(missing)}"


def test_cuda_repository_cannot_replace_the_driver(host: Any, expect: dict[str, Any]) -> None:
    """NVIDIA's CUDA repository cannot supply driver packages."""
    branch = expect["gh200_nvidia_driver_branch"]
    policy = host.check_output("apt-cache policy libnvidia-compute-%s", branch)
    cuda_host = re.sub(r"^[a-z]+://([^/:]+).*", r"\1", str(expect.get("gh200_cuda_repo_url", "")))
    # Each version line is followed by the sources offering it: a CUDA-origin version must be -1.
    for match in re.finditer(r"^\s+(?:\*\*\* )?(\S+) (-?\d+)\n((?:\s+\d+ \S+.*\n?)+)", policy, re.M):
        version, priority, where = match.groups()
        if cuda_host and cuda_host in where and "/var/lib/dpkg/status" not in where:
            assert priority == "-1", f"{version} from {cuda_host} has priority {priority}, not -1"


def test_nouveau_blacklisted(host: Any, expect: dict[str, Any]) -> None:
    """nouveau blacklisted."""
    if not expect.get("gh200_nvidia_driver_blacklist_nouveau"):
        pytest.skip("nouveau blacklist not wanted (gh200_nvidia_driver_blacklist_nouveau: false)")
    conf = host.file(expect["gh200_nvidia_driver_modprobe_file"]).content_string
    assert re.search(r"^blacklist nouveau$", conf, re.M), conf


def test_unattended_upgrades_leave_the_driver_alone(host: Any, expect: dict[str, Any]) -> None:
    """unattended-upgrades blacklists the driver and its modules."""
    conf = host.file(expect["gh200_nvidia_driver_unattended_blacklist_file"]).content_string
    for prefix in expect["gh200_nvidia_driver_unattended_blacklist"]:
        assert f'"{prefix}";' in conf


def test_persistenced_enabled(host: Any, expect: Any) -> None:
    """nvidia-persistenced enabled and running."""
    if not expect.flag("gh200_nvidia_driver_manage_services"):
        pytest.skip("services not managed on this host (gh200_nvidia_driver_manage_services: false)")
    service = host.service("nvidia-persistenced")
    assert service.is_enabled and service.is_running
    if expect.flag("gh200_nvidia_driver_persistence_mode"):
        assert (
            "--persistence-mode"
            in host.file(expect["gh200_nvidia_driver_persistenced_dropin"]).content_string
        )


# --- CUDA ---------------------------------------------------------------------------------------


def test_cuda_toolkit_installed_and_held(host: Any, expect: dict[str, Any]) -> None:
    """CUDA toolkit installed at the expected version (and held)."""
    package = expect["gh200_cuda_toolkit_package"]
    assert _installed_version(host, package), f"{package} is not installed"
    if expect.get("gh200_cuda_hold"):
        assert package in _held(host)
    version_json = host.file(f"/usr/local/cuda-{expect['gh200_cuda_version']}/version.json")
    assert version_json.exists, f"{version_json.path} is missing"
    found = json.loads(version_json.content_string)["cuda"]["version"]
    assert found.startswith(str(expect["gh200_cuda_version"]) + "."), found


def test_cuda_source_is_the_configured_one(host: Any, expect: dict[str, Any]) -> None:
    """CUDA source points at the configured repository (or mirror) only."""
    url = str(expect["gh200_cuda_repo_url"])
    source = host.file(expect["gh200_cuda_source_file"])
    assert source.exists and f"URIs: {url}" in source.content_string, source.content_string
    targets = host.check_output("apt-get indextargets --format '$(URI)'")
    upstream = "developer.download.nvidia.com"
    if upstream not in url:
        assert upstream not in targets, "an apt source still points at NVIDIA's server"
    assert url.rstrip("/") in targets


# --- container runtime --------------------------------------------------------------------------


def test_docker_and_the_container_toolkit_installed(host: Any, expect: dict[str, Any]) -> None:
    """Docker and the NVIDIA container toolkit installed, toolkit at the pinned version."""
    for name in expect["gh200_container_runtime_docker_packages"]:
        assert _installed_version(host, name), f"{name} is not installed"
    pinned = str(expect.get("gh200_container_runtime_nvidia_toolkit_version") or "")
    for name in expect["gh200_container_runtime_nvidia_toolkit_packages"]:
        installed = _installed_version(host, name)
        assert installed, f"{name} is not installed"
        if pinned:
            assert installed == pinned, f"{name} is {installed}, pinned {pinned}"


def test_docker_has_the_nvidia_runtime(host: Any, expect: dict[str, Any]) -> None:
    """daemon.json has the nvidia runtime and the configured settings."""
    config = json.loads(host.file(expect["gh200_container_runtime_daemon_json"]).content_string)
    assert config.get("runtimes", {}).get("nvidia", {}).get("path") == "nvidia-container-runtime", config

    def contains(have: Any, want: Any) -> bool:
        if isinstance(want, dict):
            return isinstance(have, dict) and all(contains(have.get(k), v) for k, v in want.items())
        return bool(have == want)

    settings = expect.get("gh200_container_runtime_daemon_settings") or {}
    assert contains(config, settings), f"daemon.json lacks {settings}"


def test_docker_running_with_the_nvidia_runtime(host: Any, expect: Any) -> None:
    """Docker running, with the nvidia runtime registered."""
    if not expect.flag("gh200_container_runtime_manage_service"):
        pytest.skip("docker not managed on this host (gh200_container_runtime_manage_service: false)")
    assert host.service("docker").is_running
    runtimes = host.check_output("docker info --format '{{json .Runtimes}}'")
    assert "nvidia" in json.loads(runtimes)


# --- tuning -------------------------------------------------------------------------------------


def _sysctls(expect: dict[str, Any]) -> dict[str, str]:
    return {k: " ".join(str(v).split()) for k, v in (expect.get("gh200_tuning_sysctls") or {}).items()}


def test_sysctls_configured(host: Any, expect: dict[str, Any]) -> None:
    """sysctls written for boot (kernel.numa_balancing=0 and the vm/net settings)."""
    text = host.file(expect["gh200_tuning_sysctl_file"]).content_string
    found = {
        k.strip(): " ".join(v.split()) for k, _, v in (ln.partition("=") for ln in text.splitlines()) if v
    }
    for key, value in _sysctls(expect).items():
        assert found.get(key) == value, f"{key}: file has {found.get(key)!r}, expected {value!r}"


def test_sysctls_live(host: Any, expect: Any) -> None:
    """sysctls in effect in the running kernel."""
    if not expect.flag("gh200_tuning_apply_runtime"):
        pytest.skip("runtime settings not applied on this host (gh200_tuning_apply_runtime: false)")
    for key, value in _sysctls(expect).items():
        live = " ".join(host.file("/proc/sys/" + key.replace(".", "/")).content_string.split())
        assert live == value, f"{key} is {live}, expected {value}"


def _hugepage_dirs(host: Any, nodes: Any) -> list[str]:
    """Where the role reserves: each node with CPUs ("auto"), the listed nodes, or the global pool."""
    if nodes == "auto":
        listing = host.run(
            "for d in /sys/devices/system/node/node[0-9]*; do "
            '[ -n "$(tr -d "[:space:]" < "$d/cpulist" 2>/dev/null)" ] && echo "${d##*node}"; done; true'
        ).stdout.split()
        nodes = [int(n) for n in listing]
    dirs = [f"/sys/devices/system/node/node{int(n)}/hugepages" for n in nodes or []]
    return dirs or ["/sys/kernel/mm/hugepages"]


def test_hugepages(host: Any, expect: Any) -> None:
    """Hugepages of the configured size reserved (per Grace node by default, not on the HBM nodes)."""
    count = int(expect.get("gh200_tuning_hugepages_count") or 0)
    if count == 0:
        pytest.skip("no hugepages wanted (gh200_tuning_hugepages_count: 0)")
    size = int(expect["gh200_tuning_hugepages_size_kb"])
    offered = f"/sys/kernel/mm/hugepages/hugepages-{size}kB"
    assert host.file(offered).exists, f"this kernel offers no {size} kB hugepages"
    conf = host.file(expect["gh200_tuning_hugepages_file"]).content_string
    for d in _hugepage_dirs(host, expect.get("gh200_tuning_hugepages_nodes", "auto")):
        sysfs = f"{d}/hugepages-{size}kB/nr_hugepages"
        assert f"{sysfs} - - - - {count}" in conf, f"{sysfs} not reserved at boot"
        if expect.flag("gh200_tuning_apply_runtime"):
            assert int(host.file(sysfs).content_string) == count, f"{sysfs} holds other than {count}"


def test_cpu_governor(host: Any, expect: Any) -> None:
    """CPU governor set to the configured one."""
    governor = expect["gh200_tuning_cpu_governor"]
    assert governor in host.file(expect["gh200_tuning_governor_file"]).content_string
    if not expect.flag("gh200_tuning_apply_runtime"):
        return
    files = host.run("ls /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor").stdout.split()
    if not files:
        pytest.skip("this kernel exposes no cpufreq governors (firmware-controlled frequency)")
    wrong = [f for f in files if host.file(f).content_string.strip() != governor]
    assert not wrong, f"{len(wrong)} CPUs not on {governor}"


def test_nccl_settings(host: Any, expect: Any) -> None:
    """NCCL settings (NCCL_P2P_DISABLE=1) in /etc/nccl.conf and the environment."""
    settings = expect.get("gh200_tuning_nccl_settings") or {}
    conf = host.file(expect["gh200_tuning_nccl_conf"]).content_string.splitlines()
    environment = host.file("/etc/environment").content_string.splitlines()
    for key, value in settings.items():
        assert f"{key}={value}" in conf
        if expect.flag("gh200_tuning_nccl_environment"):
            assert f"{key}={value}" in environment


# --- bundle -------------------------------------------------------------------------------------


def test_gh200_command_runs(host: Any, expect: dict[str, Any]) -> None:
    """gh200 installed and runs."""
    out = host.run("%s --version", expect["gh200_bundle_command"])
    assert out.rc == 0 and out.stdout.startswith("gh200 "), out.stderr


def test_model_store(host: Any, expect: dict[str, Any]) -> None:
    """Model store exists, owned by the bundle user, with the free space required."""
    store = host.file(expect["gh200_bundle_model_store"])
    assert store.is_directory, f"{store.path} is missing"
    assert (store.user, store.group) == (expect["gh200_bundle_user"], expect["gh200_bundle_group"])
    assert oct(store.mode) == oct(int(str(expect["gh200_bundle_model_store_mode"]), 8))
    free = int(host.check_output("df --output=avail -B1 %s", store.path).split()[-1])
    need = float(expect["gh200_bundle_model_store_min_free_gb"]) * 1e9
    assert free >= need, f"{store.path}: {free / 1e9:.0f} GB free, {need / 1e9:.0f} GB required"
