"""Run, roll out, roll back, inspect and stop profile containers with the Docker SDK.

Every container carries the profile's labels (profile, hash, image, model revision, stack) plus
what deploy itself needs later (port, GPUs, health URLs), and is found by those labels only.

Roll-out on one workstation: deploying a profile stops whichever gh200 containers hold its GPUs
or its port (two big profiles do not fit at once), starts the new one, waits for readiness and runs
the caller's smoke check (gh200.orchestrate passes one; deploy itself never benchmarks). Any failure
removes the new container and restarts the previous ones, checking that they are healthy again
(roll-back).
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from gh200.errors import BadInput, OperationFailed
from gh200.fsutil import atomic_write_text
from gh200.output import console
from gh200.output import progress as progress_bar
from gh200.paths import state_dir
from gh200.profiles import container_spec, load_any, load_profile, profile_hash
from gh200.profiles.render import (
    API_KEY_IN_CONTAINER,
    NUMA_CAPABILITY,
    binds_memory,
    model_host_dir,
    resolve_model_files,
)
from gh200.profiles.schema import Profile, Stack
from gh200.served import (
    L_BIND,
    L_CAPS,
    L_ENGINE,
    L_GPUS,
    L_HASH,
    L_HEALTH,
    L_IMAGE_TAG,
    L_KEY_FILE,
    L_MODELS,
    L_PORT,
    L_PROFILE,
    L_SERVED,
    L_STACK,
    L_TIMEOUT,
    L,
    api_key_for,
    api_key_path,
    gh200_containers,
    read_api_key,
)

LOG_TAIL_LINES = 40
STOP_TIMEOUT_S = 30
TINY_MODEL_REPO = "local/tiny-llama-spm"
PLACEMENT_POLL_S = 5.0
# What a refused NUMA memory policy looks like in a server's log. vLLM 0.33.0
# (vllm/utils/numa_utils.py, _resolve_numactl_args) drops --membind and only warns; numactl and
# libnuma print the failed call with strerror(EPERM) and exit.
PLACEMENT_REFUSED = re.compile(
    r"numactl args .* rejected; falling back"
    r"|lacks permission to set NUMA memory policy"
    r"|(set_mempolicy|mbind|membind|numa_set\w*).*(Operation not permitted|Permission denied)"
)
LOG_PREFIX = re.compile(
    r"^(\([^)]*\)\s+)?(ERROR|WARNING|INFO|DEBUG|CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\s+\[[^]]*\]\s?"
)
# The first line worth showing from a failed server's log: a Python traceback (shown with the
# exception that ends it), else the first error line.
ERROR_LINE = re.compile(
    r"\b(ERROR|FATAL|CRITICAL)\b|\berror\b|\w+Error\b|\w+Exception\b|Operation not permitted|not permitted"
)


class DeployFailed(OperationFailed):
    """The new profile did not come up (and was removed); `rolled_back` names what was restored."""


class PortTaken(OperationFailed):
    """The profile's port is held by something that is not a gh200 container."""


class ModelMissing(BadInput):
    """The profile's model directory is not in the model store."""


class ModelFileUnresolved(BadInput):
    """A model file (or shard pattern) of the profile names no single file in the model store."""


class PlacementRefused(DeployFailed):
    """The server could not set the NUMA memory policy its profile asks for."""


@dataclass
class Target:
    profile: Profile
    spec: dict[str, Any]
    stack: str | None

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def hash(self) -> str:
        return str(self.spec["labels"][L_HASH])


@dataclass
class DeployResult:
    changed: bool
    targets: list[dict[str, Any]]
    stopped: list[str] = field(default_factory=list)
    stack: str | None = None
    smoke: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "stack": self.stack,
            "profiles": self.targets,
            "replaced": self.stopped,
            "smoke": self.smoke,
        }


# --- inputs ------------------------------------------------------------------------------------------


def load_targets(name_or_path: str | Profile) -> tuple[list[Profile], str | None]:
    """A profile, or every profile of a stack (with the stack's name)."""
    if isinstance(name_or_path, Profile):
        return [name_or_path], None
    loaded = load_any(name_or_path)
    if isinstance(loaded, Stack):
        return [load_profile(p) for p in loaded.profiles], loaded.name
    return [loaded], None


def _local_url(url: str) -> str:
    """Health URLs of a profile bound to all addresses are probed on loopback."""
    return url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")


# --- images and models -----------------------------------------------------------------------------


def resolve_image(
    client: docker.DockerClient, profile: Profile, *, progress: bool = True, unlocked: bool = False
) -> str:
    """The local tag to run: the recipe's image (built if its content changed) or the pinned base."""
    spec = container_spec(profile)
    if profile.image.recipe:
        from gh200.images.build import ensure_image

        return ensure_image(client, profile.image.recipe, progress=progress, unlocked=unlocked)
    ref = str(spec["image"]["base"])
    try:
        client.images.get(ref)
        return ref
    except ImageNotFound:
        pass
    try:
        client.images.pull(ref)
    except DockerException as err:
        raise OperationFailed(
            f"image {ref} is not here and pulling it failed: {str(err)[:200]}",
            "pull it on a connected host (`gh200 lock` pins its digest) or load it with `docker load`",
        ) from err
    return ref


def ensure_model(profile: Profile) -> Path:
    """The model directory; the tiny demo model is generated here, others must have been fetched."""
    directory = model_host_dir(profile)
    if profile.model.repo == TINY_MODEL_REPO:
        from gh200.deploy.tinymodel import ensure_tiny_model

        return ensure_tiny_model(profile).directory
    if not directory.is_dir():
        raise ModelMissing(
            f"model directory {directory} for {profile.name} does not exist",
            f"run `gh200 models fetch {profile.name}` (or set GH200_MODELS to the model store)",
        )
    return directory


def model_files_for(profile: Profile, directory: Path) -> dict[str, str]:
    """The files the engine loads (shard patterns expanded), each exactly one file in `directory`."""
    try:
        return resolve_model_files(profile, directory)
    except ValueError as err:
        raise ModelFileUnresolved(
            f"{profile.name}: model file {err}",
            "fetch the model again (`gh200 models fetch`) or make the profile's gguf_file name one file",
        ) from err


# --- containers -------------------------------------------------------------------------------------


def _labels(container: Any) -> dict[str, str]:
    return dict(container.labels or {})


def _gpus(labels: dict[str, str]) -> set[int]:
    text = labels.get(L_GPUS, "")
    return {int(g) for g in text.split(",") if g.strip().isdigit()}


def _ports_clash(bind_a: str, port_a: int, bind_b: str, port_b: int) -> bool:
    if port_a != port_b:
        return False
    wildcard = {"0.0.0.0", "::", ""}
    return bind_a == bind_b or bind_a in wildcard or bind_b in wildcard


def conflicts(target: Target, labels: dict[str, str]) -> str | None:
    """Why a running container must make way for `target` (None when they can run side by side)."""
    if labels.get(L_PROFILE) == target.name:
        return "an older version of the same profile"
    shared = _gpus(labels) & set(target.spec["gpus"])
    if shared:
        return f"holds GPU {','.join(str(g) for g in sorted(shared))}"
    port = labels.get(L_PORT, "")
    if port.isdigit() and _ports_clash(
        labels.get(L_BIND, ""), int(port), target.profile.bind_address, target.profile.port
    ):
        return f"holds port {port}"
    return None


def port_free(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def deploy_labels(target: Target, image_tag: str) -> dict[str, str]:
    spec = target.spec
    labels = dict(spec["labels"])
    labels.update(
        {
            L_IMAGE_TAG: image_tag,
            L_ENGINE: target.profile.engine,
            L_PORT: str(target.profile.port),
            L_BIND: target.profile.bind_address,
            L_GPUS: ",".join(str(g) for g in spec["gpus"]),
            L_HEALTH: _local_url(spec["health"]["url"]),
            L_MODELS: _local_url(spec["health"]["models_url"]),
            L_SERVED: target.profile.model.served_name,
            L_TIMEOUT: str(spec["health"]["timeout_s"]),
        }
    )
    if spec.get("cap_add"):
        labels[L_CAPS] = ",".join(spec["cap_add"])
    key_path = api_key_path(target.profile)
    if key_path:
        labels[L_KEY_FILE] = str(key_path)  # the path only: the key itself never goes in a label
    if target.stack:
        labels[L_STACK] = target.stack
    return labels


def container_name(target: Target) -> str:
    """The spec's name plus the profile hash: a new version never collides with the one it replaces."""
    return f"{target.spec['name']}-{target.hash[:8]}"


def key_copy_path(name: str) -> Path:
    return state_dir() / "deploy" / "keys" / f"{name}.key"


def write_key_copy(name: str, api_key: str) -> Path:
    """A copy of the key the container's own user can read, mounted read-only into the container.

    The profile's key file is 0600 and owned by whoever deploys; llama-server runs as another uid
    in its image and could not read it through a bind mount. The copy is world-readable but sits
    in a 0700 directory, so on the host only the deploying user reaches it; it goes with the
    container.
    """
    path = key_copy_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    atomic_write_text(path, api_key + "\n", mode=0o444)
    return path


def remove_key_copy(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        key_copy_path(name).unlink()


def launch_argv(container: Any) -> list[str]:
    """The argv a deployed container was started with (entrypoint + command), for run records."""
    config = container.attrs.get("Config", {}) or {}
    return [str(a) for a in [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]]


def create_container(
    client: docker.DockerClient,
    target: Target,
    image_tag: str,
    api_key: str | None,
    security_opt: list[str] | None = None,
) -> Any:
    """Create (not start) the target's container. `security_opt` is the engine-level setting
    (e.g. `seccomp=<Docker's default profile>` in the tests); the profile decides everything else."""
    spec = target.spec
    command = list(spec["command"])
    environment = dict(spec["environment"])
    volumes = dict(spec["volumes"])
    name = container_name(target)
    if api_key:
        if target.profile.engine == "vllm":
            environment["VLLM_API_KEY"] = api_key
        else:
            # llama-server reads the key from --api-key-file (rendered into the command).
            copy = write_key_copy(name, api_key)
            volumes[str(copy)] = {"bind": API_KEY_IN_CONTAINER, "mode": "ro"}
    kwargs: dict[str, Any] = {
        "image": image_tag,
        "entrypoint": [command[0]],
        "command": command[1:],
        "name": name,
        "environment": environment,
        "labels": deploy_labels(target, image_tag),
        "ports": {key: (value[0], value[1]) for key, value in spec["ports"].items()},
        "volumes": volumes,
        "detach": True,
    }
    if spec.get("cap_add"):
        kwargs["cap_add"] = list(spec["cap_add"])
    if security_opt:
        kwargs["security_opt"] = list(security_opt)
    if spec["gpus"]:
        kwargs["device_requests"] = [
            docker.types.DeviceRequest(device_ids=[str(g) for g in spec["gpus"]], capabilities=[["gpu"]])
        ]
    if spec.get("cpuset_cpus"):
        kwargs["cpuset_cpus"] = spec["cpuset_cpus"]
    if spec.get("cpuset_mems"):
        kwargs["cpuset_mems"] = spec["cpuset_mems"]
    if spec.get("ipc_mode"):
        kwargs["ipc_mode"] = spec["ipc_mode"]
    if spec.get("shm_size"):
        kwargs["shm_size"] = spec["shm_size"]
    if spec.get("ulimits"):
        kwargs["ulimits"] = [
            docker.types.Ulimit(name=name, soft=int(limits[0]), hard=int(limits[1]))
            for name, limits in spec["ulimits"].items()
        ]
    try:
        return client.containers.create(**kwargs)
    except DockerException as err:
        remove_key_copy(name)
        raise DeployFailed(
            f"creating the container for {target.name} failed: {_engine_error(err)}", "see the engine's log"
        ) from err


def _engine_error(err: Exception) -> str:
    text = getattr(err, "explanation", None) or str(err)
    return " ".join(str(text).split())[:400]


def log_tail(container: Any, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return bytes(container.logs(tail=lines)).decode(errors="replace")
    except DockerException:
        return ""


def print_log_tail(name: str, container: Any) -> None:
    tail = log_tail(container).rstrip()
    if tail:
        console.print(f"[bold]last {LOG_TAIL_LINES} log lines of {name}:[/]")
        console.print(tail, markup=False, highlight=False, soft_wrap=True)


def full_log(container: Any) -> str:
    try:
        return bytes(container.logs()).decode(errors="replace")
    except DockerException:
        return ""


def first_error(text: str) -> str | None:
    """The first Traceback (with the exception line that ends it) or error line of a log."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        at = line.find("Traceback (most recent call last)")
        if at >= 0:
            for after in lines[i + 1 :]:
                # vLLM prefixes each line of a worker's traceback with "(proc) ERROR date [file]".
                body = LOG_PREFIX.sub("", after, count=1)
                if body.strip() and not body[0].isspace():
                    return f"{line[at:].strip()} ... {body.strip()}"[:300]
            return line.strip()[:300]
        if ERROR_LINE.search(line):
            return line.strip()[:300]
    return None


def placement_refusal(text: str) -> str | None:
    """The log line saying the NUMA memory policy was refused, if there is one."""
    for line in text.splitlines():
        if PLACEMENT_REFUSED.search(line):
            return line.strip()[:300]
    return None


@dataclass(frozen=True)
class SavedLog:
    """A container's whole log, saved under the state directory."""

    path: Path
    first_error: str | None

    def describe(self) -> str:
        text = f"log saved to {self.path}"
        return text + (f"; first error: {self.first_error}" if self.first_error else "")


def save_container_log(container: Any, profile: str, event: str = "deploy", *, show: bool = True) -> SavedLog:
    """Save the whole log of `container` as <state>/logs/<profile>/<UTC time>-<event>.log.

    For a failed deploy (called here) or a failed smoke (called by the orchestration while the
    container still exists). Prints the path and the first Traceback/error line on stderr (even
    under --json: it is the clue left once the container is gone) unless `show` is False.
    """
    text = full_log(container)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path = state_dir() / "logs" / profile / f"{stamp}-{event}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    saved = SavedLog(path, first_error(text))
    if show:
        line = f"{profile}: {event} failed; {saved.describe()}"
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return saved


def save_profile_log(client: docker.DockerClient, profile: str, event: str = "smoke") -> SavedLog | None:
    """save_container_log for the profile's current container (None when there is none)."""
    try:
        container = find_for_logs(client, profile)
    except BadInput:
        return None
    return save_container_log(container, profile, event)


def remove_container(container: Any) -> None:
    with contextlib.suppress(NotFound):
        try:
            container.remove(force=True)
        except APIError as err:
            if getattr(err, "status_code", None) != 404:
                raise
    remove_key_copy(str(getattr(container, "name", "")))


def _placement_failed(name: str, line: str) -> PlacementRefused:
    return PlacementRefused(
        f"{name}: the NUMA memory binding was refused inside the container ({line})",
        f"the container needs CAP_SYS_NICE where the engine's seccomp profile is Docker's default: "
        f"run it with cap_add {NUMA_CAPABILITY} (gh200 renders it for profiles that bind memory)",
    )


# --- readiness ---------------------------------------------------------------------------------------


def probe_ready(health_url: str, models_url: str, served: str, api_key: str | None) -> tuple[bool, str]:
    """(ready, what is missing): /health answers 200, then /v1/models lists the served model."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        health = httpx.get(health_url, timeout=5, headers=headers)
    except httpx.HTTPError as err:
        return False, f"{health_url}: {type(err).__name__}"
    if health.status_code != 200:
        return False, f"{health_url} answered {health.status_code}"
    try:
        models = httpx.get(models_url, timeout=5, headers=headers)
    except httpx.HTTPError as err:
        return False, f"{models_url}: {type(err).__name__}"
    if models.status_code != 200:
        return False, f"{models_url} answered {models.status_code}"
    try:
        ids = [str(m.get("id")) for m in models.json().get("data", []) if isinstance(m, dict)]
    except (ValueError, AttributeError):
        return False, f"{models_url} gave no model list"
    if served not in ids:
        return False, f"{models_url} lists {', '.join(ids) or 'nothing'}, not {served}"
    return True, "ready"


def wait_ready(
    container: Any,
    name: str,
    labels: dict[str, str],
    api_key: str | None,
    bar: Any,
    *,
    binds_memory: bool = False,
) -> None:
    """Poll until ready, the container exits, or the health timeout passes (DeployFailed).

    With `binds_memory` the log is also watched for a refused NUMA memory policy (PlacementRefused):
    vLLM then serves without --membind and numactl exits, and neither must pass as a deploy.
    """
    timeout = float(labels.get(L_TIMEOUT, "600"))
    task = bar.add_task(f"{name}: starting", total=timeout)
    started = time.monotonic()
    last = "no answer yet"
    delay = 0.25
    checked = float("-inf")
    while True:
        elapsed = time.monotonic() - started
        bar.update(task, completed=min(elapsed, timeout))
        try:
            container.reload()
        except NotFound as err:
            raise DeployFailed(f"{name}: container vanished while starting", "check the engine") from err
        if binds_memory and elapsed - checked >= PLACEMENT_POLL_S:
            checked = elapsed
            refused = placement_refusal(full_log(container))
            if refused:
                raise _placement_failed(name, refused)
        if container.status in ("exited", "dead"):
            code = container.attrs.get("State", {}).get("ExitCode")
            refused = placement_refusal(full_log(container)) if binds_memory else None
            if refused:
                raise _placement_failed(name, refused)
            raise DeployFailed(
                f"{name}: container exited (code {code}) before it was ready",
                "read the saved log named above",
            )
        ok, last = probe_ready(labels[L_HEALTH], labels[L_MODELS], labels[L_SERVED], api_key)
        if ok:
            refused = placement_refusal(full_log(container)) if binds_memory else None
            if refused:
                raise _placement_failed(name, refused)
            bar.update(task, description=f"{name}: ready", completed=timeout)
            return
        bar.update(task, description=f"{name}: waiting ({last[:60]})")
        if elapsed >= timeout:
            raise DeployFailed(
                f"{name}: not ready after {timeout:.0f}s ({last})",
                "read the saved log named above; raise health.timeout_s if the model is merely slow to load",
            )
        time.sleep(min(delay, max(0.05, timeout - elapsed)))
        delay = min(delay * 1.5, 5.0)


# --- the smoke check after start ------------------------------------------------------------------

# Run once each new container is ready; raising rolls the deploy back. The orchestrating callers
# pass one (gh200.orchestrate.smoke_check.short_smoke, rollout's gate): deploy measures nothing.
SmokeCheck = Callable[[Target, str | None], dict[str, Any]]


# --- deploy, roll-out and roll-back ----------------------------------------------------------------


def _identical_running(client: docker.DockerClient, target: Target, api_key: str | None) -> Any | None:
    for container in gh200_containers(client, profile=target.name):
        labels = _labels(container)
        if container.status == "running" and labels.get(L_HASH) == target.hash and L_HEALTH in labels:
            ok, _ = probe_ready(labels[L_HEALTH], labels.get(L_MODELS, ""), labels.get(L_SERVED, ""), api_key)
            if ok:
                return container
    return None


def _describe(container: Any) -> dict[str, Any]:
    labels = _labels(container)
    return {
        "profile": labels.get(L_PROFILE),
        "container": container.name,
        "id": container.short_id,
        "hash": labels.get(L_HASH),
        "image": labels.get(L_IMAGE_TAG),
        "url": labels.get(L_HEALTH, "").rsplit("/", 1)[0] or None,
        "stack": labels.get(L_STACK),
        "argv": launch_argv(container),
    }


def deploy(
    client: docker.DockerClient,
    what: str | Profile | list[Profile],
    *,
    stack: str | None = None,
    progress: bool = True,
    smoke: SmokeCheck | None = None,
    unlocked: bool = False,
    security_opt: list[str] | None = None,
) -> DeployResult:
    """Deploy a profile (or a stack's profiles) with roll-out and roll-back; see the module doc.

    `security_opt` is passed to the engine for every container started (e.g. a seccomp profile).
    """
    if isinstance(what, list):
        profiles = what
    else:
        profiles, stack_name = load_targets(what)
        stack = stack or stack_name
    targets = [Target(p, container_spec(p, stack), stack) for p in profiles]
    keys = {t.name: api_key_for(t.profile) for t in targets}

    kept = {t.name: _identical_running(client, t, keys[t.name]) for t in targets}
    todo = [t for t in targets if kept[t.name] is None]
    if not todo:
        return DeployResult(False, [_describe(kept[t.name]) for t in targets], stack=stack)

    # Everything that can fail without touching the running service happens first.
    images: dict[str, str] = {}
    for target in todo:
        directory = ensure_model(target.profile)
        # Shard patterns become the one file each names: there is no shell in the container.
        target.spec = container_spec(target.profile, stack, model_files_for(target.profile, directory))
        images[target.name] = resolve_image(client, target.profile, progress=progress, unlocked=unlocked)

    kept_ids = {c.id for c in kept.values() if c is not None}
    previous: list[Any] = []
    for container in gh200_containers(client):
        if container.id in kept_ids:
            continue
        labels = _labels(container)
        reasons = [r for t in todo if (r := conflicts(t, labels))]
        if not reasons:
            continue
        same = any(labels.get(L_PROFILE) == t.name and labels.get(L_HASH) == t.hash for t in todo)
        if container.status == "running" and not same:
            previous.append(container)
        elif same:
            # This very version, but not healthy: nothing worth rolling back to, and it holds the name.
            remove_container(container)
        elif labels.get(L_PROFILE) in {t.name for t in todo}:
            remove_container(container)  # a stopped or crashed copy of a profile we are deploying
    held = {(_labels(c).get(L_BIND, ""), _labels(c).get(L_PORT, "")) for c in previous}
    for target in todo:
        p = target.profile
        freed = any(_ports_clash(b, int(port), p.bind_address, p.port) for b, port in held if port.isdigit())
        if not freed and not port_free(p.bind_address, p.port):
            raise PortTaken(
                f"port {p.port} on {p.bind_address} is taken by a process that is not a gh200 container",
                f"stop whatever listens there (ss -ltnp 'sport = :{p.port}') or change the profile's port",
            )

    stopped_names: list[str] = []
    for container in previous:
        if progress:
            console.print(f"stopping {container.name} ({_labels(container).get(L_PROFILE)}) to make way")
        try:
            container.stop(timeout=STOP_TIMEOUT_S)
        except DockerException as err:
            raise DeployFailed(
                f"stopping {container.name} failed: {_engine_error(err)}", "stop it by hand"
            ) from err
        stopped_names.append(container.name)

    started: list[tuple[Target, Any]] = []
    smoke_results: list[dict[str, Any]] = []
    try:
        with progress_bar(progress) as bar:
            for target in todo:
                container = create_container(
                    client, target, images[target.name], keys[target.name], security_opt
                )
                started.append((target, container))
                try:
                    container.start()
                except DockerException as err:
                    raise DeployFailed(
                        f"starting {target.name} failed: {_engine_error(err)}", "see the engine's log"
                    ) from err
            for target, container in started:
                try:
                    wait_ready(
                        container,
                        target.name,
                        _labels(container),
                        keys[target.name],
                        bar,
                        binds_memory=binds_memory(target.profile),
                    )
                except DeployFailed as err:
                    # On stderr even under --json: the whole log is saved below, before removal.
                    print_log_tail(target.name, container)
                    last = [line for line in log_tail(container, 5).splitlines() if line.strip()]
                    if last:
                        err.message += f"; last log line: {last[-1].strip()[:200]}"
                    raise
        if smoke is not None:
            for target, _container in started:
                smoke_results.append(smoke(target, keys[target.name]))
    except (DeployFailed, OperationFailed, BadInput, DockerException, KeyboardInterrupt) as err:
        saved: list[SavedLog] = []
        for target, container in started:
            with contextlib.suppress(OSError):
                saved.append(save_container_log(container, target.name, "deploy"))
            remove_container(container)
        restored = _roll_back(previous, progress)
        if isinstance(err, KeyboardInterrupt):
            raise
        message = err.message if isinstance(err, OperationFailed | BadInput) else _engine_error(err)
        for log in saved:
            message += f"; {log.describe()}"
        if previous:
            message += f"; rolled back: {restored}"
        kind = type(err) if isinstance(err, DeployFailed) else DeployFailed
        raise kind(message, getattr(err, "fix", None) or "read the saved log") from err

    for container in previous:
        remove_container(container)
    described = [_describe(kept[t.name]) for t in targets if kept[t.name] is not None]
    for _target, container in started:
        container.reload()
        described.append(_describe(container))
    return DeployResult(True, described, stopped=stopped_names, stack=stack, smoke=smoke_results)


def _roll_back(previous: list[Any], progress: bool) -> str:
    """Restart what was stopped and check it is healthy again; say how that went."""
    if not previous:
        return "nothing to restore"
    outcomes: list[str] = []
    with progress_bar(progress) as bar:
        for container in previous:
            labels = _labels(container)
            name = labels.get(L_PROFILE, container.name)
            try:
                container.start()
                key_file = labels.get(L_KEY_FILE)
                key = read_api_key(Path(key_file)) if key_file else None
                wait_ready(container, str(name), labels, key, bar)
                outcomes.append(f"{name} restarted and healthy")
            except (DockerException, OperationFailed, BadInput) as err:
                text = err.message if isinstance(err, OperationFailed | BadInput) else _engine_error(err)
                outcomes.append(f"{name} FAILED to come back ({text})")
    return "; ".join(outcomes)


# --- status, logs, stop ------------------------------------------------------------------------------


def status(client: docker.DockerClient, probe: bool = True) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for container in gh200_containers(client):
        labels = _labels(container)
        health = "n/a"
        if container.status == "running" and probe and L_HEALTH in labels:
            key = None
            key_file = labels.get(L_KEY_FILE)
            if key_file:
                with contextlib.suppress(BadInput):
                    key = read_api_key(Path(key_file))
            ok, why = probe_ready(labels[L_HEALTH], labels[L_MODELS], labels.get(L_SERVED, ""), key)
            health = "ready" if ok else f"not ready: {why}"
        current: str | None
        try:
            current = (
                "current"
                if profile_hash(load_profile(labels.get(L_PROFILE, ""))) == labels.get(L_HASH)
                else "stale"
            )
        except (BadInput, OperationFailed):
            current = "unknown profile"
        rows.append(
            {
                **_describe(container),
                "state": container.status,
                "health": health,
                "gpus": labels.get(L_GPUS, ""),
                "port": labels.get(L_PORT),
                "bind": labels.get(L_BIND),
                "model_revision": labels.get(f"{L}.model-revision"),
                "profile_file": current,
                "created": container.attrs.get("Created"),
            }
        )
    return sorted(rows, key=lambda r: (str(r["profile"]), str(r["created"])))


def find_for_logs(client: docker.DockerClient, name: str) -> Any:
    found = gh200_containers(client, profile=name)
    if not found:
        raise BadInput(f"no gh200 container of profile {name!r}", "see `gh200 status` for what runs")
    running = [c for c in found if c.status == "running"]
    pool = running or found
    return sorted(pool, key=lambda c: str(c.attrs.get("Created")))[-1]


def stop(client: docker.DockerClient, name: str | None, everything: bool = False) -> list[str]:
    """Stop and remove a profile's containers, a stack's, or every gh200 container; names removed."""
    if everything:
        found = gh200_containers(client)
    elif name is None:
        raise BadInput("name a profile or stack, or pass --all", "gh200 stop PROFILE | STACK | --all")
    else:
        found = gh200_containers(client, profile=name) + gh200_containers(client, stack=name)
    removed: list[str] = []
    seen: set[str] = set()
    for container in found:
        if container.id in seen:
            continue
        seen.add(container.id)
        with contextlib.suppress(NotFound):
            if container.status == "running":
                container.stop(timeout=STOP_TIMEOUT_S)
        remove_container(container)
        removed.append(container.name)
    return removed


def is_running(client: docker.DockerClient, name: str) -> bool:
    return any(c.status == "running" for c in gh200_containers(client, profile=name))
