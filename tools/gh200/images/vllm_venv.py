"""The real vLLM 0.33.0 wheel in a cached CPU virtual environment, with patched and unpatched twins.

`ensure_venv()` builds `cache_dir()/vllm-venv-0.33.0-<digest>` once (under a file lock, in a
temporary sibling renamed into place) from containers/vllm/cpu-venv/: the vLLM wheel pinned by
version and sha256 (installed --no-deps) and every other package pinned with hashes. A warm run
reuses it. `overlay()` gives the twins: a hard-linked copy of the wheel's `vllm/` package with the
patch series applied by containers/vllm/apply_patches.py (exactly as the image build applies it),
put first on PYTHONPATH; the unpatched twin is the wheel's own package. One venv, two vLLMs.

`run_check()` runs containers/vllm/mtp_check.py (the same build-and-load check the image runs with
GPU kernels) in one of them and returns its JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gh200.checkpoints import testdata as td
from gh200.checkpoints.graft import graft
from gh200.errors import BadInput, OperationFailed
from gh200.fsutil import atomic_dir, file_lock
from gh200.paths import cache_dir, containers_dir

VLLM_VERSION = "0.33.0"


class VllmVenvFailed(OperationFailed):
    """The vLLM test venv could not be built, or a check run in it did not produce its report."""


@dataclass(frozen=True)
class VllmVenv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return (
            self.root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        )


def spec_dir() -> Path:
    return containers_dir() / "vllm" / "cpu-venv"


def _spec_files() -> list[Path]:
    return [spec_dir() / "vllm-wheel.txt", spec_dir() / "requirements.txt"]


def venv_digest() -> str:
    """What the venv is built from: the pinned files and the interpreter's version."""
    digest = hashlib.sha256(f"{sys.version_info.major}.{sys.version_info.minor}\n".encode())
    for path in _spec_files():
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def venv_dir() -> Path:
    return cache_dir() / f"vllm-venv-{VLLM_VERSION}-{venv_digest()}"


_READY = ".gh200-ready"


def cached() -> VllmVenv | None:
    """The built venv, or None when it is not built yet (nothing is built here)."""
    root = venv_dir()
    return VllmVenv(root) if (root / _READY).is_file() else None


def find_uv() -> Path:
    """The uv `make setup` installs under the cache (or one on PATH)."""
    for candidate in sorted(cache_dir().glob("uv-*/bin/uv"), reverse=True):
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("uv")
    if found:
        return Path(found)
    raise BadInput("uv is not installed (needed to build the vLLM test venv)", "run `make setup`")


def ensure_venv(*, log: Path | None = None) -> VllmVenv:
    """The cached venv, built now if missing. Safe to call from parallel processes."""
    for path in _spec_files():
        if not path.is_file():
            raise BadInput(f"{path} is missing", "restore containers/vllm/cpu-venv/")
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise BadInput(
            f"the vLLM test venv pins the x86_64 wheel; this is {os.uname().machine}",
            "run the vllm suite on an x86_64 Linux machine",
        )
    root = venv_dir()
    ready = cached()
    if ready is not None:
        return ready
    uv = find_uv()
    with file_lock(root.parent / f".{root.name}.lock"):
        if (root / _READY).is_file():
            return VllmVenv(root)
        started = time.monotonic()
        with atomic_dir(root) as tmp:
            env = dict(os.environ, UV_PYTHON_DOWNLOADS="never")
            out = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
            try:
                steps = [
                    [str(uv), "venv", "-q", "--python", sys.executable, str(tmp)],
                    [
                        str(uv),
                        "pip",
                        "install",
                        "-q",
                        "--python",
                        str(tmp / "bin" / "python"),
                        "--index-url",
                        os.environ.get("GH200_PYPI_URL", "https://pypi.org") + "/simple",
                        "--no-deps",
                        "--require-hashes",
                        *(arg for path in _spec_files() for arg in ("-r", str(path))),
                    ],
                ]
                for argv in steps:
                    done = subprocess.run(
                        argv, env=env, stdout=out, stderr=subprocess.PIPE, text=True, check=False
                    )
                    if done.returncode != 0:
                        tail = " ".join(done.stderr.strip().splitlines()[-3:])
                        raise VllmVenvFailed(
                            f"building the vLLM test venv failed: {tail}",
                            "check PyPI access; the pins are in containers/vllm/cpu-venv/",
                        )
            finally:
                if log:
                    out.close()  # type: ignore[union-attr]
            (tmp / _READY).write_text(
                json.dumps({"vllm": VLLM_VERSION, "seconds": round(time.monotonic() - started, 1)}) + "\n"
            )
    return VllmVenv(root)


def _tree_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def overlay(venv: VllmVenv, series: Path) -> Path:
    """A directory to put first on PYTHONPATH: the wheel's `vllm/` with `series` applied.

    Hard links into the wheel's files (apply_patches.py replaces a file by rename, so the wheel's
    copy is never edited); cached per venv and per series content."""
    patch_files = sorted(p for p in series.parent.iterdir() if p.is_file())
    out = cache_dir() / "vllm-overlays" / f"{venv.root.name}-{_tree_digest(patch_files)}"
    if (out / _READY).is_file():
        return out
    with file_lock(out.parent / f".{out.name}.lock"):
        if (out / _READY).is_file():
            return out
        if out.exists():
            shutil.rmtree(out)
        with atomic_dir(out) as tmp:
            shutil.copytree(venv.site_packages / "vllm", tmp / "vllm", copy_function=os.link)
            # The image build's very command, pointed at this tree instead of site-packages.
            argv = [str(venv.python), str(containers_dir() / "vllm" / "apply_patches.py")]
            argv += ["--series", str(series), "--root", str(tmp), "--json"]
            done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
            if done.returncode != 0:
                raise VllmVenvFailed(
                    f"the series {series} does not apply to the vLLM {VLLM_VERSION} wheel: "
                    + " ".join(done.stderr.strip().splitlines()[-2:]),
                    "run `gh200 patches check --vllm 0.33.0`",
                )
            (tmp / _READY).write_text(done.stdout)
    return out


def run_check(
    venv: VllmVenv,
    overlay_dir: Path | None,
    checkpoint: Path,
    *args: str,
    timeout: float = 600,
) -> dict[str, Any]:
    """containers/vllm/mtp_check.py on `checkpoint` in the venv (patched when overlay_dir is set)."""
    script = containers_dir() / "vllm" / "mtp_check.py"
    return run_script(venv, overlay_dir, script, "--checkpoint", str(checkpoint), *args, timeout=timeout)


def run_script(
    venv: VllmVenv,
    overlay_dir: Path | None,
    script: Path,
    *args: str,
    timeout: float = 600,
) -> dict[str, Any]:
    """`script` in the venv (patched when overlay_dir is set), offline; its last stdout line is
    its JSON report, returned with the log (everything else it printed) under "log"."""
    # One vLLM cache per twin: its model-info cache is keyed by class name and holds the module's
    # hash, so twins sharing it would evict each other and re-inspect in a subprocess every run.
    scratch = cache_dir() / "vllm-run" / (overlay_dir.name if overlay_dir is not None else venv.root.name)
    scratch.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "VLLM_TARGET_DEVICE": "cpu",
        # No network, no usage reports, vLLM's own caches kept out of ~/.cache/vllm.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CACHE_ROOT": str(scratch),
        "OMP_NUM_THREADS": "1",
    }
    if overlay_dir is not None:
        env["PYTHONPATH"] = str(overlay_dir)
    done = subprocess.run(
        [str(venv.python), str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    try:
        report: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as err:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])
        raise VllmVenvFailed(
            f"{script.name} gave no report (exit {done.returncode}): {tail}", "see its stderr"
        ) from err
    # vLLM logs to stdout: everything before the report line, then stderr.
    report["log"] = "\n".join(lines[:-1]) + "\n" + done.stderr
    return report


# Tiny grafted GLM-5.2 checkpoints, made by the project's own graft from testdata's real layouts,
# at dimensions vLLM's layers accept (FP8 blocks of 128 along the fused projections, a 512 latent,
# a 64 rope head); their bytes are finite values (no NaN FP8 codes, positive scales) so that
# dequantized matrices compare exactly.

DIMS = td.Dims(
    hidden_size=256,
    q_lora_rank=256,
    qk_rope_head_dim=64,
    kv_lora_rank=512,
    index_head_dim=128,
    n_routed_experts=4,
    moe_intermediate_size=128,
)


def _dtypes(dims: td.Dims) -> dict[str, str]:
    head, tail = td.global_specs(dims)
    out = {name: dtype for name, dtype, _ in head + tail}
    for layer in range(dims.num_hidden_layers + 1):
        for scheme in ("awq", "fp8"):
            out.update({name: dtype for name, dtype, _ in td.layer_specs(dims, layer, scheme)})
    return out


def finite_fill(dims: td.Dims = DIMS) -> td.Fill:
    """Deterministic bytes per tensor name, valid numbers for every dtype."""
    dtypes = _dtypes(dims)

    def fill(name: str, nbytes: int) -> Iterator[bytes]:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        dtype = dtypes.get(name, "I32")
        if dtype == "F8_E4M3":
            codes = rng.integers(0, 256, size=nbytes, dtype=np.uint8)
            codes[(codes & 0x7F) == 0x7F] = 0  # 0x7f/0xff are NaN in e4m3fn
            yield codes.tobytes()
        elif dtype == "F32":
            yield rng.uniform(2**-8, 2**-4, size=nbytes // 4).astype("<f4").tobytes()
        elif dtype == "BF16":
            values = rng.normal(0, 0.05, size=nbytes // 2).astype("<f4")
            yield (values.view("<u4") >> 16).astype("<u2").tobytes()
        else:
            yield rng.integers(0, 256, size=nbytes, dtype=np.uint8).tobytes()

    return fill


def tiny_graft(root: Path) -> Path:
    """base (AWQ) + FP8 artifact -> graft, with gh200's graft; returns the graft directory."""
    fill = finite_fill()
    td.write_awq_base(root / "base", DIMS, fill=fill)
    td.write_fp8_artifact(root / "fp8", DIMS, fill=fill)
    graft(root / "base", root / "fp8", root / "graft", fsync=False)
    return root / "graft"


def _load_mtp_check() -> Any:
    """containers/vllm/mtp_check.py as a module (standard library at import time): the verdict
    rules live next to the check, so the image's runtime smoke test applies the same ones."""
    import importlib.util

    path = containers_dir() / "vllm" / "mtp_check.py"
    spec = importlib.util.spec_from_file_location("gh200_mtp_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mtp_check = _load_mtp_check()
MARKER: str = mtp_check.MARKER
MARKED_SCALING: float = mtp_check.MARKED_SCALING
verdicts = mtp_check.verdicts
shared_from_target = mtp_check.shared_from_target


def marked_config_dir(checkpoint: Path, out: Path) -> Path:
    """A local config directory (what --hf-config-path names): the checkpoint's config.json with a
    marker field and one changed value, so a test can tell which config the draft read."""
    config = json.loads((checkpoint / "config.json").read_text())
    config[MARKER] = "local-config"
    config["routed_scaling_factor"] = MARKED_SCALING
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def runtime_check(series: Path) -> dict[str, Any]:
    """The series' runtime check on the cached wheel, for `gh200 patches check`: one run of the
    patched twin on a tiny graft with a marked --hf-config-path. Never builds the venv."""
    import tempfile

    venv = cached()
    if venv is None:
        return {
            "state": "not-cached",
            "detail": f"the vLLM {VLLM_VERSION} test venv is not built yet ({venv_dir()}); "
            "`make test` (or `pytest -m vllm`) builds it",
        }
    patched = overlay(venv, series)
    with tempfile.TemporaryDirectory(prefix="gh200-runtime-", dir=cache_dir()) as tmp:
        graft_dir = tiny_graft(Path(tmp) / "inputs")
        marked = marked_config_dir(graft_dir, Path(tmp) / "local-config")
        report = run_check(venv, patched, graft_dir, "--hf-config-path", str(marked), "--marker", MARKER)
    return {
        "state": "ran",
        "venv": str(venv.root),
        "patches": {pid: {"passed": ok, "detail": why} for pid, ok, why in _rows(verdicts(report))},
    }


def _rows(found: dict[str, tuple[bool, str]]) -> list[tuple[str, bool, str]]:
    return [(pid, ok, why) for pid, (ok, why) in found.items()]


def gpu_visible() -> bool:
    """An NVIDIA GPU answers here (what the image's runtime smoke test needs)."""
    if not shutil.which("nvidia-smi"):
        return False
    try:
        return (
            subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30, check=False).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def image_runtime_smoke(client: Any, tag: str) -> dict[str, Any]:
    """`smoke_test.py --mode runtime` in the built vLLM image with the GPUs: the tests/vllm check
    with GPU kernels (process_weights_after_loading included), on a tiny graft mounted read-only."""
    import tempfile

    import docker

    if not gpu_visible():
        return {"state": "skipped", "detail": "no NVIDIA GPU here (nvidia-smi -L failed or absent)"}
    with tempfile.TemporaryDirectory(prefix="gh200-runtime-", dir=cache_dir()) as tmp:
        graft_dir = tiny_graft(Path(tmp) / "inputs")
        marked_config_dir(graft_dir, Path(tmp) / "local-config")
        os.chmod(tmp, 0o755)
        command = [
            "/opt/gh200/smoke_test.py",
            "--series",
            "/opt/gh200/patches/series.yaml",
            "--mode",
            "runtime",
        ]
        command += ["--checkpoint", "/ckpt/inputs/graft", "--hf-config-path", "/ckpt/local-config"]
        container = client.containers.run(
            tag,
            command=command,
            entrypoint="python3",
            volumes={tmp: {"bind": "/ckpt", "mode": "ro"}},
            device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])],
            environment={"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"},
            detach=True,
        )
        try:
            code = int(container.wait(timeout=1800).get("StatusCode", 1))
            logs = container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)
    lines = [line for line in logs.splitlines() if line.startswith(("smoke runtime:", "error:"))]
    return {"state": "passed" if code == 0 else "failed", "exit_code": code, "lines": lines}
