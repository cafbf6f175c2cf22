"""The CPU llama.cpp image, built for real from the pinned llama-cpp-python sdist."""

from __future__ import annotations

from typing import Any

import pytest

from gh200.engine import run_output
from gh200.images.build import LABEL, build_image, ensure_image

pytestmark = pytest.mark.engine


def _run(engine: Any, image: str, command: list[str], entrypoint: str | None = None) -> str:
    return run_output(engine, image, command, entrypoint=entrypoint)


@pytest.fixture(scope="module")
def llama_cpp_image(engine: Any, base_image: str) -> str:
    return ensure_image(engine, "llama_cpp", progress=False)


def test_llama_server_runs_in_the_image(engine: Any, llama_cpp_image: str) -> None:
    out = _run(engine, llama_cpp_image, ["--version"])
    assert "version:" in out
    assert "built with" in out


def test_image_carries_pins_and_recipe_hash(engine: Any, llama_cpp_image: str) -> None:
    labels = engine.images.get(llama_cpp_image).labels
    assert labels[f"{LABEL}.recipe"] == "llama_cpp"
    assert labels[f"{LABEL}.upstream.llama-cpp-python"].startswith("0.3.36 sha256:832db069")
    assert llama_cpp_image.endswith(":" + labels[f"{LABEL}.recipe-hash"][:16])


def test_unchanged_recipe_is_not_rebuilt(engine: Any, llama_cpp_image: str) -> None:
    again = build_image(engine, "llama_cpp", progress=False)
    assert again.tag == llama_cpp_image
    assert again.built is False


def test_runs_as_non_root_and_ships_vocab(engine: Any, llama_cpp_image: str) -> None:
    out = _run(
        engine,
        llama_cpp_image,
        ["-c", "id -u; ls /usr/local/share/llama.cpp/vocab"],
        entrypoint="/bin/sh",
    )
    lines = out.split()
    assert lines[0] != "0"
    assert "ggml-vocab-llama-spm.gguf" in lines
