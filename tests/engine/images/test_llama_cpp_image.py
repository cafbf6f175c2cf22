"""The CPU llama.cpp image, built for real from the pinned llama-cpp-python sdist."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest

from gh200.engine import run_output
from gh200.images.build import LABEL, build_image, ensure_image
from gh200.paths import containers_dir
from gh200.profiles.flags import flag_names, rendered_server_args

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


# --- llama.cpp flags, checked against the real llama-server and not against our golden renders ---

CHECK_SCRIPT = "check-server-args.sh"
HELP_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def _not_in_help(args: list[str], help_text: str) -> list[str]:
    listed = set(HELP_FLAG.findall(help_text))
    return [flag for flag in flag_names(args) if flag not in listed]


def _check_in_image(engine: Any, image: str, lines: list[str]) -> tuple[int, str]:
    """containers/ik_llama/check-server-args.sh (the ik_llama build's check) run on this image's
    llama-server: each line parsed with --help appended must behave exactly like a bare --help."""
    script = (containers_dir() / "ik_llama" / CHECK_SCRIPT).read_text()
    # The image's LLAMA_ARG_HOST/PORT defaults make llama-server warn when --host/--port override
    # them; the ik_llama build stage, where the script runs on the workstation, sets neither.
    shell = (
        "unset LLAMA_ARG_HOST LLAMA_ARG_PORT; "
        'printf "%s\\n" "$2" | sh -c "$1" check /usr/local/bin/llama-server; echo "rc=$?"'
    )
    out = run_output(engine, image, ["-c", shell, "sh", script, "\n".join(lines)], entrypoint="/bin/sh")
    code = re.findall(r"^rc=(\d+)$", out, flags=re.MULTILINE)
    assert code, out
    return int(code[-1]), out


@pytest.fixture(scope="module")
def server_help(engine: Any, llama_cpp_image: str) -> str:
    return _run(engine, llama_cpp_image, ["--help"])


@pytest.fixture(scope="module")
def rendered() -> list[list[str]]:
    args = rendered_server_args("llama_cpp")
    assert args, "no llama_cpp profile renders"
    return args


def test_every_rendered_flag_is_in_llama_server_help(server_help: str, rendered: list[list[str]]) -> None:
    for args in rendered:
        assert _not_in_help(args, server_help) == [], shlex.join(args)


def test_every_rendered_argument_list_is_taken_by_llama_server(
    engine: Any, llama_cpp_image: str, rendered: list[list[str]]
) -> None:
    code, out = _check_in_image(engine, llama_cpp_image, [shlex.join(args) for args in rendered])
    assert code == 0, out
    assert out.count("llama-server takes:") == len(rendered)


def test_a_flag_typo_in_a_render_fails_both_checks(
    engine: Any, llama_cpp_image: str, server_help: str, rendered: list[list[str]]
) -> None:
    """What a regenerated golden file would no longer catch: --metrics misspelt, a value misspelt."""
    typo = ["--metrcs" if arg == "--metrics" else arg for arg in rendered[0]]
    assert typo != rendered[0]
    assert _not_in_help(typo, server_help) == ["--metrcs"]
    bad_value = [*rendered[0], "-fa", "onn"]
    assert _not_in_help(bad_value, server_help) == []  # the flag is real; only the parser sees the value
    code, out = _check_in_image(engine, llama_cpp_image, [shlex.join(typo), shlex.join(bad_value)])
    assert code == 1
    assert out.count("error: llama-server refuses:") == 2, out
    assert "--metrcs" in out
