"""A test host that boots: a Debian 12 container with systemd as PID 1, reached over SSH.

Debian 12 stands in for Ubuntu 24.04, whose archive these machines cannot reach. The container
runs under Podman with --systemd=always (/sbin/init from systemd-sysv is the entrypoint), so
services, maintainer scripts and units run for real; `podman restart` (or `shutdown -r` inside,
with the restart policy bringing it back) is a reboot. At each start gh200-test-boot
(tests/ansible/hostimage) decides which kernel GRUB would boot and shows it at the real paths:
/proc/cmdline, a new /proc/sys/kernel/random/boot_id, and /proc/driver/nvidia/version only when
the 64K kernel and the precompiled modules built for it are installed and GRUB points at it.

The image is built once per content hash (Containerfile, hostimage/, aptrepo.py, standins.yaml)
and holds the signed stand-in apt repositories: every scenario starts a fresh bare host from it in
seconds. Ansible connects over SSH like to any host.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
# Paths a provisioning run may change without changing the host's configuration: apt's lists and
# caches, Ansible's and the login's own scratch files, the journal.
SCRATCH = ("/var/lib/apt", "/var/cache", "/var/log", "/root/.ansible", "/home/ops", "/tmp", "/var/tmp")

# The bare host: what a fresh Ubuntu server already has (systemd, sshd, python3 with apt bindings,
# sudo, gpg, certificates, GRUB on a generic kernel), the account Ansible logs in with, the
# stand-in repositories and the Ubuntu archive source pointing at them. Debian's own sources are
# removed: the host sees only the stand-in archives, as a GH200 sees only Ubuntu's and NVIDIA's.
CONTAINERFILE = """\
FROM {base}
RUN apt-get update -q \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \\
      systemd systemd-sysv dbus openssh-server python3 python3-apt python3-yaml python3-venv \\
      sudo gnupg ca-certificates \\
 && rm -rf /var/lib/apt/lists/* /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list
RUN useradd -m -s /bin/bash ops \\
 && echo 'ops ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/ops && chmod 0440 /etc/sudoers.d/ops \\
 && mkdir -p /home/ops/.ssh /etc/gh200-test && chown ops:ops /home/ops/.ssh && chmod 0700 /home/ops/.ssh
COPY hostimage/ /
COPY aptrepo.py standins.yaml /root/
RUN python3 /root/aptrepo.py --out {repo} --arch "$(dpkg --print-architecture)" \\
      --codename "$(. /etc/os-release && echo $VERSION_CODENAME)" \\
 && install -d -m 0755 /etc/apt/keyrings \\
 && cp {repo}/keys/test-archive.asc /etc/apt/keyrings/gh200-test-ubuntu.asc \\
 && printf 'Types: deb\\nURIs: http://ubuntu.mirror.test:{port}/ubuntu/\\nSuites: /\\nSigned-By: %s\\n' \\
      /etc/apt/keyrings/gh200-test-ubuntu.asc > /etc/apt/sources.list.d/gh200-test-ubuntu.sources \\
 && (python3 -m http.server {port} --bind 127.0.0.1 --directory {repo} >/dev/null 2>&1 & \\
     echo $! > /tmp/http.pid) \\
 && sleep 1 && apt-get update -q && kill "$(cat /tmp/http.pid)" && rm /tmp/http.pid
RUN printf 'generic kernel\\n' > /boot/vmlinuz-{generic} && mkdir -p /lib/modules/{generic} \\
 && update-grub \\
 && systemctl enable gh200-test-boot.service gh200-test-mirror.service ssh.service \\
 && mkdir -p /etc/docker \\
 && printf '%s\\n' '{{"log-driver": "json-file", "log-opts": {{"max-size": "10m"}}}}' \\
      > /etc/docker/daemon.json
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/sbin/init"]
"""
# The generic kernel a fresh install runs: newer than the 64K kernel (an HWE update), so GRUB's
# first entry is not the one a GH200 must boot unless GRUB_DEFAULT says so.
GENERIC_KERNEL = "6.17.0-8-generic"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The podman CLI on the harness's store (the same CONTAINERS_CONF as its service)."""
    from gh200.engine import podman_env

    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


@dataclass
class TestHost:
    __test__ = False  # a fixture's value, not a test class

    name: str
    port: int
    key: Path
    fingerprint: str = ""
    hugepage_sizes: list[int] = field(default_factory=list)
    inventory: Path = Path()

    def sh(self, script: str, check: bool = True) -> str:
        done = podman("exec", self.name, "sh", "-c", script, check=False)
        text = done.stdout + done.stderr
        if check and done.returncode != 0:
            raise AssertionError(f"test host command failed ({done.returncode}): {script}\n{text}")
        return text

    def read(self, path: str) -> str:
        return self.sh(f"cat {path}")

    def exists(self, path: str) -> bool:
        return self.sh(f"test -e {path} && echo yes || echo no").strip() == "yes"

    def restarts(self) -> int:
        return int(podman("inspect", self.name, "--format", "{{.RestartCount}}").stdout.strip() or 0)

    def boot(self) -> dict[str, Any]:
        """What gh200-test-boot decided at the last start (kernel, cmdline, driver)."""
        return dict(json.loads(self.read("/run/gh200-test/boot.json")))

    def reboot(self) -> None:
        """A manual reboot: the container restarts, systemd boots again, sshd answers."""
        podman("restart", "--time", "30", self.name)
        _wait_for_boot(self)

    def changes(self) -> set[str]:
        """Files the host's root filesystem has changed against the bare image, scratch left out."""
        out = podman("diff", self.name).stdout.split("\n")
        # A directory that only holds scratch (/root for /root/.ansible) shows as changed ("C") too.
        holders = {str(Path(p).parent) for p in SCRATCH}
        return {
            ln
            for ln in out
            if ln.strip() and not ln[2:].startswith(SCRATCH) and not (ln[0] == "C" and ln[2:] in holders)
        }

    def remove(self) -> None:
        podman("rm", "--force", "--time", "5", self.name, check=False)


def _remove_stale_testhosts() -> None:
    """Test hosts left by an interrupted run (their pytest process is gone) are removed."""
    listed = podman(
        "ps",
        "--all",
        "--filter",
        "label=io.gh200.test=ansible-testhost",
        "--format",
        "{{.Names}}",
        check=False,
    )
    for name in listed.stdout.split():
        pid = name.split("-")[2] if name.count("-") >= 3 else ""
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            podman("rm", "--force", name, check=False)


@pytest.fixture(scope="session")
def testhost_image(engine: Any, base_image: str) -> str:
    """The bare-host image, built once per content (shared by every scenario and session)."""
    if shutil.which("podman") is None:
        message = "the booting test host needs podman (systemd as PID 1 with --systemd=always)"
        if os.environ.get("GH200_REQUIRE_ENGINE") == "1":
            pytest.fail(f"{message}: run `make setup`")
        pytest.skip(message)
    from gh200.fsutil import file_lock
    from gh200.paths import cache_dir

    text = CONTAINERFILE.format(base=base_image, repo=REPO_DIR, port=HTTP_PORT, generic=GENERIC_KERNEL)
    digest = hashlib.sha256(text.encode())
    for path in sorted([HERE / "aptrepo.py", HERE / "standins.yaml", *(HERE / "hostimage").rglob("*")]):
        if path.is_file():
            digest.update(str(path.relative_to(HERE)).encode() + path.read_bytes())
    tag = f"localhost/gh200-testhost:{digest.hexdigest()[:12]}"
    with file_lock(cache_dir() / "testhost" / "build.lock"):
        if podman("image", "exists", tag, check=False).returncode != 0:
            with tempfile.TemporaryDirectory() as tmp:
                ctx = Path(tmp)
                (ctx / "Containerfile").write_text(text)
                shutil.copytree(HERE / "hostimage", ctx / "hostimage", symlinks=True)
                shutil.copy2(HERE / "aptrepo.py", ctx)
                shutil.copy2(HERE / "standins.yaml", ctx)
                hosts = [f"--add-host={mirror}:127.0.0.1" for mirror in MIRRORS]
                podman(
                    "build",
                    "--quiet",
                    *hosts,
                    "--tag",
                    tag,
                    "--file",
                    str(ctx / "Containerfile"),
                    str(ctx),
                    timeout=1200,
                )
    return tag


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [tool for tool in ("ssh", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        message = f"the Ansible tests need {' and '.join(missing)} (openssh-client) on this machine"
        if os.environ.get("GH200_REQUIRE_ENGINE") == "1":
            pytest.fail(f"{message}: apt-get install openssh-client")
        pytest.skip(message)
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gh200-tests", "-f", str(key)], check=True
    )
    return key


_COUNTER = iter(range(1000))


def start_testhost(
    image: str,
    key: Path,
    bundle: str,
    inv_dir: Path,
    *,
    host_network: bool = False,
    volumes: tuple[str, ...] = (),
    **overrides: Any,
) -> TestHost:
    """A fresh bare host from the image, booted, with an inventory (role variables + overrides).

    `host_network`: the host shares the machine's network (sshd on its own loopback port instead
    of a published 22), so servers that containers publish on the machine's 127.0.0.1 answer on
    the host's 127.0.0.1 too: what a host that runs containers on the machine's engine (its API
    socket in `volumes`) needs. The mirrors' port 8080 is then shared: the first such host serves
    it, a second one's mirror unit fails (a degraded boot) and its apt reads the first's, which
    holds the same repositories (same image).
    """
    _remove_stale_testhosts()
    name = f"gh200-testhost-{os.getpid()}-{next(_COUNTER)}"
    port = _free_port()
    args = [
        "create",
        "--name",
        name,
        "--label",
        "io.gh200.test=ansible-testhost",
        "--systemd=always",
        # gh200-test-boot bind-mounts the booted kernel's view over /proc paths.
        "--cap-add",
        "SYS_ADMIN",
        # `shutdown -r` inside ends PID 1; the policy starts it again: a reboot.
        "--restart=always",
    ]
    if host_network:
        args += ["--network", "host", "--hostname", name]
    else:
        args += ["--publish", f"127.0.0.1:{port}:22"]
    for volume in volumes:
        args += ["--volume", volume]
    for mirror in MIRRORS:
        args += ["--add-host", f"{mirror}:127.0.0.1"]
    ca = _host_ca_bundle()
    if ca:
        args += ["--volume", f"{ca}:{CA_IN_HOST}:ro"]
    uv_cache = _host_uv_cache()
    if uv_cache:
        Path(uv_cache).mkdir(parents=True, exist_ok=True)
        args += ["--volume", f"{uv_cache}:{UV_CACHE_IN_HOST}:rw"]
    podman(*args, image)
    host = TestHost(name, port, key)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            keys = Path(tmp) / "authorized_keys"
            shutil.copy2(key.with_suffix(".pub"), keys)
            keys.chmod(0o600)
            podman("cp", str(keys), f"{name}:/home/ops/.ssh/authorized_keys")
            if host_network:
                listen = Path(tmp) / "gh200-test-port.conf"
                listen.write_text(f"Port {port}\nListenAddress 127.0.0.1\n")
                podman("cp", str(listen), f"{name}:/etc/ssh/sshd_config.d/gh200-test-port.conf")
        podman("start", name)
        # sshd reads authorized_keys as the user.
        host.sh("chown -R ops:ops /home/ops/.ssh")
        _wait_for_boot(host)
        host.fingerprint = host.read(f"{REPO_DIR}/keys/fingerprint").strip()
        host.hugepage_sizes = sorted(
            int(line.removeprefix("hugepages-").removesuffix("kB"))
            for line in host.sh("ls /sys/kernel/mm/hugepages").split()
        )
        host.inventory = write_inventory(inv_dir, host, {**inventory_vars(host, bundle), **overrides})
    except BaseException:
        host.remove()
        raise
    return host


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


def _wait_for_boot(host: TestHost, timeout: float = 120) -> None:
    """sshd answers and systemd finished starting (running or degraded: a failed unit is a finding)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        out = subprocess.run(
            [*_ssh_base(host), "systemctl is-system-running --wait"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        state = out.stdout.strip()
        if state in ("running", "degraded"):
            return
        last = (out.stderr.strip() or state)[-300:]
        time.sleep(0.5)
    raise AssertionError(f"the test host {host.name} did not boot (ssh 127.0.0.1:{host.port}): {last}")


@pytest.fixture(scope="session")
def new_testhost(
    testhost_image: str, ssh_key: Path, bundle_archive: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., TestHost]]:
    """A factory of fresh bare hosts (role variables overridable per scenario); all removed at the end."""
    made: list[TestHost] = []

    def make(**overrides: Any) -> TestHost:
        # host_network and volumes pass through to start_testhost; the rest are role variables.
        host = start_testhost(
            testhost_image, ssh_key, bundle_archive, tmp_path_factory.mktemp("inventory"), **overrides
        )
        made.append(host)
        return host

    yield make
    for host in made:
        host.remove()


@pytest.fixture(scope="session")
def bundle_archive(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The checkout packed once, so every converge installs the same bytes (others edit the tree)."""
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


# The matched set the stand-in archive can satisfy with the reference driver build: the kernel ABI
# whose precompiled modules were compiled against 580.105.08 (standins.yaml: kernels).
MATCHED_SET = {
    "gh200_kernel_packages": ["linux-image-6.14.0-1013-nvidia-64k"],
    "gh200_nvidia_driver_kernel_flavour": "6.14.0-1013-nvidia-64k",
    "gh200_nvidia_driver_version": "580.105.08",
}


def inventory_vars(host: TestHost, bundle: str) -> dict[str, Any]:
    """Role variables for the test host: the mirrors, and what a container still cannot do."""
    mirror = f"http://{{}}.mirror.test:{HTTP_PORT}"
    key = f"{mirror.format('docker')}/keys/test-archive.asc"
    env: dict[str, str] = {}
    if _host_ca_bundle():
        env.update({"SSL_CERT_FILE": CA_IN_HOST, "PIP_CERT": CA_IN_HOST})
    if _host_uv_cache():
        env["UV_CACHE_DIR"] = UV_CACHE_IN_HOST
    size = 2048 if 2048 in host.hugepage_sizes else host.hugepage_sizes[0]
    return {
        **MATCHED_SET,
        # gh200_kernel: GRUB (the stand-in update-grub), reboots and boot checks are real here.
        "gh200_kernel_reboot_allowed": True,
        "gh200_kernel_reboot_timeout": 300,
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
        # gh200_tuning: /proc/sys and /sys stay the machine's, read-only; the machine's hugepage
        # sizes are the ones offered, and its NUMA nodes are not Grace's (this VM's node0 offers no
        # per-node hugepages): the global pool.
        "gh200_tuning_apply_runtime": False,
        "gh200_tuning_hugepages_size_kb": size,
        "gh200_tuning_hugepages_count": 16,
        "gh200_tuning_hugepages_nodes": [],
        # gh200_bundle
        "gh200_bundle_archive": bundle,
        "gh200_bundle_environment": env,
        "gh200_bundle_model_store_min_free_gb": 1,
        # gh200_verify: a container, not a GPU host.
        "gh200_verify_gpu_count": 0,
        "gh200_verify_gh200": False,
    }


def write_inventory(inv: Path, host: TestHost, variables: dict[str, Any]) -> Path:
    hosts = {
        "all": {
            "children": {
                "gh200": {
                    "hosts": {
                        "testhost": {
                            "ansible_host": "127.0.0.1",
                            "ansible_port": host.port,
                            "ansible_user": "ops",
                            "ansible_become": True,
                            "ansible_ssh_private_key_file": str(host.key),
                            "ansible_ssh_common_args": " ".join(SSH_OPTIONS),
                        }
                    }
                }
            }
        }
    }
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    (inv / "group_vars").mkdir(exist_ok=True)
    (inv / "group_vars" / "gh200.yml").write_text(yaml.safe_dump(variables, sort_keys=False))
    return inv / "hosts.yml"


def gh200(*args: str, timeout: float = 2700) -> subprocess.CompletedProcess[str]:
    """Run the real CLI, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "gh200.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def provision(inventory: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One `gh200 provision --json` run: the process and its JSON result (timed, for the report)."""
    started = time.monotonic()
    done = gh200("provision", "--inventory", str(inventory), *args, "--json")
    assert done.stdout.strip(), f"no JSON from gh200 provision (rc {done.returncode}): {done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(done.stdout)
    summary = [
        f"{run['playbook']} {run['seconds']}s changed={run['hosts'].get('testhost', {}).get('changed')}"
        for run in result.get("runs", [])
    ]
    print(
        f"gh200 provision {' '.join(args)}: rc {done.returncode}"
        f" in {time.monotonic() - started:.0f}s; {summary}"
    )
    return done, result
