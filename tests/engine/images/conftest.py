"""Fixtures for the image tests: the real vLLM 0.33.0 source, patched; a stand-in vLLM base image."""

from __future__ import annotations

import ast
import hashlib
import io
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from docker.errors import ImageNotFound

from gh200.images.patches import load_series, patched_tree, pristine_source
from gh200.paths import cache_dir

VLLM = "0.33.0"
STANDIN_REPO = "localhost/gh200-test-vllm-standin"
# Debian's python3 searches here; the vLLM image keeps vllm in .../python3.12/dist-packages alike.
STANDIN_SITE = "/usr/local/lib/python3.11/dist-packages"


@pytest.fixture(scope="session")
def vllm_pin() -> str:
    return load_series().vllm_sdists[VLLM]


@pytest.fixture(scope="session")
def vllm_pristine(vllm_pin: str) -> Path:
    """The unpacked vllm/ package of the real 0.33.0 sdist (downloaded once, sha256 checked)."""
    return pristine_source(VLLM, vllm_pin)


@pytest.fixture(scope="session")
def vllm_patched(tmp_path_factory: pytest.TempPathFactory, vllm_pristine: Path) -> Path:
    """vLLM 0.33.0's vllm/ with the series applied by containers/vllm/apply_patches.py."""
    dest = tmp_path_factory.mktemp("vllm-patched") / "tree"
    patched_tree(VLLM, dest)
    return dest


def exec_from_source(path: Path, names: list[str], env: dict[str, Any] | None = None) -> dict[str, Any]:
    """Execute only the named top-level definitions (functions, classes' methods as `Class.method`,
    assignments) of a real source file, in a namespace seeded with `env`.

    The code run is the file's own text, compiled with its real line numbers: no copy of it lives in
    the tests. Heavy collaborators (torch, vLLM internals) are whatever `env` provides.
    """
    source = path.read_text()
    tree = ast.parse(source)
    namespace: dict[str, Any] = {"__name__": f"extracted:{path.name}", **(env or {})}
    for name in names:
        cls, _, method = name.partition(".")
        node: ast.stmt | None = None
        for top in tree.body:
            defines = isinstance(top, ast.FunctionDef | ast.ClassDef) and top.name == cls
            assigns = isinstance(top, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == cls for t in top.targets
            )
            if defines or assigns:
                node = top
        if node is None:
            raise LookupError(f"{path} defines no {cls}")
        if method:
            assert isinstance(node, ast.ClassDef)
            found = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == method), None)
            if found is None:
                raise LookupError(f"{path}: {cls} has no {method}")
            node = found
        module = ast.Module(body=[node], type_ignores=[])
        exec(compile(module, str(path), "exec"), namespace)
    return namespace


@pytest.fixture(scope="session")
def extract() -> Callable[..., dict[str, Any]]:
    return exec_from_source


def _context_tar(vllm_dir: Path, containerfile: str) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = containerfile.encode()
        info = tarfile.TarInfo("Containerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        tar.add(vllm_dir, arcname="vllm", filter=lambda t: None if "__pycache__" in t.name else t)
    buf.seek(0)
    return buf


@pytest.fixture(scope="session")
def vllm_standin(engine: Any, base_image: str, vllm_pristine: Path, vllm_pin: str) -> Iterator[str]:
    """A stand-in for the vLLM image: Debian + python3 + PyYAML + the real vLLM 0.33.0 Python source
    in site-packages (no torch, no GPU). Built once per base image and source pin, then reused."""
    base_id = engine.images.get(base_image).id
    digest = hashlib.sha256(f"{base_id} {vllm_pin} {STANDIN_SITE}".encode()).hexdigest()[:16]
    tag = f"{STANDIN_REPO}:{digest}"
    try:
        engine.images.get(tag)
    except ImageNotFound:
        containerfile = (
            f"FROM {base_image}\n"
            "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
            "--no-install-recommends python3 python3-yaml && apt-get clean && rm -rf /var/lib/apt/lists/*\n"
            f"COPY vllm/ {STANDIN_SITE}/vllm/\n"
        )
        context = _context_tar(vllm_pristine / "vllm", containerfile)
        logs = []
        for chunk in engine.api.build(
            fileobj=context, custom_context=True, dockerfile="Containerfile", tag=tag, rm=True, decode=True
        ):
            logs.append(str(chunk.get("stream") or chunk.get("error") or ""))
        try:
            engine.images.get(tag)
        except ImageNotFound:
            pytest.fail("building the vLLM stand-in failed: " + "".join(logs)[-2000:])
    yield tag


@pytest.fixture
def broken_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the bundle's containers/vllm whose first patch no longer matches vLLM 0.33.0."""
    from gh200.paths import containers_dir

    home = tmp_path / "bundle"
    shutil.copytree(containers_dir() / "vllm", home / "containers" / "vllm")
    patch = home / "containers" / "vllm" / "patches" / "0001-glm52-mtp-quantization.patch"
    text = patch.read_text()
    # A context line the real mtp.py does not have: the hunk can no longer match.
    broken = text.replace(
        "         quant_config = vllm_config.quant_config\n",
        "         quant_config = vllm_config.quant_config_renamed_upstream\n",
        1,
    )
    assert broken != text
    patch.write_text(broken)
    monkeypatch.setenv("GH200_HOME", str(home))
    assert cache_dir()  # the cache stays shared: the sdist and layers are reused
    return home
