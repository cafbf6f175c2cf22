"""`gh200 models fetch PROFILE`: the profile's pinned model, plus its graft when it declares one.

Revisions come from profiles/models.lock only (a profile's `revision: main` is what `gh200 lock`
resolves; fetching an unresolved branch would not be reproducible). For a graft, only the MTP
source's shards that hold the MTP layer are fetched (the delta repo is all of it; from the full FP8
checkpoint that is two shards of ~140), then `graft` writes the directory deploy serves.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gh200.checkpoints import hub
from gh200.checkpoints.fetch import fetch
from gh200.checkpoints.graft import graft
from gh200.checkpoints.layout import layer_of
from gh200.checkpoints.local import CONFIG_NAME, INDEX_NAME, model_dir
from gh200.errors import BadInput, LockError


def mtp_source_files(ref: hub.RepoRef, first_layer: int, token: str | None) -> list[str]:
    """The files of an MTP source that matter: config, index, and the shards holding layer >= first."""
    from huggingface_hub import hf_hub_download

    from gh200.paths import cache_dir

    with hub.hub_errors(str(ref), token):
        info = hub.api(token).model_info(ref.repo, revision=ref.revision)
        names = {s.rfilename for s in info.siblings or []}
        if INDEX_NAME not in names:
            return [CONFIG_NAME, "*.safetensors"]
        path = hf_hub_download(
            ref.repo,
            INDEX_NAME,
            revision=ref.revision,
            cache_dir=str(cache_dir() / "hf-hub"),
            token=token,
            endpoint=hub.endpoint(),
        )
    weight_map = json.loads(Path(path).read_text()).get("weight_map") or {}
    shards = sorted({s for n, s in weight_map.items() if (layer_of(n) or 0) >= first_layer > 0})
    if not shards:
        raise BadInput(
            f"{ref}: its index lists no tensor of layer {first_layer}", "check the profile's graft.mtp_from"
        )
    return [CONFIG_NAME, INDEX_NAME, *shards]


def fetch_profile(
    name: str,
    *,
    token: str | None = None,
    max_workers: int = 4,
    force: bool = False,
    store: Path | None = None,
    profiles_directory: Path | None = None,
    on_phase: Callable[[str, int], None] = lambda _p, _t: None,
    on_progress: Callable[[int], None] = lambda _n: None,
    on_bytes: Callable[[int], None] = lambda _n: None,
) -> dict[str, Any]:
    from gh200.profiles import load_profile, model_host_dir, model_pins

    profile = load_profile(name, profiles_directory)
    pins = model_pins(profile, profiles_directory)
    for pin in pins:
        if pin.state == "local":
            raise BadInput(
                f"{profile.name}: model {pin.ref} is generated on this machine, not fetched from the hub",
                "run the profile's own setup (e.g. `gh200 demo`) instead",
            )
        if pin.value is None:
            raise LockError(
                f"{profile.name}: {pin.ref} has no commit sha in profiles/models.lock (key {pin.key!r})",
                "run `gh200 lock` on a host that reaches the hub, or fetch OWNER/NAME@COMMIT directly",
            )
    base_ref = hub.RepoRef(profile.model.repo, str(pins[0].value))
    base_dir = model_dir(base_ref.repo, store)
    results = [
        fetch(
            base_ref,
            profile.model.files,
            base_dir,
            token=token,
            max_workers=max_workers,
            force=force,
            on_phase=on_phase,
            on_progress=on_progress,
        ).as_dict()
    ]
    out: dict[str, Any] = {
        "profile": profile.name,
        "fetched": results,
        "model_dir": str(base_dir),
        "warnings": [],
    }
    if profile.model.graft is not None:
        g = profile.model.graft
        mtp_ref = hub.RepoRef(g.mtp_from, str(pins[1].value))
        config = json.loads((base_dir / CONFIG_NAME).read_text())
        first = config.get("num_hidden_layers")
        if not isinstance(first, int):
            raise BadInput(
                f"{base_dir / CONFIG_NAME}: no num_hidden_layers", "check the profile's model.repo"
            )
        mtp_dir = model_dir(mtp_ref.repo, store)
        patterns = mtp_source_files(mtp_ref, first, token)
        results.append(
            fetch(
                mtp_ref,
                patterns,
                mtp_dir,
                token=token,
                max_workers=max_workers,
                force=force,
                on_phase=on_phase,
                on_progress=on_progress,
            ).as_dict()
        )
        final = model_host_dir(profile, store)
        grafted = graft(
            base_dir,
            mtp_dir,
            final,
            mtp_layers=g.mtp_layers,
            force=force,
            on_phase=on_phase,
            on_bytes=on_bytes,
        ).as_dict()
        out["graft"] = grafted
        out["model_dir"] = str(final)
        out["warnings"] = grafted["warnings"]
    changed = any(r["changed"] for r in results) or bool(out.get("graft", {}).get("changed"))
    # What was found damaged and fetched or grafted again, each named with where it lives.
    repaired = [f"{r['path']}/{what}" for r in results for what in r["repaired"]]
    repaired += [f"{out['model_dir']}/{what}" for what in out.get("graft", {}).get("repaired", [])]
    out["repaired"] = repaired
    out["changed"] = changed
    out["status"] = ("repaired" if repaired else "fetched") if changed else "unchanged"
    return out
