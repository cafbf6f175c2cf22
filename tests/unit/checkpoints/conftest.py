"""Fixtures: tiny GLM-5-layout checkpoints (written once per session), a local hub, an isolated env."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ckpt_hubserver import HubServer

from gh200.checkpoints import testdata


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caches, the model store and the HF home under tmp; no ambient token or endpoint leaks in."""
    monkeypatch.setenv("GH200_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GH200_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for var in ("HF_TOKEN", "GH200_HF_TOKEN_FILE", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pristine inputs, written once. Tests that change inputs copy them first (see `copy_tree`)."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "base": testdata.write_awq_base(root / "base"),
        "base_stub": testdata.write_awq_base(root / "base_stub", mtp_stub=True),
        "fp8": testdata.write_fp8_artifact(root / "fp8"),
        "delta": testdata.write_mtp_delta(root / "delta"),
        "delta_noconfig": testdata.write_mtp_delta(root / "delta_noconfig", with_config=False),
    }


@pytest.fixture
def hub_server() -> Iterator[HubServer]:
    server = HubServer().start()
    try:
        yield server
    finally:
        server.stop()
