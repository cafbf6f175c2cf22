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
import zlib
from collections.abc import Iterator
import json
import os
import shutil
import subprocess
import sys
import time
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
        return self.root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


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
                    done = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.PIPE, text=True, check=False)
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
    scratch = cache_dir() / "vllm-run"
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
    argv = [str(venv.python), str(containers_dir() / "vllm" / "mtp_check.py"), "--checkpoint", str(checkpoint)]
    done = subprocess.run([*argv, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    lines = done.stdout.strip().splitlines()
    try:
        report: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as err:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])
        raise VllmVenvFailed(f"mtp_check.py gave no report (exit {done.returncode}): {tail}", "see its stderr") from err
    report["stderr"] = done.stderr
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


def config_dir(root: Path, config: dict[str, Any]) -> Path:
    """A local config directory (what --hf-config-path points at)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return root


# The marker the hf_config_path checks look for in the draft's config (and a changed value).
MARKER = "gh200_config_marker"
MARKED_SCALING = 3.25


def marked_config_dir(checkpoint: Path, out: Path) -> Path:
    """A local config directory (what --hf-config-path names): the checkpoint's config.json with a
    marker field and one changed value, so a test can tell which config the draft read."""
    config = json.loads((checkpoint / "config.json").read_text())
    config[MARKER] = "local-config"
    config["routed_scaling_factor"] = MARKED_SCALING
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def verdicts(report: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    """Per carried patch: did its runtime check pass in this report (a run with a marked
    --hf-config-path on a tiny graft)? (passed, one-line reason)."""
    out: dict[str, tuple[bool, str]] = {}
    if "error" in report:
        why = f"{report['error']['type']} at stage {report.get('stage')}: {report['error']['message'][:160]}"
        return {"glm52-mtp-quant": (False, why), "dsv4-draft-hf-config-path": (False, why)}
    draft = report.get("draft_config") or {}
    marker_ok = draft.get("marker") == "local-config" and draft.get("routed_scaling_factor") == MARKED_SCALING
    out["dsv4-draft-hf-config-path"] = (
        marker_ok,
        "the draft read the target's --hf-config-path"
        if marker_ok
        else "the draft read the checkpoint's own config.json, not the target's --hf-config-path",
    )
    if "load_error" in report:
        err = report["load_error"]
        out["glm52-mtp-quant"] = (False, f"loading failed: {err['type']}: {err['message'][:160]}")
        return out
    problems = []
    if report.get("bytes", {}).get("mismatched") or report.get("bytes", {}).get("unmapped"):
        problems.append("FP8 bytes differ from the shard")
    if not report.get("indexer_wk", {}).get("ok"):
        problems.append("indexer wk is not the dequantized FP8 wk")
    if not report.get("attention", {}).get("ok"):
        problems.append("attention W_UK_T/W_UV differ from the dequantized kv_b_proj")
    if set(report.get("not_loaded", [])) - set(shared_from_target(report)):
        problems.append(f"parameters not loaded: {report['not_loaded'][:3]}")
    out["glm52-mtp-quant"] = (not problems, "; ".join(problems) or "built FP8 and loaded byte-exact")
    return out


def shared_from_target(report: dict[str, Any]) -> list[str]:
    """Draft parameters vLLM's proposer replaces with the target's (llm_base_proposer shares the
    target lm_head into every MTP layer's shared_head.head), so the checkpoint need not hold them."""
    layer = report.get("mtp_layer")
    return [f"model.layers.{layer}.shared_head.head.weight"]
