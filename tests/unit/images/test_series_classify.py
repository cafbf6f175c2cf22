"""The series check's pieces that need no vLLM source: version parsing, where an unpinned version's
sdist sha256 comes from, and the mapping of apply results to applies | absorbed | conflicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from gh200.errors import BadInput
from gh200.images import patches, pypi
from gh200.images.patches import PatchCheckFailed, classify, parse_vllm_version, resolve_sdist
from gh200.images.pypi import SourceFetchFailed, published_sdist_sha256

PIN_0330 = "f4c33c2503d52bb411146afa9618a4f48bed68912f617e6803ac8d76e4c74112"


@pytest.mark.parametrize("good", ["0.34.0", "0.34.0rc1", "1.0.0.post1", "0.35.0.dev3"])
def test_release_versions_parse(good: str) -> None:
    assert parse_vllm_version(good) == good


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("latest", "not a PEP 440"),
        ("0.34.0+cu130", "local part"),
        ("v0.34.0", "not in canonical form"),
        ("0.34.0-rc1", "not in canonical form"),
        ("", "not a PEP 440"),
    ],
)
def test_other_spellings_are_bad_input(bad: str, match: str) -> None:
    with pytest.raises(BadInput, match=match):
        parse_vllm_version(bad)


def test_the_fix_names_the_canonical_spelling() -> None:
    with pytest.raises(BadInput) as err:
        parse_vllm_version("0.34.0-rc1")
    assert err.value.fix == "write 0.34.0rc1"


def test_a_pinned_version_uses_the_pin_and_never_asks_pypi(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(patches, "published_sdist_sha256", lambda *a: pytest.fail("asked PyPI"))
    assert resolve_sdist("0.33.0", None) == (PIN_0330, True)
    with pytest.raises(BadInput, match="disagrees with the pin"):
        resolve_sdist("0.33.0", "0" * 64)


def test_an_unpinned_version_takes_pypis_sha256_unless_one_is_given(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(patches, "published_sdist_sha256", lambda p, v: asked.append((p, v)) or "e" * 64)
    assert resolve_sdist("0.34.0", None) == ("e" * 64, False)
    assert asked == [("vllm", "0.34.0")]
    assert resolve_sdist("0.34.0", "d" * 64) == ("d" * 64, False)
    assert asked == [("vllm", "0.34.0")]


def _pypi(monkeypatch: pytest.MonkeyPatch, digests: dict[str, str]) -> None:
    def get(url: str, **_: Any) -> httpx.Response:
        files = [{"packagetype": "sdist", "filename": "vllm-0.34.0.tar.gz", "url": "x", "digests": digests}]
        return httpx.Response(200, json={"releases": {"0.34.0": files}}, request=httpx.Request("GET", url))

    monkeypatch.setattr(pypi.httpx, "get", get)


def test_published_sha256_is_read_from_pypis_index(monkeypatch: pytest.MonkeyPatch) -> None:
    _pypi(monkeypatch, {"sha256": "a" * 64})
    assert published_sdist_sha256("vllm", "0.34.0") == "a" * 64
    with pytest.raises(BadInput, match=r"PyPI has no vllm version 0\.35\.0"):
        published_sdist_sha256("vllm", "0.35.0")


@pytest.mark.parametrize("digests", [{}, {"sha256": "XYZ"}, {"md5": "a" * 32}])
def test_a_missing_or_malformed_published_sha256_fails(
    monkeypatch: pytest.MonkeyPatch, digests: dict[str, str]
) -> None:
    _pypi(monkeypatch, digests)
    with pytest.raises(SourceFetchFailed, match="publishes no sha256"):
        published_sdist_sha256("vllm", "0.34.0")


def test_classify_maps_carried_results_and_leaves_upstream_entries_out() -> None:
    report = {
        "patches": [
            {"id": "a", "status": "carried", "result": "applies", "detail": "x.py (2 hunks)"},
            {"id": "b", "status": "carried", "result": "already-applied", "detail": "present"},
            {"id": "c", "status": "carried", "result": "conflict", "detail": "y.py: hunk 3 ..."},
            {"id": "u", "status": "upstream", "result": "upstream", "detail": "z.py:f"},
        ]
    }
    assert classify(report) == [
        {"patch": "a", "status": "applies", "detail": "x.py (2 hunks)"},
        {"patch": "b", "status": "absorbed", "detail": "present"},
        {"patch": "c", "status": "conflicts", "detail": "y.py: hunk 3 ..."},
    ]
    # A carried entry skipped as not-for-version is no classification (the check tries every entry).
    with pytest.raises(PatchCheckFailed, match="unexpected apply result 'not-for-version'"):
        classify({"patches": [{"id": "a", "status": "carried", "result": "not-for-version"}]})
