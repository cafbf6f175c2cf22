#!/usr/bin/env python3
"""Build the test host's local apt repositories: stand-ins for Ubuntu's, NVIDIA's and Docker's.

NVIDIA's and Docker's repositories (and Ubuntu's archive) cannot be reached from the test
machines, so the roles are pointed at these instead. The packages carry the real names, versions
shaped like the real ones and the real dependency structure the roles rely on, so apt's
repository, signature, pinning, hold and install logic runs for real. Their payloads are empty,
except where a role reads a file the real package installs: the CUDA keyring (a test key and the
apt source NVIDIA's package writes), CUDA's version.json, and an `nvidia-ctk` stand-in that does
the two things the roles call (`runtime configure` edits daemon.json the way the real tool does;
`cdi generate` fails as the real one does on a host without a GPU).

Runs inside the test host (python3 stdlib, dpkg-deb, gpg), so the test machine needs none of them.
Every repository is signed with a throwaway key made here; prints one JSON line with its
fingerprint.
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

GNUPGHOME = "/root/.gh200-test-archive-gnupg"
UBUNTU_DRIVER = ["580.105.08-0ubuntu0.24.04.1", "580.126.09-0ubuntu0.24.04.1"]
# NVIDIA's CUDA repository carries the same names with a higher Debian revision: without the CUDA
# pin, apt would prefer these over Ubuntu's signed builds.
CUDA_DRIVER = "580.105.08-1ubuntu1"
KERNEL = "6.14.0-1015.15~24.04.1"
KABI = "6.14.0-1015-nvidia-64k"
TOOLKIT = ["1.18.0-1", "1.19.0-1"]

NVIDIA_CTK = r'''#!/usr/bin/python3
"""Test stand-in for nvidia-ctk (nvidia-container-toolkit-base): the two calls the gh200 roles make."""
import json, os, sys
args = sys.argv[1:]
with open("/var/log/nvidia-ctk-standin.log", "a") as log:
    log.write(" ".join(args) + "\n")
if args[:2] == ["runtime", "configure"]:
    opts = dict(a[2:].split("=", 1) for a in args[2:] if a.startswith("--") and "=" in a)
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
    sys.exit("ERROR failed to generate CDI spec: failed to initialize NVML: ERROR_LIBRARY_NOT_FOUND")
elif args == ["--version"]:
    print("NVIDIA Container Toolkit CLI version 1.18.0 (gh200 test stand-in)")
else:
    sys.exit("the gh200 test stand-in does not implement: " + " ".join(args))
'''


@dataclass
class Pkg:
    name: str
    version: str
    arch: str = "all"
    depends: list[str] = field(default_factory=list)
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    conffiles: list[str] = field(default_factory=list)
    note: str = "no payload"


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
    if pkg.depends:
        control.append(f"Depends: {', '.join(pkg.depends)}")
    control.append(f"Description: gh200 test stand-in for {pkg.name} ({pkg.note})")
    (root / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    if pkg.conffiles:
        (root / "DEBIAN" / "conffiles").write_text("".join(f"{c}\n" for c in pkg.conffiles))
    for path, (data, mode) in pkg.files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
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


def ubuntu_packages(arch: str) -> list[Pkg]:
    pkgs = [
        Pkg("linux-image-" + KABI, KERNEL, arch),
        Pkg("linux-nvidia-64k-hwe-24.04", KERNEL, arch, [f"linux-image-{KABI}"]),
        Pkg(f"linux-modules-nvidia-580-open-{KABI}", KERNEL + "+1", arch, [f"linux-image-{KABI}"]),
        Pkg(
            "linux-modules-nvidia-580-open-nvidia-64k-hwe-24.04",
            KERNEL + "+1",
            arch,
            [
                f"linux-modules-nvidia-580-open-{KABI} (= {KERNEL}+1)",
                "nvidia-kernel-common-580 (>= 580.105.08)",
            ],
        ),
    ]
    for v in UBUNTU_DRIVER:
        pkgs += driver_userspace(v, arch, with_dkms=True)
    return pkgs


def driver_userspace(v: str, arch: str, with_dkms: bool) -> list[Pkg]:
    pkgs = [
        Pkg("nvidia-kernel-common-580", v, arch),
        Pkg("libnvidia-compute-580", v, arch),
        Pkg("nvidia-compute-utils-580", v, arch, [f"libnvidia-compute-580 (= {v})"]),
        Pkg("nvidia-utils-580", v, arch),
        Pkg(
            "nvidia-headless-no-dkms-580-open",
            v,
            arch,
            [
                f"nvidia-kernel-common-580 (= {v})",
                f"libnvidia-compute-580 (= {v})",
                f"nvidia-compute-utils-580 (= {v})",
            ],
        ),
    ]
    if with_dkms:
        pkgs += [
            Pkg("nvidia-dkms-580-open", v, arch, [f"nvidia-kernel-common-580 (= {v})"]),
            Pkg(
                "nvidia-headless-580-open",
                v,
                arch,
                [f"nvidia-headless-no-dkms-580-open (= {v})", f"nvidia-dkms-580-open (= {v})"],
            ),
        ]
    return pkgs


def cuda_packages(arch: str, keyring: bytes) -> list[Pkg]:
    # The source list NVIDIA's keyring package installs: it points at NVIDIA's server, which
    # the test host cannot reach, so it must be replaced for apt to work.
    nvidia_list = (
        b"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] "
        b"https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/sbsa/ /\n"
    )
    version_json = json.dumps({"cuda": {"name": "CUDA SDK", "version": "13.0.2"}}, indent=3).encode()
    return [
        Pkg(
            "cuda-keyring",
            "1.1-1",
            "all",
            files={
                "/usr/share/keyrings/cuda-archive-keyring.gpg": (keyring, 0o644),
                "/etc/apt/sources.list.d/cuda-ubuntu2404-sbsa.list": (nvidia_list, 0o644),
            },
            conffiles=["/etc/apt/sources.list.d/cuda-ubuntu2404-sbsa.list"],
            note="test archive key and NVIDIA's source list",
        ),
        Pkg(
            "cuda-nvcc-13-0",
            "13.0.88-1",
            arch,
            files={"/usr/local/cuda-13.0/version.json": (version_json, 0o644)},
            note="version.json only",
        ),
        Pkg("cuda-toolkit-13-0", "13.0.2-1", arch, ["cuda-nvcc-13-0 (>= 13.0.88)"]),
        Pkg("cuda-toolkit-13-1", "13.1.0-1", arch),
        *driver_userspace(CUDA_DRIVER, arch, with_dkms=False),
    ]


def docker_packages(arch: str, codename: str) -> list[Pkg]:
    tail = f"-1~debian.12~{codename}"
    return [
        Pkg("containerd.io", "1.7.28-1", arch),
        Pkg("docker-ce-cli", f"5:28.5.1{tail}", arch),
        Pkg("docker-ce", f"5:28.5.1{tail}", arch, ["docker-ce-cli", "containerd.io (>= 1.7.27)"]),
        Pkg("docker-buildx-plugin", f"0.29.1{tail}", arch),
        Pkg("docker-compose-plugin", f"2.40.0{tail}", arch),
    ]


def toolkit_packages(arch: str) -> list[Pkg]:
    pkgs = []
    for v in TOOLKIT:
        pkgs += [
            Pkg("libnvidia-container1", v, arch),
            Pkg("libnvidia-container-tools", v, arch, [f"libnvidia-container1 (= {v})"]),
            Pkg(
                "nvidia-container-toolkit-base",
                v,
                arch,
                files={"/usr/bin/nvidia-ctk": (NVIDIA_CTK.encode(), 0o755)},
                note="nvidia-ctk stand-in",
            ),
            Pkg(
                "nvidia-container-toolkit",
                v,
                arch,
                [f"nvidia-container-toolkit-base (= {v})", f"libnvidia-container-tools (= {v})"],
            ),
        ]
    return pkgs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--arch", required=True, help="Debian architecture of the test host")
    parser.add_argument("--codename", required=True, help="distribution codename of the test host")
    args = parser.parse_args()
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    fpr = make_key("gh200 test archive")
    keys = out / "keys"
    keys.mkdir(parents=True)
    (keys / "test-archive.asc").write_bytes(run("gpg", "--batch", "--armor", "--export", fpr).stdout)
    binary_key = run("gpg", "--batch", "--export", fpr).stdout

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        ubuntu = out / "ubuntu"
        ubuntu.mkdir()
        debs = [build_deb(p, ubuntu, work) for p in ubuntu_packages(args.arch)]
        flat_repo(ubuntu, debs, {"Origin": "Ubuntu", "Label": "Ubuntu", "Suite": "noble-updates"})

        cuda = out / "cuda"
        cuda.mkdir()
        debs = [build_deb(p, cuda, work) for p in cuda_packages(args.arch, binary_key)]
        flat_repo(cuda, debs, {"Origin": "NVIDIA", "Label": "NVIDIA CUDA"})

        docker = out / "docker"
        pool = docker / "pool" / "stable"
        pool.mkdir(parents=True)
        debs = [build_deb(p, pool, work) for p in docker_packages(args.arch, args.codename)]
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
        debs = [build_deb(p, toolkit, work) for p in toolkit_packages(args.arch)]
        flat_repo(toolkit, debs, {"Origin": "github.com/NVIDIA/libnvidia-container", "Label": "NVIDIA"})

    # Readable by the http server and apt's unprivileged _apt user.
    for dirpath, _dirs, files in os.walk(out):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    print(json.dumps({"fingerprint": fpr, "out": str(out)}))


if __name__ == "__main__":
    main()
