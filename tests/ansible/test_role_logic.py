"""Role decisions that need no host: architecture mapping, and when a reboot is refused.

Run with ansible-playbook on the controller over a local connection; the reboot decision runs in
--check mode as well, so even a wrong decision could not reboot this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ansible

ROOT = Path(__file__).resolve().parents[2]


def _play(tmp_path: Path, text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    book = tmp_path / "play.yml"
    book.write_text(text)
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible" / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return subprocess.run(
        [
            "ansible-playbook",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(book),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_aarch64_maps_to_nvidias_sbsa_repository_and_debian_arm64(tmp_path: Path) -> None:
    roles = ROOT / "ansible" / "roles"
    done = _play(
        tmp_path,
        f"""
- name: Architecture mapping
  hosts: all
  gather_facts: false
  vars_files:
    - {roles}/gh200_cuda/defaults/main.yml
    - {roles}/gh200_container_runtime/defaults/main.yml
  tasks:
    - name: Check
      ansible.builtin.assert:
        that:
          - gh200_cuda_repo_url == 'https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/sbsa/'
          - gh200_cuda_toolkit_package == 'cuda-toolkit-13-0'
          - gh200_container_runtime_deb_arch == 'arm64'
    - name: A mirror replaces the upstream URL
      ansible.builtin.assert:
        that:
          - gh200_cuda_repo_url == 'http://mirror.example/cuda/'
      vars:
        gh200_cuda_repo_mirror: http://mirror.example/cuda/
""",
        "-e",
        "ansible_architecture=aarch64",
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "ok=2" in done.stdout


@pytest.mark.parametrize(
    ("marker", "allowed", "decision"),
    [
        (True, True, "refused: local connection"),
        (True, False, "refused: local connection"),
        (False, True, "not needed"),
    ],
)
def test_reboot_decision_on_a_local_connection(
    tmp_path: Path, marker: bool, allowed: bool, decision: str
) -> None:
    flag = tmp_path / "reboot-required"
    if marker:
        flag.write_text("*** System restart required ***\n")
    done = _play(
        tmp_path,
        f"""
- name: Reboot decision
  hosts: all
  gather_facts: false
  tasks:
    - name: Decide
      ansible.builtin.include_role:
        name: gh200_kernel
        tasks_from: reboot
      vars:
        gh200_kernel_reboot_allowed: {str(allowed).lower()}
        gh200_kernel_reboot_required_file: {flag}
    - name: Check the decision
      ansible.builtin.assert:
        that:
          - "gh200_kernel_reboot_decision is search({decision!r})"
""",
        "--check",
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "skipping: [localhost]" in done.stdout.split("Reboot the host", 1)[1].split("TASK", 1)[0]
