"""A real test host for the Ansible roles: a Debian 12 container with sshd on the harness's engine.

Debian 12 stands in for Ubuntu 24.04, whose archive these machines cannot reach. Ansible connects
to it over SSH like to any host (ansible-core has no container connection plugin of its own).
Inside it, tests/ansible/aptrepo.py builds signed local apt repositories with the real package
names of Ubuntu's NVIDIA kernel and driver, NVIDIA's CUDA and container toolkit, and Docker; a
small HTTP server serves them under mirror host names, and the inventory points the roles there.
What a container cannot do (boot a kernel, update GRUB, reboot, load modules, write sysctls, run
systemd services) is switched off in the inventory, and the roles and the host suite say so.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REPO_DIR = "/srv/gh200-test-repo"
MIRRORS = ("ubuntu.mirror.test", "cuda.mirror.test", "docker.mirror.test", "nvidia.mirror.test")
HTTP_PORT = 8080
CA_IN_HOST = "/etc/gh200-test/ca.crt"
UV_CACHE_IN_HOST = "/var/cache/gh200-test-uv"

# The test host: what a fresh Ubuntu server already has (sshd, python3 with apt bindings, sudo,
# gpg, certificates), plus the account Ansible logs in with.
CONTAINERFILE = """\
FROM {base}
RUN apt-get update -q \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \\
      openssh-server python3 python3-apt sudo gnupg ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
RUN useradd -m -s /bin/bash ops \\
 && echo 'ops ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/ops && chmod 0440 /etc/sudoers.d/ops \\
 && mkdir -p /run/sshd {repo} /home/ops/.ssh && chown ops:ops /home/ops/.ssh && chmod 0700 /home/ops/.ssh
CMD ["sh", "-c", "python3 -m http.server {port} --bind 127.0.0.1 --directory {repo} \\
  >/var/log/gh200-test-mirror.log 2>&1 & exec /usr/sbin/sshd -D -e"]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _host_ca_bundle() -> str | None:
    """The controller's CA bundle: PyPI may sit behind a TLS-inspecting proxy the host trusts."""
    for candidate in (
        os.environ.get("SSL_CERT_FILE"),
        ssl.get_default_verify_paths().cafile,
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return str(Path(candidate).resolve())
    return None


def _host_uv_cache() -> str | None:
    """The controller's uv cache: `make setup` filled it with the locked wheels the bundle needs."""
    if os.environ.get("UV_CACHE_DIR"):
        return os.environ["UV_CACHE_DIR"]
    uv = shutil.which("uv")
    if uv:
        out = subprocess.run([uv, "cache", "dir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    default = Path.home() / ".cache" / "uv"
    return str(default) if default.is_dir() else None


@dataclass
class TestHost:
    __test__ = False  # a fixture's value, not a test class

    container: Any
    port: int
    key: Path
    fingerprint: str
    arch: str
    codename: str
    hugepage_sizes: list[int]
    started_at: str = ""

    def sh(self, script: str, check: bool = True) -> str:
        rc, out = self.container.exec_run(["sh", "-c", script], demux=False)
        text = (out or b"").decode(errors="replace")
        if check and rc != 0:
            raise AssertionError(f"test host command failed ({rc}): {script}\n{text}")
        return text

    def read(self, path: str) -> str:
        return self.sh(f"cat {path}")


def _remove_stale_testhosts(engine: Any) -> None:
    """Test hosts left by an interrupted run (their pytest process is gone) are removed."""
    for box in engine.containers.list(all=True, filters={"label": "io.gh200.test=ansible-testhost"}):
        pid = box.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            box.remove(force=True)


@pytest.fixture(scope="session")
def testhost_image(engine: Any, base_image: str) -> str:
    import hashlib

    text = CONTAINERFILE.format(base=base_image, repo=REPO_DIR, port=HTTP_PORT)
    tag = f"localhost/gh200-testhost:{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    from gh200.engine import image_exists

    if not image_exists(engine, tag):
        context = _tar({"Containerfile": (text.encode(), 0o644)})
        engine.images.build(
            fileobj=io.BytesIO(context), custom_context=True, dockerfile="Containerfile", tag=tag, rm=True
        )
    return tag


@pytest.fixture(scope="session")
def testhost(
    engine: Any, testhost_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestHost]:
    missing = [tool for tool in ("ssh", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        message = f"the Ansible tests need {' and '.join(missing)} (openssh-client) on this machine"
        if os.environ.get("GH200_REQUIRE_ENGINE") == "1":
            pytest.fail(f"{message}: apt-get install openssh-client")
        pytest.skip(message)
    work = tmp_path_factory.mktemp("testhost")
    key = work / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gh200-tests", "-f", str(key)], check=True
    )
    _remove_stale_testhosts(engine)
    port = _free_port()
    volumes: dict[str, dict[str, str]] = {}
    ca = _host_ca_bundle()
    if ca:
        volumes[ca] = {"bind": CA_IN_HOST, "mode": "ro"}
    uv_cache = _host_uv_cache()
    if uv_cache:
        Path(uv_cache).mkdir(parents=True, exist_ok=True)
        volumes[uv_cache] = {"bind": UV_CACHE_IN_HOST, "mode": "rw"}
    container = engine.containers.run(
        testhost_image,
        detach=True,
        name=f"gh200-testhost-{os.getpid()}",
        labels={"io.gh200.test": "ansible-testhost"},
        ports={"22/tcp": ("127.0.0.1", port)},
        extra_hosts={name: "127.0.0.1" for name in MIRRORS},
        volumes=volumes,
    )
    try:
        pub = (key.with_suffix(".pub")).read_bytes()
        container.put_archive("/home/ops/.ssh", _tar({"authorized_keys": (pub, 0o600)}))
        container.put_archive("/root", _tar({"aptrepo.py": ((HERE / "aptrepo.py").read_bytes(), 0o755)}))
        host = TestHost(container, port, key, "", "", "", [])
        host.sh("chown -R ops:ops /home/ops/.ssh")
        host.arch = host.sh("dpkg --print-architecture").strip()
        host.codename = host.sh(". /etc/os-release && echo $VERSION_CODENAME").strip()
        built = host.sh(
            f"python3 /root/aptrepo.py --out {REPO_DIR} --arch {host.arch} --codename {host.codename}"
        )
        host.fingerprint = json.loads(built.strip().splitlines()[-1])["fingerprint"]
        # Ubuntu's archive, as every Ubuntu host already has it configured: here, the stand-in.
        host.sh(
            "install -d -m 0755 /etc/apt/keyrings"
            f" && cp {REPO_DIR}/keys/test-archive.asc /etc/apt/keyrings/gh200-test-ubuntu.asc"
            " && printf 'Types: deb\\nURIs: http://ubuntu.mirror.test:%d/ubuntu/\\nSuites: /\\n"
            "Signed-By: /etc/apt/keyrings/gh200-test-ubuntu.asc\\n'"
            " > /etc/apt/sources.list.d/gh200-test-ubuntu.sources && apt-get update -q" % HTTP_PORT
        )
        # An existing Docker configuration the role must keep (merged, not overwritten).
        host.sh(
            "mkdir -p /etc/docker && printf '%s\\n' "
            '\'{"log-driver": "json-file", "log-opts": {"max-size": "10m"}}\' > /etc/docker/daemon.json'
        )
        host.hugepage_sizes = sorted(
            int(line.removeprefix("hugepages-").removesuffix("kB"))
            for line in host.sh("ls /sys/kernel/mm/hugepages").split()
        )
        _wait_for_ssh(host)
        container.reload()
        host.started_at = container.attrs["State"]["StartedAt"]
        yield host
    finally:
        container.remove(force=True)


# A throwaway host with a new key each run: nothing to pin, nothing to remember.
SSH_OPTIONS = ("-o StrictHostKeyChecking=no", "-o UserKnownHostsFile=/dev/null", "-o LogLevel=ERROR")


def _ssh_base(host: TestHost) -> list[str]:
    options = [part for option in SSH_OPTIONS for part in option.split()]
    return [
        "ssh",
        "-i",
        str(host.key),
        "-p",
        str(host.port),
        *options,
        "-o",
        "BatchMode=yes",
        "ops@127.0.0.1",
    ]


def _wait_for_ssh(host: TestHost, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        out = subprocess.run(
            [*_ssh_base(host), "true"], capture_output=True, text=True, timeout=30, check=False
        )
        if out.returncode == 0:
            return
        last = out.stderr.strip()
        time.sleep(0.5)
    raise AssertionError(f"sshd in the test host did not answer on 127.0.0.1:{host.port}: {last}")


@pytest.fixture(scope="session")
def bundle_archive(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The checkout packed once, so both converges install the same bytes (others edit the tree)."""
    out = tmp_path_factory.mktemp("bundle")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "ansible/roles/gh200_bundle/files/pack_bundle.py"),
            "--root",
            str(ROOT),
            "--out-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(done.stdout)["path"])


def inventory_vars(host: TestHost, bundle: str) -> dict[str, Any]:
    """Role variables for the test host: the mirrors, and what a container cannot do switched off."""
    mirror = f"http://{{}}.mirror.test:{HTTP_PORT}"
    key = f"{mirror.format('docker')}/keys/test-archive.asc"
    env: dict[str, str] = {}
    if _host_ca_bundle():
        env.update({"SSL_CERT_FILE": CA_IN_HOST, "PIP_CERT": CA_IN_HOST})
    if _host_uv_cache():
        env["UV_CACHE_DIR"] = UV_CACHE_IN_HOST
    size = 2048 if 2048 in host.hugepage_sizes else host.hugepage_sizes[0]
    return {
        # gh200_kernel: the container boots no kernel of its own and has no boot loader.
        "gh200_kernel_manage_boot": False,
        "gh200_kernel_reboot_allowed": False,
        # gh200_nvidia_driver: no initramfs, no systemd.
        "gh200_nvidia_driver_manage_initramfs": False,
        "gh200_nvidia_driver_manage_services": False,
        # gh200_cuda: a mirror of NVIDIA's repository, with the test archive key.
        "gh200_cuda_repo_mirror": f"{mirror.format('cuda')}/cuda/",
        "gh200_cuda_keyring_fingerprint": host.fingerprint,
        # gh200_container_runtime
        "gh200_container_runtime_docker_repo_url": f"{mirror.format('docker')}/docker",
        "gh200_container_runtime_docker_key_url": key,
        "gh200_container_runtime_docker_key_fingerprint": host.fingerprint,
        "gh200_container_runtime_nvidia_repo_url": (
            f"{mirror.format('nvidia')}/nvidia-container-toolkit/stable/deb"
        ),
        "gh200_container_runtime_nvidia_key_url": key,
        "gh200_container_runtime_nvidia_key_fingerprint": host.fingerprint,
        "gh200_container_runtime_daemon_settings": {"log-opts": {"max-file": "3"}},
        "gh200_container_runtime_manage_service": False,
        # gh200_tuning: /proc/sys and /sys are read-only in the container; the host kernel's
        # hugepage sizes are the ones offered.
        "gh200_tuning_apply_runtime": False,
        "gh200_tuning_hugepages_size_kb": size,
        "gh200_tuning_hugepages_count": 16,
        # gh200_bundle
        "gh200_bundle_archive": bundle,
        "gh200_bundle_environment": env,
        "gh200_bundle_model_store_min_free_gb": 1,
        # gh200_verify: a container, not a GPU host.
        "gh200_verify_gpu_count": 0,
        "gh200_verify_gh200": False,
    }


@pytest.fixture(scope="session")
def inventory(host_inventory_dir: Path) -> Path:
    return host_inventory_dir / "hosts.yml"


@pytest.fixture(scope="session")
def host_inventory_dir(
    testhost: TestHost, bundle_archive: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    inv = tmp_path_factory.mktemp("inventory")
    hosts = {
        "all": {
            "children": {
                "gh200": {
                    "hosts": {
                        "testhost": {
                            "ansible_host": "127.0.0.1",
                            "ansible_port": testhost.port,
                            "ansible_user": "ops",
                            "ansible_become": True,
                            "ansible_ssh_private_key_file": str(testhost.key),
                            "ansible_ssh_common_args": " ".join(SSH_OPTIONS),
                        }
                    }
                }
            }
        }
    }
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    (inv / "group_vars").mkdir()
    (inv / "group_vars" / "gh200.yml").write_text(
        yaml.safe_dump(inventory_vars(testhost, bundle_archive), sort_keys=False)
    )
    return inv


def gh200(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the real CLI, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "gh200.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
