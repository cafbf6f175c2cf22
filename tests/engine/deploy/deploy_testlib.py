"""Helpers for the deploy engine tests: test profiles are `local-tiny` variants named `tdep-*`."""

from __future__ import annotations

import socket
from typing import Any

from gh200.profiles import load_profile
from gh200.profiles.schema import Profile

PREFIX = "tdep-"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def variant(name: str, **updates: Any) -> Profile:
    """local-tiny under another name and port, with optional field updates (settings merged)."""
    base = load_profile("local-tiny")
    settings = updates.pop("settings", None)
    health = updates.pop("health", None)
    if settings:
        updates["settings"] = base.settings.model_copy(update=settings)
    if health:
        updates["health"] = base.health.model_copy(update=health)
    return base.model_copy(
        update={"name": PREFIX + name, "port": updates.pop("port", None) or free_port(), **updates}
    )


def leftovers(client: Any) -> list[Any]:
    from gh200.deploy.deploy import gh200_containers

    return [
        c
        for c in gh200_containers(client)
        if str((c.labels or {}).get("io.gh200.profile", "")).startswith(PREFIX)
    ]
