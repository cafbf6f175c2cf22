"""PyPI sdists (pinned, verified, cached, never half-written) and the series file's validation."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gh200.errors import BadInput
from gh200.images import build, pypi
from gh200.images.build import sdist_path
from gh200.images.patches import load_series, resolve_pin
from gh200.images.pypi import SdistPin, SourceFetchFailed, SourceNotPinned, fetch_sdist

PAYLOAD = b"an sdist's bytes" * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Stream:
    def __init__(self, body: bytes, status: int = 200) -> None:
        self.body = body
        self.status_code = status
        self.headers = {"content-length": str(len(body))}

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def iter_bytes(self, size: int) -> Iterator[bytes]:
        for i in range(0, len(self.body), size):
            yield self.body[i : i + size]


@pytest.fixture
def pypi_fake(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """PyPI's JSON API and file host, answering from memory (counts the downloads)."""
    state: dict[str, Any] = {"body": PAYLOAD, "published": SHA, "downloads": 0}

    def get(url: str, **_: Any) -> httpx.Response:
        state.setdefault("asked", []).append(url)
        files = [
            {
                "packagetype": "bdist_wheel",
                "filename": "demo-1.0-py3-none-any.whl",
                "url": "../../w",
                "digests": {},
            },
            {
                "packagetype": "sdist",
                "filename": "demo-1.0.tar.gz",
                "url": "../../packages/demo-1.0.tar.gz",
                "size": len(state["body"]),
                "digests": {"sha256": state["published"]},
            },
        ]
        return httpx.Response(200, json={"releases": {"1.0": files}}, request=httpx.Request("GET", url))

    def stream(method: str, url: str, **_: Any) -> _Stream:
        assert url == "https://pypi.org/packages/demo-1.0.tar.gz"  # relative URLs resolved
        state["downloads"] += 1
        return _Stream(state["body"])

    monkeypatch.setattr(pypi.httpx, "get", get)
    monkeypatch.setattr(pypi.httpx, "stream", stream)
    monkeypatch.setattr(pypi, "PYPI", "https://pypi.org")
    return state


def test_downloads_once_and_verifies(bundle: Path, pypi_fake: dict[str, Any]) -> None:
    path = fetch_sdist(SdistPin("demo", "1.0", SHA), progress=False)
    assert path.read_bytes() == PAYLOAD and path.name == "demo-1.0.tar.gz"
    assert fetch_sdist(SdistPin("demo", "1.0", SHA), progress=False) == path
    assert pypi_fake["downloads"] == 1


def test_corrupt_cache_is_fetched_again(bundle: Path, pypi_fake: dict[str, Any]) -> None:
    path = fetch_sdist(SdistPin("demo", "1.0", SHA), progress=False)
    path.write_bytes(b"damaged")
    assert fetch_sdist(SdistPin("demo", "1.0", SHA), progress=False).read_bytes() == PAYLOAD
    assert pypi_fake["downloads"] == 2


def test_bytes_not_matching_the_pin_leave_nothing(bundle: Path, pypi_fake: dict[str, Any]) -> None:
    pypi_fake["body"] = b"tampered"
    pypi_fake["published"] = ""
    with pytest.raises(SourceFetchFailed, match="does not match the pin"):
        fetch_sdist(SdistPin("demo", "1.0", SHA), progress=False)
    leftovers = [p.name for p in pypi.sources_dir().iterdir() if not p.name.startswith(".demo-1.0.lock")]
    assert leftovers == []


def test_published_digest_differing_from_pin_is_refused(bundle: Path, pypi_fake: dict[str, Any]) -> None:
    pypi_fake["published"] = "0" * 64
    with pytest.raises(SourceFetchFailed, match="PyPI publishes sha256"):
        fetch_sdist(SdistPin("demo", "1.0", SHA), progress=False)
    assert pypi_fake["downloads"] == 0


def test_unknown_version_is_bad_input(bundle: Path, pypi_fake: dict[str, Any]) -> None:
    with pytest.raises(BadInput, match=r"PyPI has no demo version 9\.9"):
        fetch_sdist(SdistPin("demo", "9.9", SHA), progress=False)


@pytest.mark.parametrize(
    ("spelling", "project"), [("demo", "demo"), ("DEMO", "demo"), ("Foo__Bar", "foo-bar"), ("a._-b", "a-b")]
)
def test_the_project_is_asked_for_by_its_pep503_name(
    bundle: Path, pypi_fake: dict[str, Any], spelling: str, project: str
) -> None:
    """PEP 503: lower case, and each run of `-`, `_`, `.` is one `-`."""
    fetch_sdist(SdistPin(spelling, "1.0", SHA), progress=False)
    assert pypi_fake["asked"] == [f"https://pypi.org/pypi/{project}/json"]


def test_a_pin_is_found_under_any_spelling_of_its_name(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """llama-cpp-python 0.3.36 is pinned by the llama_cpp recipe, whatever the caller's spelling."""
    asked: list[SdistPin] = []
    monkeypatch.setattr(build, "fetch_sdist", lambda pin, **_: asked.append(pin) or Path("x"))
    sdist_path("Llama__CPP.python", "0.3.36")
    assert [(p.normalized, p.version) for p in asked] == [("llama-cpp-python", "0.3.36")]


def test_sdist_path_needs_a_pin(bundle: Path) -> None:
    with pytest.raises(SourceNotPinned, match=r"llama-cpp-python==0\.0\.1 is not pinned"):
        sdist_path("llama-cpp-python", "0.0.1")


def test_the_series_file_is_valid_and_pins_vllm(bundle: Path) -> None:
    series = load_series()
    assert set(series.vllm_sdists) == {"0.33.0"}
    statuses = {p.id: p.status for p in series.patches}
    assert statuses == {
        "glm52-mtp-quant": "carried",
        "dsv4-draft-hf-config-path": "carried",
        "dsv4-mtp-wo-a-bf16-fallback": "upstream",
        "dsv4-mtp-eh-proj-prefix": "upstream",
    }
    assert resolve_pin("0.33.0", None) == series.vllm_sdists["0.33.0"]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (("status: carried\n", "status: maybe\n"), "not a valid series"),
        (("file: 0001-glm52-mtp-quantization.patch", "file: 0009-missing.patch"), "0009-missing.patch"),
        (("file_upstream: vllm/models/deepseek_v4/nvidia/mtp.py", "file_upstream: null"), "not a valid"),
    ],
)
def test_series_validation(bundle: Path, edit: tuple[str, str], match: str) -> None:
    path = bundle / "containers" / "vllm" / "patches" / "series.yaml"
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(BadInput, match=match):
        load_series()


def test_pin_resolution_errors(bundle: Path) -> None:
    with pytest.raises(BadInput, match=r"vLLM 0\.32\.0 is not pinned"):
        resolve_pin("0.32.0", None)
    with pytest.raises(BadInput, match="not a sha256"):
        resolve_pin("0.32.0", "xyz")
    with pytest.raises(BadInput, match="disagrees with the pin"):
        resolve_pin("0.33.0", "0" * 64)
    assert resolve_pin("0.32.0", "a" * 64) == "a" * 64
