"""First provisioning of a bare host, scenario by scenario, on the booting test host.

Each scenario starts from a fresh bare host (the generic kernel running, nothing NVIDIA installed,
GRUB on the generic kernel). "Reboot allowed" is test_converge.py; here: reboot not allowed, a run
that fails half-way then a clean re-run, --check, and a driver pin apt cannot satisfy.
"""

from __future__ import annotations

from typing import Any

import pytest
from ansible_testhost import MATCHED_SET, TestHost, provision

pytestmark = [pytest.mark.ansible, pytest.mark.slow]

ABI = MATCHED_SET["gh200_nvidia_driver_kernel_flavour"]
GRACE_ARGS = ("init_on_alloc=0", "numa_balancing=disable", "acpi_power_meter.force_cap_on=y")


def _changed(result: dict[str, Any]) -> int:
    return int(result["runs"][0]["hosts"]["testhost"]["changed"])


@pytest.fixture(scope="module")
def bare(new_testhost: Any) -> TestHost:
    """One bare host for the scenarios that must leave it unchanged (--check, refused pin)."""
    host: TestHost = new_testhost()
    return host


def test_check_on_a_bare_host_lists_the_changes_and_changes_nothing(bare: TestHost) -> None:
    before = bare.changes()
    done, result = provision(bare.inventory, "--check")
    assert done.returncode == 0, (done.stderr[-2000:], result["runs"][0]["failed_tasks"])
    predicted = {t["task"] for t in result["runs"][0]["changed_tasks"]}
    for task in (
        "Install the kernel packages",
        "Install the NVIDIA driver (predicted for --check)",
        "Write the kernel command line drop-in",
        "Install the CUDA toolkit (predicted for --check)",
        "Install Docker and the NVIDIA container toolkit (predicted for --check)",
    ):
        assert task in predicted, sorted(predicted)
    # The summary says the real run will need a reboot, and what comes after it.
    assert "reboot pending" in result["reboot_pending"]["testhost"]
    assert bare.changes() == before
    assert bare.restarts() == 0 and bare.boot()["kernel"].endswith("-generic")


def test_an_unsatisfiable_pin_is_refused_before_the_host_changes(bare: TestHost) -> None:
    """The flavour's meta package follows the newest ABI, whose modules were built for 580.126.09:
    pinning 580.105.08 with it is what apt answers with "held broken packages"."""
    before = bare.changes()
    done, result = provision(
        bare.inventory,
        "-e",
        "gh200_nvidia_driver_kernel_flavour=nvidia-64k-hwe-24.04",
        "-e",
        '{"gh200_kernel_packages": ["linux-nvidia-64k-hwe-24.04"]}',
    )
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert "driver pin 580.105.08 cannot be installed" in line
    # The versions that would work, and the matched set that keeps the pin.
    assert "versions that would work with it: 580.126.09" in line
    assert f"gh200_nvidia_driver_kernel_flavour: {ABI}" in line
    assert [t["task"] for t in result["runs"][0]["failed_tasks"]] == [
        "Refuse a driver pin apt cannot install"
    ]
    assert _changed(result) == 0
    assert bare.changes() == before
    assert "linux-image" not in bare.sh("dpkg-query -W -f='${Package}\\n' 'linux-*' 2>/dev/null || true")


def test_reboot_not_allowed_pending_then_manual_reboot_completes(new_testhost: Any) -> None:
    # The bundle is left out to keep the suite lean: it needs neither the kernel nor the driver,
    # and test_converge.py installs it through the same lifecycle.
    host: TestHost = new_testhost(gh200_kernel_reboot_allowed=False)
    done, first = provision(host.inventory, "--skip-tags", "bundle")
    assert done.returncode == 0, (done.stderr[-2000:], first["runs"][0]["failed_tasks"])
    assert first["runs"][0]["hosts"]["testhost"]["failed"] == 0
    pending = first["reboot_pending"]["testhost"]
    assert pending.startswith("reboot pending") and "run gh200 provision again" in pending
    assert host.restarts() == 0 and host.exists("/var/run/reboot-required")
    # persistenced enabled, not started (it cannot before the driver loads).
    assert host.sh("systemctl is-enabled nvidia-persistenced").strip() == "enabled"
    assert host.sh("systemctl is-active nvidia-persistenced || true").strip() == "inactive"

    host.reboot()
    assert (host.boot()["kernel"], host.boot()["driver"]) == (ABI, "580.105.08")
    done, second = provision(host.inventory, "--skip-tags", "bundle")
    assert done.returncode == 0, (done.stderr[-2000:], second["runs"][0]["failed_tasks"])
    assert second["reboot_pending"] == {}
    assert host.sh("systemctl is-active nvidia-persistenced").strip() == "active"
    done, third = provision(host.inventory, "--skip-tags", "bundle")
    assert done.returncode == 0 and _changed(third) == 0, third["runs"][0]["changed_tasks"]
    # Only the manual reboot happened (podman restart does not count as a policy restart).
    assert host.restarts() == 0 and host.boot()["kernel"] == ABI


def test_a_run_failing_after_the_grub_dropin_is_repaired_by_the_next(new_testhost: Any) -> None:
    host: TestHost = new_testhost(gh200_kernel_reboot_allowed=False)
    # update-grub fails once the drop-in is written: the old handler-only design never retried it.
    host.sh("touch /etc/gh200-test/update-grub-fails")
    done, failed = provision(host.inventory, "--tags", "kernel,driver")
    assert done.returncode == 1
    assert [t["task"] for t in failed["runs"][0]["failed_tasks"]] == [
        "Update GRUB for the gh200 kernel command line and default entry"
    ]
    assert "init_on_alloc=0" in host.read("/etc/default/grub.d/90-gh200.cfg")
    assert "init_on_alloc=0" not in host.read("/boot/grub/grub.cfg")

    host.sh("rm /etc/gh200-test/update-grub-fails")
    done, clean = provision(host.inventory, "--tags", "kernel,driver")
    assert done.returncode == 0, (done.stderr[-2000:], clean["runs"][0]["failed_tasks"])
    grub = host.read("/boot/grub/grub.cfg")
    entry = next(ln for ln in grub.splitlines() if f"vmlinuz-{ABI} " in ln and "recovery" not in ln)
    assert set(GRACE_ARGS) <= set(entry.split()), entry
    assert f'set default="Advanced options for Ubuntu>Ubuntu, with Linux {ABI}"' in grub
    assert "reboot pending" in clean["reboot_pending"]["testhost"]
    # And the boot it asks for is the configured one.
    host.reboot()
    assert set(GRACE_ARGS) <= set(host.read("/proc/cmdline").split()) and host.boot()["driver"]
