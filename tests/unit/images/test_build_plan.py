"""Recipe hashing, base pinning and labels: what gh200.images decides before the engine builds."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gh200.errors import BadInput, LockError
from gh200.images.build import LABEL, plan_build
from gh200.images.lock import check_images_lock
from gh200.images.recipe import load_recipe, recipe_names
from gh200.profiles import load_profile
from gh200.profiles.flags import rendered_server_args
from gh200.profiles.locks import image_pin, strip_tag

DIGEST = "sha256:" + "d" * 64
KEY = "vllm-openai-0.33.0-aarch64"


def _lock(bundle: Path, text: str) -> None:
    (bundle / "profiles" / "images.lock").write_text(text)


def test_the_bundle_has_three_recipes(bundle: Path) -> None:
    assert recipe_names() == ["ik_llama", "llama_cpp", "vllm"]
    assert load_recipe("vllm").base.lock_key == "vllm-openai-0.33.0-aarch64"


def test_unchanged_recipe_same_tag_and_edits_change_it(bundle: Path, fake_client: Any) -> None:
    first = plan_build(fake_client, "llama_cpp")
    assert first.tag == plan_build(fake_client, "llama_cpp").tag
    assert first.tag.startswith("localhost/gh200-llama_cpp:") and len(first.tag.split(":")[1]) == 16
    containerfile = bundle / "containers" / "llama_cpp" / "Containerfile"
    containerfile.write_text(containerfile.read_text() + "\n# a comment is a change\n")
    assert plan_build(fake_client, "llama_cpp").tag != first.tag


def test_executable_bit_and_build_args_and_platform_count(bundle: Path, fake_client: Any) -> None:
    base = plan_build(fake_client, "llama_cpp").recipe_hash
    assert plan_build(fake_client, "llama_cpp", build_args={"BUILD_JOBS": "1"}).recipe_hash != base
    assert plan_build(fake_client, "llama_cpp", platform="linux/arm64").recipe_hash != base
    (bundle / "containers" / "llama_cpp" / "Containerfile").chmod(0o755)
    assert plan_build(fake_client, "llama_cpp").recipe_hash != base


def test_local_base_identity_is_its_image_id(bundle: Path, fake_client: Any) -> None:
    before = plan_build(fake_client, "llama_cpp").recipe_hash
    fake_client.images.known["localhost/gh200-base:bookworm"] = "sha256:" + "c" * 64
    assert plan_build(fake_client, "llama_cpp").recipe_hash != before


def test_labels_carry_pins_and_bundle_version(bundle: Path, fake_client: Any) -> None:
    plan = plan_build(fake_client, "llama_cpp")
    assert plan.labels[f"{LABEL}.upstream.llama-cpp-python"].startswith("0.3.36 sha256:832db069")
    assert plan.labels[f"{LABEL}.recipe-hash"] == plan.recipe_hash
    assert plan.labels[f"{LABEL}.bundle-version"]
    assert plan.build_args["LLAMA_CPP_PYTHON_VERSION"] == "0.3.36"
    assert plan.build_args["BASE"] == "localhost/gh200-base:bookworm"


def test_registry_base_needs_a_digest_unless_unlocked(bundle: Path, fake_client: Any) -> None:
    with pytest.raises(LockError, match=r"vllm/vllm-openai:v0\.33\.0-aarch64.*no digest"):
        plan_build(fake_client, "vllm")
    unlocked = plan_build(fake_client, "vllm", unlocked=True)
    assert unlocked.build_args["BASE"] == "vllm/vllm-openai:v0.33.0-aarch64"
    assert unlocked.labels[f"{LABEL}.base-pinned"] == "false"
    assert unlocked.labels[f"{LABEL}.patch-series"]


def test_registry_base_from_the_lead_lock_format(bundle: Path, fake_client: Any) -> None:
    _lock(
        bundle,
        "schema: 1\nimages:\n  vllm-openai-0.33.0-aarch64:\n"
        f"    ref: vllm/vllm-openai:v0.33.0-aarch64\n    digest: '{DIGEST}'\n    resolved_at: x\n",
    )
    plan = plan_build(fake_client, "vllm")
    assert plan.build_args["BASE"] == f"vllm/vllm-openai@{DIGEST}"
    assert plan.labels[f"{LABEL}.base-pinned"] == "true"
    # A new digest is a new recipe identity.
    _lock(
        bundle,
        "schema: 1\nimages:\n  vllm-openai-0.33.0-aarch64:\n"
        f"    ref: vllm/vllm-openai:v0.33.0-aarch64\n    digest: 'sha256:{'e' * 64}'\n",
    )
    assert plan_build(fake_client, "vllm").recipe_hash != plan.recipe_hash


@pytest.mark.parametrize(
    ("entries", "pinned"),
    [
        # The entry under the recipe's key, for the recipe's ref.
        (f"  {KEY}: {{ref: 'vllm/vllm-openai:v0.33.0-aarch64', digest: '{DIGEST}'}}\n", True),
        # No entry under the key: one for the same ref (another key) pins it too.
        (f"  other: {{ref: 'vllm/vllm-openai:v0.33.0-aarch64', digest: '{DIGEST}'}}\n", True),
        # The key's entry was resolved for another ref (stale): it pins nothing.
        (f"  {KEY}: {{ref: 'vllm/vllm-openai:v0.32.0-aarch64', digest: '{DIGEST}'}}\n", False),
        # Not resolved yet.
        ("  vllm-openai-0.33.0-aarch64: {ref: 'vllm/vllm-openai:v0.33.0-aarch64', digest: null}\n", False),
    ],
)
def test_the_builder_and_the_profiles_read_one_pin(
    bundle: Path, fake_client: Any, entries: str, pinned: bool
) -> None:
    """glm52-awq-mtp3 runs the image the vllm recipe builds on: both must see the same pin, same form."""
    _lock(bundle, "schema: 1\nimages:\n" + entries)
    profile = load_profile("glm52-awq-mtp3", Path(__file__).resolve().parents[3] / "profiles")
    profile_pin = image_pin(profile, bundle / "profiles")
    assert profile_pin.state == ("locked" if pinned else "unlocked")
    if pinned:
        plan = plan_build(fake_client, "vllm")
        assert plan.build_args["BASE"] == profile_pin.pinned_ref == f"vllm/vllm-openai@{DIGEST}"
    else:
        with pytest.raises(LockError, match="no digest"):
            plan_build(fake_client, "vllm")


def test_malformed_lock_is_a_lock_error(bundle: Path) -> None:
    _lock(bundle, "images:\n  k: {ref: a, digest: 'sha256:short'}\n")
    with pytest.raises(LockError, match="malformed digest"):
        check_images_lock()
    _lock(bundle, "images: [1, 2]\n")
    with pytest.raises(LockError):
        check_images_lock()


def test_upstream_archive_without_sha256_is_refused_unless_unlocked(bundle: Path, fake_client: Any) -> None:
    _lock(bundle, f"images:\n  ubuntu-24.04: {{ref: 'docker.io/library/ubuntu:24.04', digest: '{DIGEST}'}}\n")
    with pytest.raises(LockError, match=r"ik_llama\.cpp 8337e4cd3861 has no archive sha256"):
        plan_build(fake_client, "ik_llama")
    plan = plan_build(fake_client, "ik_llama", unlocked=True)
    assert plan.build_args["IK_LLAMA_COMMIT"] == "8337e4cd3861406fc04e0854b1409cd1b027fbc9"
    assert plan.build_args["IK_LLAMA_SHA256"] == ""
    assert plan.build_args["BASE"] == f"docker.io/library/ubuntu@{DIGEST}"


def test_explicit_base_local_or_digest(bundle: Path, fake_client: Any) -> None:
    fake_client.images.known["localhost/standin:1"] = "sha256:" + "1" * 64
    assert plan_build(fake_client, "vllm", base="localhost/standin:1").base.pinned
    assert plan_build(fake_client, "vllm", base=f"repo/x@{DIGEST}").base.identity == DIGEST
    with pytest.raises(LockError):
        plan_build(fake_client, "vllm", base="repo/x:latest")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"name": "nope"}, "no image recipe 'nope'"),
        ({"name": "../etc"}, "no image recipe"),
        ({"name": "llama_cpp", "platform": "linux/s390x"}, "unsupported platform"),
        ({"name": "vllm", "platform": "linux/amd64", "unlocked": True}, "does not build for linux/amd64"),
    ],
)
def test_bad_input(bundle: Path, fake_client: Any, args: dict[str, Any], match: str) -> None:
    with pytest.raises(BadInput, match=match):
        plan_build(fake_client, **args)


def test_invalid_recipe_file(bundle: Path, fake_client: Any) -> None:
    (bundle / "containers" / "llama_cpp" / "recipe.yaml").write_text("name: llama_cpp\nimage: x\nbase: {}\n")
    with pytest.raises(BadInput, match="not a valid recipe"):
        load_recipe("llama_cpp")


def test_strip_tag() -> None:
    assert strip_tag("docker.io/vllm/vllm-openai:v0.33.0-aarch64") == "docker.io/vllm/vllm-openai"
    assert strip_tag("localhost:5000/a/b:t") == "localhost:5000/a/b"
    assert strip_tag("a/b@sha256:00") == "a/b"
    assert strip_tag("ubuntu") == "ubuntu"


def test_arm64_only_recipe_on_an_x86_engine(bundle: Path, fake_client: Any) -> None:
    fake_client.version = lambda: {"Os": "linux", "Arch": "amd64"}
    with pytest.raises(BadInput, match=r"builds for linux/arm64, this engine runs linux/amd64"):
        plan_build(fake_client, "vllm", unlocked=True)
    explicit = plan_build(fake_client, "vllm", unlocked=True, platform="linux/arm64")
    assert explicit.labels[f"{LABEL}.platform"] == "linux/arm64"
    # On an arm64 engine, no --platform and --platform linux/arm64 name the same image.
    fake_client.version = lambda: {"Os": "linux", "Arch": "arm64"}
    assert plan_build(fake_client, "vllm", unlocked=True).tag == explicit.tag


def test_the_ik_llama_build_is_given_what_its_profiles_render(bundle: Path, fake_client: Any) -> None:
    """SERVER_ARGS carries each rendered argument list; the build's check script reads it line by line."""
    repo = Path(__file__).resolve().parents[3]
    shutil.copytree(repo / "profiles", bundle / "profiles", dirs_exist_ok=True)
    plan = plan_build(fake_client, "ik_llama", unlocked=True)
    lines = plan.build_args["SERVER_ARGS"].splitlines()
    assert [shlex.split(line) for line in lines] == rendered_server_args("ik_llama")
    assert any("-fa on" in line and "--numa numactl" in line for line in lines)
    # A render change is a new recipe identity: the image was checked against other arguments.
    edited = (bundle / "profiles" / "glm52-iq2xxs-cpu.yaml").read_text().replace("threads: 72", "threads: 71")
    (bundle / "profiles" / "glm52-iq2xxs-cpu.yaml").write_text(edited)
    assert plan_build(fake_client, "ik_llama", unlocked=True).recipe_hash != plan.recipe_hash


@pytest.mark.parametrize(
    ("lines", "code", "said"),
    [
        ("-m '/m/a b.gguf' --port 8080 --metrics\n-t 2\n", 0, "llama-server takes: -t 2"),
        ("-t 2 --metrcs\n", 1, "error: unknown argument: --metrcs"),
        ("", 1, "no argument lines to check"),
    ],
)
def test_the_build_check_script(tmp_path: Path, lines: str, code: int, said: str) -> None:
    """check-server-args.sh's own logic, on a stand-in server that parses like ik_llama.cpp's
    (help and errors both exit 1); the real binaries run it in the image build and the engine test."""
    server = tmp_path / "llama-server"
    server.write_text(
        "#!/bin/sh\n"
        'usage() { echo "usage: llama-server [options]"; echo "  --port PORT"; exit 1; }\n'
        'while [ $# -gt 0 ]; do case "$1" in\n'
        "  --help) usage;;\n"
        "  -m|--port|-t) shift 2;;\n"
        "  --metrics) shift;;\n"
        '  *) echo "error: unknown argument: $1"; usage;;\n'
        "esac; done\n"
    )
    server.chmod(0o755)
    script = Path(__file__).resolve().parents[3] / "containers" / "ik_llama" / "check-server-args.sh"
    run = subprocess.run(
        ["sh", str(script), str(server)], input=lines, capture_output=True, text=True, check=False
    )
    assert run.returncode == code and said in run.stdout, run.stdout
