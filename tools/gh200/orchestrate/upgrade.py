"""`gh200 upgrade vllm VERSION`: series check, new image, gated roll-out of every deployed vLLM
profile, a report.

Steps, each only if the one before succeeded:
  1. validate (exit 2 before any side effect): the version, that it is newer than the pinned one,
     that PyPI publishes an sdist for it;
  2. the patch series checked on that sdist (images.patches.check_series: the one classifier);
     a conflicting patch stops here (outcome series_conflict, exit 1);
  3. on a host that cannot build the arm64 image (no arm64 engine: x86 machines, CI) stop here:
     outcome stopped_after_series, exit 0, with the command to run on the workstation;
  4. build the image from a staged recipe with the new pin (images.vllm_pin), bundle untouched;
  5. roll out every deployed vLLM profile (found by container label) through the gate with the new
     image, in name order, stopping at the first regression (rollout restores that profile itself);
  6. only when every roll-out passed: write the pin into the bundle (series.yaml, recipe.yaml,
     Containerfile), so a failed upgrade leaves the bundle as it was.
Every outcome past step 1 writes a report (JSON + markdown) under the state directory.

Every roll-out gates at `min_effect` (`--min-effect`, checked in step 1) when given, else at the
gate's default floor.

Profiles rolled out before a regression keep the new image (each passed its own gate); the report
lists them. Their profile files still name the old base, so a later `gh200 deploy` puts them back
on the pinned image.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from packaging.version import Version

from gh200.baseline.gate import check_min_effect
from gh200.errors import BadInput, Gh200Error
from gh200.fsutil import atomic_write_text
from gh200.images.patches import check_series, parse_vllm_version, resolve_sdist
from gh200.images.vllm_pin import (
    base_ref,
    bundle_home,
    current_vllm_version,
    lock_key,
    promote,
    repinned_files,
    staged_bundle,
)
from gh200.output import console
from gh200.paths import state_dir

Outcome = Literal["upgraded", "rolled_back", "stopped_after_series", "series_conflict", "failed"]
EXIT_CODES: dict[str, int] = {
    "upgraded": 0,
    "stopped_after_series": 0,
    "rolled_back": 3,
    "series_conflict": 1,
    "failed": 1,
}
# Roll-out outcomes after which the next profile is rolled out; any other one stops the upgrade.
ROLLOUT_OK = {"passed", "accepted", "no_baseline"}
REFUSED = {"latest", "stable", "nightly", "main"}


class RolloutLike(Protocol):
    """What upgrade reads of orchestrate.rollout's RolloutResult (fakes in unit tests)."""

    @property
    def outcome(self) -> str: ...

    def as_json(self) -> dict[str, Any]: ...


RolloutFn = Callable[..., RolloutLike]
BuildFn = Callable[[Path], str]  # staged bundle root -> image tag


@dataclass
class UpgradeResult:
    host: str
    component: str
    from_version: str
    to_version: str
    sdist_sha256: str
    series: list[dict[str, str]]
    outcome: Outcome
    image: str | None = None
    rollouts: list[dict[str, Any]] = field(default_factory=list)
    report: str | None = None
    detail: str = ""
    next_command: str | None = None
    upstream: list[dict[str, str]] = field(default_factory=list)
    series_seconds: float = 0.0
    pinned: list[str] = field(default_factory=list)
    min_effect: float | None = None  # the floor the roll-outs gate at; None: the gate's default

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def as_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "component": self.component,
            "from": self.from_version,
            "to": self.to_version,
            "sdist_sha256": self.sdist_sha256,
            "series": self.series,
            "upstream": self.upstream,
            "series_seconds": round(self.series_seconds, 2),
            "image": self.image,
            "outcome": self.outcome,
            "detail": self.detail,
            "next_command": self.next_command,
            "rollouts": self.rollouts,
            "pinned": self.pinned,
            "min_effect": self.min_effect,
            "report": self.report,
        }


def validate(component: str, version: str) -> tuple[str, str]:
    """(current, target) vLLM versions, or BadInput: nothing has been touched yet."""
    if component != "vllm":
        raise BadInput(
            f"cannot upgrade {component!r}", "the upgradable component is vllm: gh200 upgrade vllm VERSION"
        )
    if version.lower() in REFUSED:
        raise BadInput(
            f"vLLM version {version!r} is not a release", "name the release, e.g. gh200 upgrade vllm 0.34.0"
        )
    target = parse_vllm_version(version)
    current = current_vllm_version()
    if Version(target) == Version(current):
        raise BadInput(
            f"vLLM {target} is already the pinned version",
            "rebuild its image: `gh200 images build vllm --force`; re-gate a profile: `gh200 rollout`",
        )
    if Version(target) < Version(current):
        raise BadInput(
            f"vLLM {target} is older than the pinned {current}",
            "to go back, revert the upgrade's change to containers/vllm in git",
        )
    return current, target


def can_build_arm64() -> bool:
    """Whether this host builds the arm64 vLLM image natively (the workstation is aarch64)."""
    return platform.machine().lower() in {"aarch64", "arm64"}


def workstation_command(version: str, accept: bool, unlocked: bool, min_effect: float | None = None) -> str:
    flags = (" --accept" if accept else "") + (" --unlocked" if unlocked else "")
    if min_effect is not None:
        flags += f" --min-effect {min_effect!r}"
    return f"gh200 upgrade vllm {version}{flags}"


def deployed_vllm_profiles(client: Any) -> list[Any]:
    """Profiles of the running vLLM containers (found by label), by name, each once."""
    from gh200.profiles import load_profile
    from gh200.served import L_PROFILE, gh200_containers

    names = {
        str(c.labels.get(L_PROFILE))
        for c in gh200_containers(client, engine="vllm")
        if c.status == "running" and c.labels.get(L_PROFILE)
    }
    return [load_profile(name) for name in sorted(names)]


def check_build_pin(version: str, unlocked: bool) -> None:
    """The new base must be pinned by digest in images.lock unless --unlocked (checked up front)."""
    from gh200.images.lock import find_locked

    locked = find_locked(base_ref(version), lock_key(version))
    if not unlocked and not (locked.state == "locked" and locked.value):
        raise BadInput(
            f"base image {base_ref(version)} has no digest in profiles/images.lock (key {lock_key(version)})",
            "pin it with `gh200 lock` on a host that reaches the registry, or pass --unlocked",
        )


def upgrade(
    component: str,
    version: str,
    *,
    accept: bool = False,
    unlocked: bool = False,
    min_effect: float | None = None,
    progress: bool = True,
    client: Any = None,
    arm64: bool | None = None,
    build: BuildFn | None = None,
    rollout: RolloutFn | None = None,
    profiles: Callable[[], list[Any]] | None = None,
) -> UpgradeResult:
    """Upgrade the vLLM of this host; see the module docstring. The keyword-only hooks (arm64,
    build, rollout, profiles) replace the machine's parts in unit tests."""
    current, target = validate(component, version)
    if min_effect is not None:
        min_effect = check_min_effect(min_effect)
    arm64 = can_build_arm64() if arm64 is None else arm64
    if arm64 and build is None:
        check_build_pin(target, unlocked)
    sha256, pinned = resolve_sdist(target, None)
    if progress:
        note = (
            "pinned in series.yaml" if pinned else "from PyPI's index, recorded only if the upgrade succeeds"
        )
        console.print(f"vLLM {target} sdist sha256 {sha256} ({note})")
    started = time.monotonic()
    report = check_series(target, sha256=sha256, progress=progress, runtime=False)
    result = UpgradeResult(
        host=platform.node(),
        component="vllm",
        from_version=current,
        to_version=target,
        sdist_sha256=sha256,
        series=report["classification"],
        outcome="failed",
        series_seconds=time.monotonic() - started,
        min_effect=min_effect,
        upstream=[
            {"patch": row["id"], "status": row["result"], "detail": str(row.get("detail", ""))}
            for row in report["patches"]
            if row["status"] == "upstream"
        ],
    )
    try:
        _after_series(
            result,
            accept=accept,
            unlocked=unlocked,
            progress=progress,
            client=client,
            arm64=arm64,
            build=build,
            rollout=rollout,
            profiles=profiles,
        )
    except Gh200Error as err:
        # Past the series check nothing is bad input any more: the report says what failed.
        result.outcome, result.detail = "failed", err.one_line()
    write_report(result)
    return result


def _after_series(
    result: UpgradeResult,
    *,
    accept: bool,
    unlocked: bool,
    progress: bool,
    client: Any,
    arm64: bool,
    build: BuildFn | None,
    rollout: RolloutFn | None,
    profiles: Callable[[], list[Any]] | None,
) -> None:
    target = result.to_version
    conflicts = [row for row in result.series if row["status"] == "conflicts"]
    missing = [row for row in result.upstream if row["status"] != "upstream"]
    if conflicts or missing:
        result.outcome = "series_conflict"
        parts = [
            f"patch {row['patch']} conflicts with vLLM {target} ({row['detail']}): refresh it against "
            f"vLLM {target}'s source, or drop it if upstream fixed the problem another way"
            for row in conflicts
        ] + [
            f"upstream fix {row['patch']} is missing in vLLM {target} ({row['detail']}): carry it as a patch"
            for row in missing
        ]
        result.detail = "; ".join(parts) + f"; then `gh200 patches check --vllm {target}`"
        return
    if not arm64:
        result.outcome = "stopped_after_series"
        result.next_command = workstation_command(target, accept, unlocked, result.min_effect)
        result.detail = (
            f"this host ({platform.machine()}) cannot build the arm64 vLLM image: run "
            f"`{result.next_command}` on the workstation"
        )
        return
    listed = {row["patch"] for row in result.series} | {row["patch"] for row in result.upstream}
    files = repinned_files(target, result.sdist_sha256, listed)
    if client is None and (build is None or rollout is None or profiles is None):
        from gh200.engine import connect

        client = connect()
    # What runs now is what gets rolled out: listed before the build, not after the first roll-out.
    deployed = (profiles or (lambda: deployed_vllm_profiles(client)))()
    with staged_bundle(files) as stage:
        result.image = (build or _builder(client, unlocked, progress))(stage)
    from gh200.orchestrate.rollout import rollout as gated_rollout

    run: RolloutFn = rollout or gated_rollout
    for profile in deployed:
        done = run(
            profile,
            image=result.image,
            accept=accept,
            min_effect=result.min_effect,
            client=client,
            progress=progress,
        )
        result.rollouts.append(done.as_json())
        if done.outcome not in ROLLOUT_OK:
            result.outcome = "rolled_back" if done.outcome == "rolled_back" else "failed"
            said = str(done.as_json().get("message") or "")
            result.detail = (
                f"profile {profile.name}: roll-out {done.outcome}"
                + (f" ({said})" if said else "")
                + f"; vLLM {result.from_version} stays pinned"
            )
            return
    result.pinned = promote(files)
    result.outcome = "upgraded"
    result.detail = f"{len(result.rollouts)} vLLM profile(s) rolled out; vLLM {target} pinned"


def _builder(client: Any, unlocked: bool, progress: bool) -> BuildFn:
    def build(stage: Path) -> str:
        from gh200.images.build import build_image
        from gh200.images.vllm_venv import image_runtime_smoke

        with bundle_home(stage):
            built = build_image(client, "vllm", platform="linux/arm64", unlocked=unlocked, progress=progress)
        smoke = image_runtime_smoke(client, built.tag)
        if smoke["state"] == "failed":
            from gh200.errors import OperationFailed

            raise OperationFailed(
                f"the runtime smoke test failed in {built.tag}: {' | '.join(smoke.get('lines', []))}",
                "see `gh200 images build vllm` on the staged recipe",
            )
        return built.tag

    return build


def write_report(result: UpgradeResult) -> None:
    """<state>/upgrades/<UTC time>-vllm-<from>-to-<to>.{json,md}, each written atomically."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    stem = f"{stamp}-vllm-{result.from_version}-to-{result.to_version}"
    directory = state_dir() / "upgrades"
    result.report = str(directory / f"{stem}.json")
    atomic_write_text(directory / f"{stem}.md", markdown(result))
    atomic_write_text(
        directory / f"{stem}.json", json.dumps(result.as_json(), indent=2, sort_keys=True) + "\n"
    )


def markdown(result: UpgradeResult) -> str:
    lines = [
        f"# vLLM upgrade {result.from_version} -> {result.to_version} on {result.host}",
        "",
        f"Outcome: **{result.outcome}**. {result.detail}",
        "",
        f"sdist sha256: `{result.sdist_sha256}`; series checked in {result.series_seconds:.1f} s.",
        "",
        "| patch | status | detail |",
        "|---|---|---|",
    ]
    for row in [*result.series, *result.upstream]:
        detail = row["detail"].replace("|", "\\|")
        lines.append(f"| {row['patch']} | {row['status']} | {detail} |")
    if result.image:
        lines += ["", f"Image: `{result.image}`"]
    if result.rollouts:
        lines += ["", "| profile | roll-out outcome |", "|---|---|"]
        for done in result.rollouts:
            lines.append(f"| {done.get('profile', '?')} | {done.get('outcome', '?')} |")
    if result.next_command:
        lines += ["", f"Next, on the workstation: `{result.next_command}`"]
    if result.pinned:
        lines += ["", "Pinned in: " + ", ".join(f"`{p}`" for p in result.pinned)]
    return "\n".join(lines) + "\n"
