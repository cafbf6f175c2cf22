"""A container engine for the Docker SDK: Docker where one answers, otherwise Podman started here.

Podman runs `podman system service` on a socket in the cache, with the bundle's own
containers.conf (runc, lower default ulimits) rather than edits to /etc.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound

from gh200.errors import EngineUnavailable, OperationFailed
from gh200.fsutil import file_lock
from gh200.paths import cache_dir, containers_dir

BASE_IMAGE = "localhost/gh200-base:bookworm"
BASE_SUITE = "bookworm"
PODMAN_CONF = "podman/containers.conf"


def _ping(base_url: str) -> docker.DockerClient | None:
    try:
        client = docker.DockerClient(base_url=base_url, timeout=600)
        client.ping()
        return client
    except (DockerException, OSError):
        return None


def podman_socket() -> Path:
    return cache_dir() / "podman" / "podman.sock"


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(containers_dir() / PODMAN_CONF)
    return env


def is_podman(client: docker.DockerClient) -> bool:
    try:
        components = client.version().get("Components", [])
    except DockerException:
        return False
    return any("podman" in str(c.get("Name", "")).lower() for c in components)


def connect(start: bool = True) -> docker.DockerClient:
    """Return a Docker SDK client: $DOCKER_HOST, the Docker socket, or the harness's Podman."""
    if os.environ.get("DOCKER_HOST"):
        client = _ping(os.environ["DOCKER_HOST"])
        if client:
            return client
    for url in ("unix:///var/run/docker.sock", f"unix://{podman_socket()}"):
        if url.startswith("unix://") and not Path(url[7:]).exists():
            continue
        client = _ping(url)
        if client:
            return client
    if not start:
        raise EngineUnavailable("no container engine answers", "start Docker, or install podman and runc")
    return start_podman()


def start_podman(timeout: float = 60.0) -> docker.DockerClient:
    """Start `podman system service` on the cache socket (once, under a lock) and connect."""
    if not shutil.which("podman"):
        raise EngineUnavailable(
            "no container engine answers and podman is not installed",
            "run `make setup` (it installs podman, runc and debootstrap) or start Docker",
        )
    sock = podman_socket()
    url = f"unix://{sock}"
    with file_lock(sock.parent / "start.lock"):
        client = _ping(url) if sock.exists() else None
        if client:
            return client
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        log = open(sock.parent / "service.log", "ab")  # noqa: SIM115 - handed to the daemon
        subprocess.Popen(
            ["podman", "system", "service", "--time=0", url],
            env=podman_env(),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sock.exists():
                client = _ping(url)
                if client:
                    os.environ.setdefault("CONTAINERS_CONF", str(containers_dir() / PODMAN_CONF))
                    return client
            time.sleep(0.3)
    raise EngineUnavailable(
        f"podman service did not answer on {sock} within {timeout:.0f}s",
        f"see {sock.parent / 'service.log'}",
    )


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except ImageNotFound:
        return False


def ensure_base_image(
    client: docker.DockerClient, pull: str | None = "docker.io/library/debian:bookworm"
) -> str:
    """A Debian 12 base image: pulled where a registry answers, else built with debootstrap.

    The debootstrap rootfs tarball is cached, so a new engine store imports it in seconds.
    """
    if image_exists(client, BASE_IMAGE):
        return BASE_IMAGE
    with file_lock(cache_dir() / "base" / "build.lock"):
        if image_exists(client, BASE_IMAGE):
            return BASE_IMAGE
        if pull and os.environ.get("GH200_TRY_PULL", "0") == "1":
            with contextlib.suppress(DockerException):
                image = client.images.pull(pull)
                image.tag(BASE_IMAGE)
                return BASE_IMAGE
        tarball = _debootstrap_tarball()
        with open(tarball, "rb") as handle:
            answer = client.api.import_image_from_data(handle.read())
        # Podman's compat endpoint ignores repo/tag on import: tag the id it reports instead.
        found = re.findall(r"sha256:[0-9a-f]{64}", str(answer))
        if not found:
            raise OperationFailed(f"importing the debootstrap rootfs gave no image id: {answer!r:.200}")
        repo, tag = BASE_IMAGE.rsplit(":", 1)
        client.images.get(found[-1]).tag(repo, tag)
    if not image_exists(client, BASE_IMAGE):
        raise OperationFailed(f"importing {BASE_IMAGE} did not produce an image", "see the engine's log")
    return BASE_IMAGE


def _debootstrap_tarball() -> Path:
    out = cache_dir() / "base" / f"debian-{BASE_SUITE}-minbase.tar"
    if out.exists():
        return out
    if not shutil.which("debootstrap"):
        raise EngineUnavailable(
            "debootstrap is not installed", "run `make setup` or apt-get install debootstrap"
        )
    root = out.parent / f".rootfs-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    try:
        subprocess.run(
            ["debootstrap", "--variant=minbase", BASE_SUITE, str(root)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        tmp = out.with_suffix(".tar.partial")
        with tarfile.open(tmp, "w") as tar:
            for entry in sorted(os.listdir(root)):
                tar.add(root / entry, arcname=entry)
        os.replace(tmp, out)
    except subprocess.CalledProcessError as err:
        tail = (err.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
        raise OperationFailed(
            f"debootstrap {BASE_SUITE} failed: {' '.join(tail)}", "check apt access"
        ) from err
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def run_output(
    client: docker.DockerClient,
    image: str,
    command: list[str],
    *,
    entrypoint: str | list[str] | None = None,
    timeout: float = 300.0,
    **kwargs: object,
) -> str:
    """Run a short-lived container to completion and return its stdout+stderr.

    Podman's compat API can answer `wait` before conmon has flushed the last lines to the log,
    so `containers.run(remove=True)` sometimes returns truncated output. Read the log until two
    reads agree, then remove the container.
    """
    box = client.containers.create(image, command, entrypoint=entrypoint, **kwargs)
    try:
        box.start()
        result = box.wait(timeout=timeout)
        previous = b""
        for _ in range(20):
            current = box.logs(stdout=True, stderr=True)
            if current == previous and current:
                break
            previous = current
            time.sleep(0.1)
        code = int(result.get("StatusCode", -1))
        text = previous.decode(errors="replace")
        if code != 0:
            raise OperationFailed(f"{image} {' '.join(command)} exited {code}: {text.strip()[-300:]}")
        return text
    finally:
        box.remove(force=True)
