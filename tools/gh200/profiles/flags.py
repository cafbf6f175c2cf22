"""The llama-server arguments our renders emit, in the shape the real servers are checked against.

llama.cpp's flags are checked against its real `llama-server` (tests/engine/images); ik_llama.cpp's
by its image build (containers/ik_llama/check-server-args.sh, fed by the SERVER_ARGS build arg) and,
in CI, against the flags transcribed from the pinned commit's parser (containers/ik_llama).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from gh200.profiles import loader, render
from gh200.profiles.schema import DraftSpec, Profile, SpeculativeSpec

LLAMA_ENGINES = ("llama_cpp", "ik_llama")
FLAG = re.compile(r"--?[A-Za-z][A-Za-z0-9_-]*")


def server_args(argv: list[str]) -> list[str]:
    """The arguments after `llama-server` (a numactl prefix dropped)."""
    if "llama-server" not in argv:
        raise ValueError(f"not a llama-server command line: {shlex.join(argv)}")
    return argv[argv.index("llama-server") + 1 :]


def flag_names(args: list[str]) -> list[str]:
    """The flags among `args` (`--name=value` counts as `--name`), in order, each once."""
    seen: list[str] = []
    for token in args:
        name = token.split("=", 1)[0]
        if FLAG.fullmatch(name) and name not in seen:
            seen.append(name)
    return seen


def with_every_setting(profile: Profile) -> Profile:
    """The profile with each optional llama-server setting given, so every branch of the render runs
    (a draft model included: the draft flags differ between llama.cpp and ik_llama.cpp)."""
    s = profile.settings
    speculative = s.speculative
    if speculative is None or speculative.method != "draft":
        speculative = SpeculativeSpec(method="draft", num_speculative_tokens=3)
    filled = s.model_copy(
        update={
            "threads": s.threads or 2,
            "ctx_size": s.ctx_size or 512,
            "parallel": s.parallel or 1,
            "flash_attn": s.flash_attn or "auto",
            "metrics": True,
            "speculative": speculative,
        }
    )
    model = profile.model
    if model.draft is None:
        model = model.model_copy(update={"draft": DraftSpec(file="draft.gguf")})
    return profile.model_copy(update={"settings": filled, "model": model})


def rendered_server_args(engine: str, directory: Path | None = None) -> list[list[str]]:
    """llama-server arguments of every profile of `engine`, as rendered and with every setting given."""
    if engine not in LLAMA_ENGINES:
        raise ValueError(f"{engine} does not run llama-server")
    found: list[list[str]] = []
    for name in loader.list_names(directory):
        item = loader.load_any(name, directory)
        if not isinstance(item, Profile) or item.engine != engine:
            continue
        for profile in (item, with_every_setting(item)):
            args = server_args(render.argv(profile))
            if args not in found:
                found.append(args)
    return found
