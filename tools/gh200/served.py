"""Finding a served profile: the labels every gh200 container carries, its URL and its API key.

Both sides of a benchmark need this and neither owns it: `deploy` writes the labels and starts
containers, `bench` finds the running container of a profile to measure it. It lives below both
(it imports neither), so `gh200 smoke PROFILE` finds its target without importing `deploy`.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import docker
from docker.errors import DockerException

from gh200.errors import BadInput, OperationFailed
from gh200.paths import bundle_root
from gh200.profiles.render import LABEL_PREFIX
from gh200.profiles.schema import Profile

L = LABEL_PREFIX
L_PROFILE = f"{L}.profile"
L_HASH = f"{L}.profile-hash"
L_STACK = f"{L}.stack"
L_IMAGE_TAG = f"{L}.image-tag"
L_ENGINE = f"{L}.engine"
L_PORT = f"{L}.port"
L_BIND = f"{L}.bind"
L_GPUS = f"{L}.gpus"
L_HEALTH = f"{L}.health-url"
L_MODELS = f"{L}.models-url"
L_SERVED = f"{L}.served-name"
L_TIMEOUT = f"{L}.health-timeout"
L_KEY_FILE = f"{L}.api-key-file"
L_CAPS = f"{L}.cap-add"


class ApiKeyFileInsecure(BadInput):
    """The API key file is readable or writable by others."""


def api_key_path(profile: Profile) -> Path | None:
    if not profile.api_key_file:
        return None
    path = Path(profile.api_key_file).expanduser()
    return path if path.is_absolute() else bundle_root() / path


def read_api_key(path: Path) -> str:
    """The key in a file only its owner can read (mode 0600 or stricter). Never logged."""
    try:
        info = path.stat()
    except OSError as err:
        raise BadInput(
            f"API key file {path} cannot be read ({err.strerror})", "create it with mode 0600"
        ) from err
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(f"API key file {path} is not a regular file", "point api_key_file at a file")
    if info.st_mode & 0o077:
        raise ApiKeyFileInsecure(
            f"API key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; others may read it",
            f"chmod 600 {path}",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BadInput(f"API key file {path} cannot be read", "write the key as one line of text") from err
    key = next((line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")), "")
    if not key:
        raise BadInput(f"API key file {path} holds no key", "write the key on its first line")
    return key


def api_key_for(profile: Profile) -> str | None:
    path = api_key_path(profile)
    return read_api_key(path) if path else None


def base_url(profile: Profile) -> str:
    host = profile.bind_address
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{profile.port}"


def engine_kind(engine: str) -> str:
    """The bench client's name for a profile engine's HTTP API."""
    return "vllm" if engine == "vllm" else "llama_cpp"


def gh200_containers(client: docker.DockerClient, **labels: str) -> list[Any]:
    """Every gh200 container (running or not) carrying the given labels, found by label."""
    filters = [L_PROFILE] + [f"{L}.{key.replace('_', '-')}={value}" for key, value in labels.items()]
    try:
        return list(client.containers.list(all=True, filters={"label": filters}))
    except DockerException as err:
        raise OperationFailed(f"listing containers failed: {err}", "check the container engine") from err


def running_containers(client: docker.DockerClient, profile: str) -> list[Any]:
    """The running containers of a profile (normally one)."""
    return [c for c in gh200_containers(client, profile=profile) if c.status == "running"]
