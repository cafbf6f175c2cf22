"""The vLLM patch series (containers/vllm/patches/series.yaml) checked against real vLLM source.

`check_series("0.33.0")` downloads the vLLM sdist from PyPI (cached, sha256 checked), unpacks its
`vllm/` package once, hard-links it into a scratch tree, and runs containers/vllm/apply_patches.py
(the very script the image build runs) against it: per patch, applies / already upstream / conflicts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gh200.errors import BadInput, OperationFailed
from gh200.fsutil import atomic_dir, file_lock
from gh200.images.pypi import SdistPin, fetch_sdist, published_sdist_sha256
from gh200.paths import cache_dir, containers_dir

SHA256 = r"^[0-9a-f]{64}$"
# What the series check calls each carried patch (one classification for `patches check` and
# `upgrade`): the apply script's result for a carried entry, renamed.
SERIES_STATUS = {"applies": "applies", "already-applied": "absorbed", "conflict": "conflicts"}


class PatchCheckFailed(OperationFailed):
    """The apply script could not run (not: a patch conflicts - that is a report, exit 1)."""


class PatchEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    file: str | None
    purpose: str
    vllm: list[str]
    status: Literal["carried", "upstream"]
    upstream: str
    touches: list[str] = Field(default_factory=list)
    smoke_imports: list[str] = Field(default_factory=list)
    smoke_symbols: list[str] = Field(default_factory=list)
    file_upstream: str | None = None
    function: str | None = None
    evidence: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _shape(self) -> PatchEntry:
        if self.status == "carried" and not self.file:
            raise ValueError(f"carried patch {self.id} needs a file")
        if self.status == "upstream" and (self.file or not self.file_upstream or not self.evidence):
            raise ValueError(f"upstream entry {self.id} needs file: null, file_upstream and evidence")
        return self


class Series(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vllm_sdists: dict[str, str]
    patches: list[PatchEntry]

    @model_validator(mode="after")
    def _unique(self) -> Series:
        ids = [p.id for p in self.patches]
        if len(ids) != len(set(ids)):
            raise ValueError("patch ids must be unique")
        for version, sha in self.vllm_sdists.items():
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise ValueError(f"vllm_sdists[{version}] is not a sha256")
        return self


def vllm_recipe_dir() -> Path:
    return containers_dir() / "vllm"


def series_path() -> Path:
    return vllm_recipe_dir() / "patches" / "series.yaml"


def apply_script() -> Path:
    return vllm_recipe_dir() / "apply_patches.py"


def load_series(path: Path | None = None) -> Series:
    path = path or series_path()
    if not path.exists():
        raise BadInput(f"{path} is missing", "restore containers/vllm/patches/series.yaml")
    try:
        series = Series.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as err:
        lines = str(err).strip().splitlines()
        raise BadInput(f"{path} is not a valid series: {' '.join(lines[:3])}", "fix the series file") from err
    for entry in series.patches:
        if entry.file and not (path.parent / entry.file).exists():
            raise BadInput(
                f"series entry {entry.id} names {entry.file}, which is missing", "restore the patch"
            )
    return series


def pristine_source(version: str, sha256: str, *, progress: bool = False) -> Path:
    """The unpacked `vllm/` package of the sdist (cached per version and sha256); the returned
    directory holds `vllm/`. Treat it as read-only: scratch trees hard-link into it."""
    out = cache_dir() / "vllm-src" / f"{version}-{sha256[:16]}"
    if (out / "vllm" / "__init__.py").exists():
        return out
    sdist = fetch_sdist(SdistPin("vllm", version, sha256), progress=progress)
    with file_lock(out.parent / f".{out.name}.lock"):
        if (out / "vllm" / "__init__.py").exists():
            return out
        with atomic_dir(out) as tmp, tarfile.open(sdist, "r:gz") as tar:
            members = []
            for member in tar.getmembers():
                parts = Path(member.name).parts
                # <top>/vllm/...: only the Python package (the patches' -p1 paths start at vllm/).
                if len(parts) >= 2 and parts[1] == "vllm" and (member.isfile() or member.isdir()):
                    member.name = str(Path(*parts[1:]))
                    members.append(member)
            if not members:
                raise PatchCheckFailed(f"{sdist.name} has no vllm/ package", "check the pinned sdist")
            tar.extractall(tmp, members=members, filter="data")
    return out


@contextlib.contextmanager
def scratch_tree(version: str, sha256: str, *, progress: bool = False) -> Iterator[Path]:
    """A throw-away copy of the pristine tree (hard links; the apply script replaces files by rename)."""
    pristine = pristine_source(version, sha256, progress=progress)
    root = Path(tempfile.mkdtemp(prefix=f"vllm-{version}-", dir=cache_dir() / "vllm-src"))
    try:
        shutil.copytree(pristine / "vllm", root / "vllm", copy_function=os.link)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_apply_script(
    root: Path, *, version: str, check_only: bool, series: Path | None = None, every: bool = True
) -> tuple[int, dict[str, Any], str]:
    """Run containers/vllm/apply_patches.py on root; (exit code, JSON report, stderr).

    every: try each entry whether or not the series lists it for `version` (the check's question is
    where the series stands on that vLLM; image builds use the listing instead)."""
    argv = [sys.executable, str(apply_script()), "--root", str(root), "--vllm-version", version, "--json"]
    argv += ["--series", str(series or series_path())]
    if check_only:
        argv.append("--check")
    if every:
        argv.append("--every")
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=600)
    if done.returncode not in (0, 1):
        tail = " ".join(done.stderr.strip().splitlines()[-2:])
        raise PatchCheckFailed(f"apply_patches.py failed: {tail}", "fix the series file or patches")
    return done.returncode, json.loads(done.stdout), done.stderr


def resolve_pin(version: str, sha256: str | None) -> str:
    series = load_series()
    pinned = series.vllm_sdists.get(version)
    if sha256 is not None:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise BadInput(f"--sha256 {sha256!r} is not a sha256 hex digest", "pass 64 lowercase hex digits")
        if pinned and pinned != sha256:
            raise BadInput(
                f"--sha256 disagrees with the pin for vLLM {version} in {series_path()}",
                "drop --sha256, or update the pin deliberately",
            )
        return sha256
    if pinned is None:
        known = ", ".join(sorted(series.vllm_sdists)) or "none"
        raise BadInput(
            f"vLLM {version} is not pinned in {series_path()} (pinned: {known})",
            f"add its sdist sha256 under vllm_sdists, or pass --sha256 for a one-off check of {version}",
        )
    return pinned


def parse_vllm_version(text: str) -> str:
    """A vLLM release version as PyPI spells it (PEP 440, canonical, no local part), or BadInput."""
    try:
        parsed = Version(text)
    except InvalidVersion:
        raise BadInput(
            f"vLLM version {text!r} is not a PEP 440 version", "name a release, e.g. 0.34.0"
        ) from None
    if parsed.local is not None:
        raise BadInput(
            f"vLLM version {text!r} has a local part (+{parsed.local}); PyPI publishes none",
            f"name the release itself, e.g. {parsed.public}",
        )
    if str(parsed) != text:
        raise BadInput(f"vLLM version {text!r} is not in canonical form", f"write {parsed}")
    return text


def resolve_sdist(version: str, sha256: str | None) -> tuple[str, bool]:
    """(sha256 of vLLM `version`'s sdist, whether the series pins it). A version no file pins and
    no --sha256 names takes the sha256 PyPI publishes (the caller prints it for review)."""
    if sha256 is None and version not in load_series().vllm_sdists:
        return published_sdist_sha256("vllm", version), False
    pin = resolve_pin(version, sha256)
    return pin, load_series().vllm_sdists.get(version) == pin


def classify(report: dict[str, Any]) -> list[dict[str, str]]:
    """Per carried patch: applies | absorbed | conflicts, with the apply script's detail (a
    conflict names the file and the hunk). Needs a report of an `every` run that wrote each
    applying patch before trying the next, as check_series makes."""
    rows = []
    for row in report["patches"]:
        if row["status"] != "carried":
            continue
        status = SERIES_STATUS.get(row["result"])
        if status is None:
            raise PatchCheckFailed(
                f"patch {row['id']}: unexpected apply result {row['result']!r}", "run the check with --every"
            )
        rows.append({"patch": row["id"], "status": status, "detail": str(row.get("detail", ""))})
    return rows


def check_tree(root: Path, version: str, *, series: Path | None = None) -> dict[str, Any]:
    """The series checked on the vLLM tree under root (which it edits: pass a scratch copy). Every
    entry is tried in series order, each applying patch written before the next is tried, as the
    image build applies them; `classification` holds classify()'s rows."""
    code, report, _ = run_apply_script(root, version=version, check_only=False, series=series)
    report["classification"] = classify(report)
    report["series"] = str(series or series_path())
    report["changed"] = False
    report["ok"] = code == 0 and bool(report.get("ok"))
    return report


def check_series(
    version: str, *, sha256: str | None = None, progress: bool = False, runtime: bool = True
) -> dict[str, Any]:
    """Apply the series for real in a scratch tree of vLLM `version`; the apply script's report.

    Patches are tried in series order, each on the tree with the earlier applying ones written (as
    the image build applies them). `classification` holds classify()'s rows; `sdist_pinned` says
    whether the sha256 came from series.yaml (else from --sha256 or PyPI's index).

    runtime: also say, per carried patch, whether its runtime test passed on the cached vLLM wheel
    (tests/vllm's check, one run); a failed runtime test fails the check, a wheel not cached yet
    is reported as such."""
    version = parse_vllm_version(version)
    pin, pinned = resolve_sdist(version, sha256)
    with scratch_tree(version, pin, progress=progress) as root:
        report = check_tree(root, version)
    report["sdist_pinned"] = pinned
    report["sdist_sha256"] = pin
    report.pop("root", None)  # the scratch tree is gone
    if runtime:
        _add_runtime(report, version)
    return report


def _add_runtime(report: dict[str, Any], version: str) -> None:
    from gh200.images import vllm_venv

    carried = [row for row in report["patches"] if row["status"] == "carried"]
    if version != vllm_venv.VLLM_VERSION:
        outcome: dict[str, Any] = {
            "state": "no-wheel",
            "detail": f"runtime tests pin the vLLM {vllm_venv.VLLM_VERSION} wheel, not {version}",
        }
    elif not report["ok"]:
        outcome = {"state": "skipped", "detail": "the series does not apply"}
    else:
        outcome = vllm_venv.runtime_check(series_path())
    report["runtime"] = {k: v for k, v in outcome.items() if k != "patches"}
    for row in carried:
        found = (outcome.get("patches") or {}).get(row["id"])
        if found is None:
            row["runtime"] = outcome["state"] if outcome["state"] != "ran" else "no runtime test"
            row["runtime_detail"] = outcome.get("detail", "")
            continue
        row["runtime"] = "passed" if found["passed"] else "failed"
        row["runtime_detail"] = found["detail"]
        if not found["passed"]:
            report["ok"] = False


def patched_tree(version: str, dest: Path, *, sha256: str | None = None) -> dict[str, Any]:
    """Write vLLM `version`'s `vllm/` package with the series applied to dest (for tests and review)."""
    pin = resolve_pin(version, sha256)
    pristine = pristine_source(version, pin)
    if dest.exists():
        raise BadInput(f"{dest} already exists", "pick a new directory")
    with atomic_dir(dest) as tmp:
        shutil.copytree(pristine / "vllm", tmp / "vllm", copy_function=os.link)
        code, report, stderr = run_apply_script(tmp, version=version, check_only=False, every=False)
        if code != 0:
            raise PatchCheckFailed(
                f"the series does not apply to vLLM {version}: {stderr.strip()}", "see the check"
            )
    return report
