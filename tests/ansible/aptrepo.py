#!/usr/bin/env python3
"""Build the test host's local apt repositories: stand-ins for Ubuntu's, NVIDIA's and Docker's.

NVIDIA's and Docker's repositories (and Ubuntu's archive) cannot be reached from the test
machines, so the roles are pointed at these instead. Every package, control field and
maintainer-script behaviour comes from ONE fixture, standins.yaml, which says where each was read.
The control fields that decide what apt can install (exact >=/<= ranges, Provides, Conflicts)
are the real ones, so apt's resolver, pinning, holds and signatures run for real. Payloads are
stand-ins where a role or the boot of the test host reads them: a kernel whose postinst runs the
/etc/kernel/postinst.d hooks, nvidia-smi and nvidia-persistenced that work only once the test
host booted into the NVIDIA kernel (/proc/driver/nvidia/version exists), docker with its group
and unit, nvidia-ctk with the nvidia-cdi-refresh units, the CUDA keyring and version.json.

Runs inside the test host image build (python3 + PyYAML, dpkg-deb, gpg). Every repository is
signed with a throwaway key made here; prints one JSON line with its fingerprint.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

GNUPGHOME = "/root/.gh200-test-archive-gnupg"
HERE = Path(__file__).resolve().parent

# --- payloads: what the stand-ins install and do -------------------------------------------------

DRIVER_LOADED = "/proc/driver/nvidia/version"

NVIDIA_CTK = r'''#!/usr/bin/python3
"""Test stand-in for nvidia-ctk (nvidia-container-toolkit-base): the calls the gh200 roles and
the nvidia-cdi-refresh unit make."""
import json, os, re, sys
args = sys.argv[1:]
with open("/var/log/nvidia-ctk-standin.log", "a") as log:
    log.write(" ".join(args) + "\n")
opts = dict(a[2:].split("=", 1) for a in args[2:] if a.startswith("--") and "=" in a)
if args[:2] == ["runtime", "configure"]:
    if opts.get("runtime") != "docker":
        sys.exit("this stand-in only configures --runtime=docker")
    path = opts.get("config", "/etc/docker/daemon.json")
    try:
        with open(path) as fh:
            config = json.load(fh)
    except FileNotFoundError:
        config = {}
    # What the real tool writes; every other key is kept.
    config.setdefault("runtimes", {})["nvidia"] = {"args": [], "path": "nvidia-container-runtime"}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(config, fh, indent=4)
    print("INFO Wrote updated config to " + path)
elif args[:2] == ["cdi", "generate"]:
    try:
        with open("/proc/driver/nvidia/version") as fh:
            version = re.search(r"Module for \S+\s+(\S+)", fh.read()).group(1)
    except OSError:
        sys.exit("ERROR failed to generate CDI spec: failed to initialize NVML: ERROR_LIBRARY_NOT_FOUND")
    out = opts.get("output", "/var/run/cdi/nvidia.yaml")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w") as fh:
        fh.write("---\ncdiVersion: 0.5.0\nkind: nvidia.com/gpu\n# driver %s (gh200 test stand-in)\n"
                 "devices:\n- name: all\n  containerEdits: {}\ncontainerEdits:\n  env:\n"
                 "  - NVIDIA_VISIBLE_DEVICES=void\n" % version)
    os.replace(out + ".tmp", out)
    print("INFO Generated CDI spec with version 0.5.0 for driver " + version)
elif args == ["--version"]:
    print("NVIDIA Container Toolkit CLI version 1.18.0 (gh200 test stand-in)")
else:
    sys.exit("the gh200 test stand-in does not implement: " + " ".join(args))
'''

CDI_REFRESH_SERVICE = """\
[Unit]
Description=Refresh NVIDIA CDI specification file
ConditionPathExists=/usr/bin/nvidia-ctk

[Service]
Type=oneshot
ExecStart=/usr/bin/nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml

[Install]
WantedBy=multi-user.target
"""

CDI_REFRESH_PATH = """\
[Unit]
Description=Trigger CDI refresh on NVIDIA driver or toolkit install / upgrade events

[Path]
PathChanged=/lib/modules/%v/modules.dep
PathChanged=/lib/modules/%v/modules.dep.bin
PathChanged=/usr/bin/nvidia-ctk

[Install]
WantedBy=multi-user.target
"""

NCT_POSTINST = """\
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || echo "Warning: Failed to reload systemd daemon" >&2
  systemctl enable --now nvidia-cdi-refresh.path \\
    || echo "Warning: Failed to enable nvidia-cdi-refresh.path" >&2
  systemctl enable --now nvidia-cdi-refresh.service \\
    || echo "Warning: Failed to enable nvidia-cdi-refresh.service" >&2
  echo "Regenerating NVIDIA CDI specification..."
  systemctl start nvidia-cdi-refresh.service || echo "Warning: Failed to trigger CDI refresh" >&2
fi
exit 0
"""

NVIDIA_SMI = r'''#!/usr/bin/python3
"""Test stand-in for nvidia-smi: fails, as the real one does, while no driver is loaded."""
import re, sys
try:
    with open("/proc/driver/nvidia/version") as fh:
        version = re.search(r"Module for \S+\s+(\S+)", fh.read()).group(1)
except OSError:
    print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
          "Make sure that the latest NVIDIA driver is installed and running.")
    sys.exit(9)
if sys.argv[1:] == ["--version"]:
    print("NVIDIA-SMI version  : %s\nNVML version        : %s\nDRIVER version      : %s\n"
          "CUDA Version        : 13.0" % (version, version.split(".")[0], version))
    sys.exit(0)
print("No devices were found")
sys.exit(6)
'''

PERSISTENCED = r'''#!/usr/bin/python3
"""Test stand-in for nvidia-persistenced: forks like the real daemon, and fails, as the real one
does, when no NVIDIA driver is loaded (the test host booted a kernel without the modules)."""
import os, sys, time
if not os.path.exists("/proc/driver/nvidia/version"):
    sys.stderr.write("nvidia-persistenced failed to initialize. Check syslog for more details.\n")
    sys.exit(1)
if os.fork():
    time.sleep(0.2)
    sys.exit(0)
os.setsid()
os.makedirs("/var/run/nvidia-persistenced", exist_ok=True)
with open("/var/run/nvidia-persistenced/nvidia-persistenced.pid", "w") as fh:
    fh.write(str(os.getpid()))
with open("/var/run/nvidia-persistenced/args", "w") as fh:
    fh.write(" ".join(sys.argv[1:]))
while True:
    time.sleep(3600)
'''

PERSISTENCED_UNIT = """\
[Unit]
Description=NVIDIA Persistence Daemon
Wants=syslog.target

[Service]
Type=forking
PIDFile=/var/run/nvidia-persistenced/nvidia-persistenced.pid
Restart=always
ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --no-persistence-mode --verbose
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced

[Install]
WantedBy=multi-user.target
"""

PERSISTENCED_POSTINST = """\
#!/bin/sh
set -e
if [ "$1" = configure ] && ! getent passwd nvidia-persistenced >/dev/null; then
  useradd --system --home-dir / --no-create-home --shell /usr/sbin/nologin nvidia-persistenced
fi
exit 0
"""

DOCKERD = r'''#!/usr/bin/python3
"""Test stand-in for dockerd: refuses an unreadable daemon.json, as the real daemon does."""
import json, os, sys, time
try:
    with open("/etc/docker/daemon.json") as fh:
        json.load(fh)
except FileNotFoundError:
    pass
except ValueError as err:
    sys.exit("unable to configure the Docker daemon with file /etc/docker/daemon.json: %s" % err)
with open("/run/docker.pid", "w") as fh:
    fh.write(str(os.getpid()))
while True:
    time.sleep(3600)
'''

DOCKER_CLI = r'''#!/usr/bin/python3
"""Test stand-in for the docker CLI: `docker info --format '{{json .Runtimes}}'` from the daemon."""
import json, os, sys
if not os.path.exists("/run/docker.pid"):
    sys.exit("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
             "Is the docker daemon running?")
if sys.argv[1:2] == ["info"]:
    with open("/etc/docker/daemon.json") as fh:
        runtimes = {"runc": {"path": "runc"}, **json.load(fh).get("runtimes", {})}
    print(json.dumps(runtimes))
else:
    sys.exit("the gh200 test stand-in does not implement: docker " + " ".join(sys.argv[1:]))
'''

DOCKER_UNIT = """\
[Unit]
Description=Docker Application Container Engine
After=network-online.target containerd.service

[Service]
Type=simple
ExecStart=/usr/bin/dockerd
ExecStopPost=/bin/rm -f /run/docker.pid

[Install]
WantedBy=multi-user.target
"""

DOCKER_POSTINST = """\
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  getent group docker >/dev/null || groupadd --system docker
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable docker.service
    systemctl start docker.service || true
  fi
fi
exit 0
"""

KERNEL_POSTINST = """\
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /etc/kernel/postinst.d ]; then
  run-parts --report --exit-on-error --arg={abi} --arg=/boot/vmlinuz-{abi} /etc/kernel/postinst.d
fi
exit 0
"""


@dataclass
class Pkg:
    name: str
    version: str
    arch: str = "all"
    depends: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    conffiles: list[str] = field(default_factory=list)
    scripts: dict[str, str] = field(default_factory=dict)
    note: str = "no payload"


def behave(pkg: Pkg, behaviour: str, ctx: dict[str, Any], keyring: bytes) -> None:
    """Give a stand-in the payload and maintainer scripts its real package has (standins.yaml)."""
    x = 0o755
    if behaviour == "kernel-image":
        abi = ctx["abi"]
        pkg.files = {
            f"/boot/vmlinuz-{abi}": (f"gh200 test kernel {abi}\n".encode(), 0o644),
            f"/lib/modules/{abi}/modules.dep": (b"", 0o644),
        }
        pkg.scripts = {"postinst": KERNEL_POSTINST.format(abi=abi)}
        pkg.note = "postinst runs /etc/kernel/postinst.d"
    elif behaviour == "nvidia-modules":
        module_dir = f"/lib/modules/{ctx['abi']}/kernel/nvidia-{ctx['branch']}-open"
        pkg.files = {f"{module_dir}/nvidia.ko": (f"built for {ctx['kdriver']}\n".encode(), 0o644)}
        pkg.note = f"modules built against {ctx['kdriver']}"
    elif behaviour == "nvidia-smi":
        pkg.files = {"/usr/bin/nvidia-smi": (NVIDIA_SMI.encode(), x)}
        pkg.note = "nvidia-smi stand-in"
    elif behaviour == "persistenced":
        pkg.files = {
            "/usr/bin/nvidia-persistenced": (PERSISTENCED.encode(), x),
            "/lib/systemd/system/nvidia-persistenced.service": (PERSISTENCED_UNIT.encode(), 0o644),
        }
        pkg.scripts = {"postinst": PERSISTENCED_POSTINST}
        pkg.note = "nvidia-persistenced stand-in and unit"
    elif behaviour == "cuda-keyring":
        # The source list NVIDIA's keyring package installs: it points at NVIDIA's server, which
        # the test host cannot reach, so it must be replaced for apt to work.
        nvidia_list = (
            b"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] "
            b"https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/sbsa/ /\n"
        )
        pkg.files = {
            "/usr/share/keyrings/cuda-archive-keyring.gpg": (keyring, 0o644),
            "/etc/apt/sources.list.d/cuda-ubuntu2404-sbsa.list": (nvidia_list, 0o644),
        }
        pkg.conffiles = ["/etc/apt/sources.list.d/cuda-ubuntu2404-sbsa.list"]
        pkg.note = "test archive key and NVIDIA's source list"
    elif behaviour == "cuda-version-json":
        version_json = json.dumps({"cuda": {"name": "CUDA SDK", "version": "13.0.2"}}, indent=3)
        pkg.files = {"/usr/local/cuda-13.0/version.json": (version_json.encode(), 0o644)}
        pkg.note = "version.json only"
    elif behaviour == "docker-cli":
        pkg.files = {"/usr/bin/docker": (DOCKER_CLI.encode(), x)}
        pkg.note = "docker CLI stand-in"
    elif behaviour == "docker-daemon":
        pkg.files = {
            "/usr/bin/dockerd": (DOCKERD.encode(), x),
            "/lib/systemd/system/docker.service": (DOCKER_UNIT.encode(), 0o644),
        }
        pkg.scripts = {"postinst": DOCKER_POSTINST}
        pkg.note = "dockerd stand-in, docker group and unit"
    elif behaviour == "nvidia-ctk":
        pkg.files = {
            "/usr/bin/nvidia-ctk": (NVIDIA_CTK.encode(), x),
            "/lib/systemd/system/nvidia-cdi-refresh.service": (CDI_REFRESH_SERVICE.encode(), 0o644),
            "/lib/systemd/system/nvidia-cdi-refresh.path": (CDI_REFRESH_PATH.encode(), 0o644),
        }
        pkg.scripts = {"postinst": NCT_POSTINST}
        pkg.note = "nvidia-ctk stand-in and the nvidia-cdi-refresh units"
    else:
        raise SystemExit(f"standins.yaml names an unknown behaviour {behaviour!r} for {pkg.name}")


def expand(
    spec: dict[str, Any], fixture: dict[str, Any], arch: str, codename: str, keyring: bytes
) -> list[Pkg]:
    """One fixture entry -> its packages (`each` repeats it over kernels or driver builds)."""
    base = {
        "branch": fixture["branch"],
        "meta_version": fixture["meta_version"],
        "meta_abi": fixture["meta_abi"],
        "cuda_driver_build": fixture["cuda_driver_build"],
        "codename": codename,
    }
    each = spec.get("each")
    contexts: list[dict[str, Any]]
    if each == "kernel":
        contexts = [
            {**base, "abi": k["abi"], "kversion": k["version"], "kdriver": k["driver"]}
            for k in fixture["kernels"]
        ]
    elif each == "ubuntu_driver":
        contexts = [{**base, "v": v} for v in fixture["ubuntu_driver_builds"]]
    elif each == "toolkit":
        contexts = [{**base, "v": v} for v in fixture["toolkit_versions"]]
    else:
        contexts = [base]
    pkgs = []
    for ctx in contexts:
        pkg = Pkg(
            name=spec["package"].format(**ctx),
            version=str(spec["version"]).format(**ctx),
            arch=spec.get("arch", arch),
            depends=[d.format(**ctx) for d in spec.get("depends", [])],
            provides=[p.format(**ctx) for p in spec.get("provides", [])],
            conflicts=[c.format(**ctx) for c in spec.get("conflicts", [])],
        )
        if spec.get("behaviour"):
            behave(pkg, spec["behaviour"], ctx, keyring)
        pkgs.append(pkg)
    return pkgs


def run(*cmd: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, GNUPGHOME=GNUPGHOME)
    return subprocess.run(list(cmd), check=True, capture_output=True, env=env, **kw)  # type: ignore[call-overload]


def make_key(name: str) -> str:
    if Path(GNUPGHOME).exists():
        shutil.rmtree(GNUPGHOME)
    Path(GNUPGHOME).mkdir(mode=0o700)
    run(
        "gpg",
        "--batch",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
        "--quick-gen-key",
        f"{name} <archive@gh200.test>",
        "ed25519",
        "sign",
        "never",
    )
    out = run("gpg", "--batch", "--with-colons", "--list-keys").stdout.decode()
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def build_deb(pkg: Pkg, out_dir: Path, work: Path) -> Path:
    root = work / f"{pkg.name}_{pkg.version}"
    (root / "DEBIAN").mkdir(parents=True)
    control = [
        f"Package: {pkg.name}",
        f"Version: {pkg.version}",
        f"Architecture: {pkg.arch}",
        "Maintainer: gh200-stack tests <tests@gh200.test>",
        "Priority: optional",
        "Section: misc",
    ]
    for name, values in (("Depends", pkg.depends), ("Provides", pkg.provides), ("Conflicts", pkg.conflicts)):
        if values:
            control.append(f"{name}: {', '.join(values)}")
    control.append(f"Description: gh200 test stand-in for {pkg.name} ({pkg.note})")
    (root / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    if pkg.conffiles:
        (root / "DEBIAN" / "conffiles").write_text("".join(f"{c}\n" for c in pkg.conffiles))
    for path, (data, mode) in pkg.files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
    for script, text in pkg.scripts.items():
        (root / "DEBIAN" / script).write_text(text)
        (root / "DEBIAN" / script).chmod(0o755)
    deb = out_dir / f"{pkg.name}_{pkg.version.replace(':', '%3a')}_{pkg.arch}.deb"
    run("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb))
    return deb


def packages_index(debs: list[Path], base: Path) -> bytes:
    stanzas = []
    for deb in sorted(debs):
        control = run("dpkg-deb", "-f", str(deb)).stdout.decode().rstrip("\n")
        data = deb.read_bytes()
        stanzas.append(
            control
            + f"\nFilename: {deb.relative_to(base).as_posix()}\nSize: {len(data)}"
            + f"\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    return "\n".join(stanzas).encode()


def write_index(index_dir: Path, content: bytes) -> list[Path]:
    index_dir.mkdir(parents=True, exist_ok=True)
    (index_dir / "Packages").write_bytes(content)
    (index_dir / "Packages.gz").write_bytes(gzip.compress(content, mtime=0))
    return [index_dir / "Packages", index_dir / "Packages.gz"]


def write_release(release_dir: Path, fields: dict[str, str], indexes: list[Path]) -> None:
    lines = [f"{k}: {v}" for k, v in fields.items()]
    lines.append("Date: " + time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime(time.time() - 3600)))
    lines.append("SHA256:")
    for path in indexes:
        data = path.read_bytes()
        rel = path.relative_to(release_dir).as_posix()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data):>8} {rel}")
    release = release_dir / "Release"
    release.write_text("\n".join(lines) + "\n")
    run("gpg", "--batch", "--yes", "--clearsign", "-o", str(release_dir / "InRelease"), str(release))
    run("gpg", "--batch", "--yes", "-abs", "-o", str(release_dir / "Release.gpg"), str(release))


def flat_repo(base: Path, debs: list[Path], fields: dict[str, str]) -> None:
    indexes = write_index(base, packages_index(debs, base))
    write_release(base, fields, indexes)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--arch", required=True, help="Debian architecture of the test host")
    parser.add_argument("--codename", required=True, help="distribution codename of the test host")
    parser.add_argument("--fixture", type=Path, default=HERE / "standins.yaml")
    args = parser.parse_args()
    fixture = yaml.safe_load(args.fixture.read_text())
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    fpr = make_key("gh200 test archive")
    keys = out / "keys"
    keys.mkdir(parents=True)
    (keys / "test-archive.asc").write_bytes(run("gpg", "--batch", "--armor", "--export", fpr).stdout)
    (keys / "fingerprint").write_text(fpr + "\n")
    keyring = run("gpg", "--batch", "--export", fpr).stdout

    def pkgs(repo: str) -> list[Pkg]:
        return [
            p
            for spec in fixture["repos"][repo]
            for p in expand(spec, fixture, args.arch, args.codename, keyring)
        ]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        ubuntu = out / "ubuntu"
        ubuntu.mkdir()
        debs = [build_deb(p, ubuntu, work) for p in pkgs("ubuntu")]
        flat_repo(ubuntu, debs, {"Origin": "Ubuntu", "Label": "Ubuntu", "Suite": "noble-updates"})

        cuda = out / "cuda"
        cuda.mkdir()
        debs = [build_deb(p, cuda, work) for p in pkgs("cuda")]
        flat_repo(cuda, debs, {"Origin": "NVIDIA", "Label": "NVIDIA CUDA"})

        docker = out / "docker"
        pool = docker / "pool" / "stable"
        pool.mkdir(parents=True)
        debs = [build_deb(p, pool, work) for p in pkgs("docker")]
        dist = docker / "dists" / args.codename
        indexes = write_index(dist / "stable" / f"binary-{args.arch}", packages_index(debs, docker))
        write_release(
            dist,
            {
                "Origin": "Docker",
                "Label": "Docker CE",
                "Suite": args.codename,
                "Codename": args.codename,
                "Architectures": args.arch,
                "Components": "stable",
            },
            indexes,
        )

        toolkit = out / "nvidia-container-toolkit" / "stable" / "deb" / args.arch
        toolkit.mkdir(parents=True)
        debs = [build_deb(p, toolkit, work) for p in pkgs("toolkit")]
        flat_repo(toolkit, debs, {"Origin": "github.com/NVIDIA/libnvidia-container", "Label": "NVIDIA"})

    # Readable by the http server and apt's unprivileged _apt user.
    for dirpath, _dirs, files in os.walk(out):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    print(json.dumps({"fingerprint": fpr, "out": str(out)}))


if __name__ == "__main__":
    main()
