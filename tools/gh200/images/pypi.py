"""Source archives (sdists) from PyPI, pinned by version and sha256, cached under cache_dir()/sources.

The host downloads and checks them, then hands them to image builds and the patch check, so that a
build container never needs to reach PyPI (or GitHub) itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from packaging.utils import canonicalize_name

from gh200.errors import BadInput, OperationFailed
from gh200.fsutil import file_lock, sha256_file
from gh200.output import progress as progress_bar
from gh200.paths import cache_dir

PYPI = os.environ.get("GH200_PYPI_URL", "https://pypi.org")


class SourceNotPinned(BadInput):
    """An sdist was asked for by a version that no recipe or series file pins."""


class SourceFetchFailed(OperationFailed):
    """PyPI did not give the sdist, or what it gave does not match the pin."""


@dataclass(frozen=True)
class SdistPin:
    package: str
    version: str
    sha256: str

    @property
    def normalized(self) -> str:
        """PEP 503 name: runs of `-`, `_` and `.` become one `-` (so `Foo__Bar` is `foo-bar`)."""
        return canonicalize_name(self.package)


def sources_dir() -> Path:
    path = cache_dir() / "sources"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sdist_entry(package: str, version: str) -> dict[str, Any]:
    """The PyPI JSON entry of the sdist of package==version."""
    # The project endpoint lists every release; the per-version endpoint is missing on some mirrors.
    url = f"{PYPI}/pypi/{canonicalize_name(package)}/json"
    try:
        answer = httpx.get(url, timeout=60, follow_redirects=True)
    except httpx.HTTPError as err:
        raise SourceFetchFailed(
            f"PyPI did not answer for {package}: {err}", "check network access to PyPI"
        ) from err
    if answer.status_code == 404:
        raise SourceNotPinned(f"PyPI has no project {package!r}", "check the package name")
    if answer.status_code != 200:
        raise SourceFetchFailed(f"PyPI answered {answer.status_code} for {url}", "retry later")
    releases = answer.json().get("releases", {})
    files = releases.get(version)
    if files is None:
        raise BadInput(
            f"PyPI has no {package} version {version}", f"pick one of the published versions of {package}"
        )
    for published in files:
        if published.get("packagetype") == "sdist":
            entry: dict[str, Any] = dict(published)
            # Mirrors answer with URLs relative to the JSON endpoint.
            entry["url"] = urllib.parse.urljoin(url, str(entry["url"]))
            return entry
    raise SourceFetchFailed(
        f"PyPI has no sdist for {package}=={version}", "pin a version that ships an sdist"
    )


def published_sdist_sha256(package: str, version: str) -> str:
    """The sha256 PyPI publishes for package==version's sdist (for a version no file pins yet)."""
    sha = str(_sdist_entry(package, version).get("digests", {}).get("sha256", ""))
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise SourceFetchFailed(
            f"PyPI publishes no sha256 for the {package}=={version} sdist", "check PyPI's JSON API"
        )
    return sha


def fetch_sdist(pin: SdistPin, *, progress: bool = True) -> Path:
    """Download the sdist once into the cache, checking its sha256; return its path."""
    marker = sources_dir() / f"{pin.normalized}-{pin.version}.sha256"
    with file_lock(sources_dir() / f".{pin.normalized}-{pin.version}.lock"):
        if marker.exists():
            fields = marker.read_text().split()
            cached = sources_dir() / fields[-1] if len(fields) == 2 else None
            # Re-hashed on every use: cheap next to a build, and a damaged cache never slips through.
            if cached and cached.exists() and sha256_file(cached) == pin.sha256:
                return cached
        entry = _sdist_entry(pin.package, pin.version)
        filename = str(entry["filename"])
        if "/" in filename or filename.startswith("."):
            raise SourceFetchFailed(f"PyPI gave an odd file name {filename!r}", "report it")
        published = str(entry.get("digests", {}).get("sha256", ""))
        if published and published != pin.sha256:
            raise SourceFetchFailed(
                f"{pin.package}=={pin.version}: PyPI publishes sha256 {published}, the pin says {pin.sha256}",
                "the release was replaced upstream: review it and update the pin deliberately",
            )
        out = sources_dir() / filename
        tmp = out.with_name(f".{filename}.{os.getpid()}.partial")
        try:
            digest = hashlib.sha256()
            with (
                progress_bar(progress, transfer=True) as bar,
                httpx.stream("GET", str(entry["url"]), timeout=120, follow_redirects=True) as stream,
            ):
                if stream.status_code != 200:
                    raise SourceFetchFailed(
                        f"downloading {filename} gave HTTP {stream.status_code}", "retry; check PyPI access"
                    )
                total = int(stream.headers.get("content-length") or entry.get("size") or 0) or None
                task = bar.add_task(f"fetch {filename}", total=total)
                with open(tmp, "wb") as handle:
                    for chunk in stream.iter_bytes(1 << 20):
                        handle.write(chunk)
                        digest.update(chunk)
                        bar.advance(task, len(chunk))
            got = digest.hexdigest()
            if got != pin.sha256:
                raise SourceFetchFailed(
                    f"{filename}: sha256 {got} does not match the pin {pin.sha256}",
                    "the download is corrupt or the release changed: retry, then review the pin",
                )
            os.replace(tmp, out)
            marker.write_text(f"{pin.sha256}  {filename}\n")
        except httpx.HTTPError as err:
            raise SourceFetchFailed(
                f"downloading {filename} failed: {err}", "retry; check PyPI access"
            ) from err
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return out
