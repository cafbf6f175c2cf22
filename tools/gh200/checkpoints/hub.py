"""Talking to the Hugging Face Hub (or a mirror via HF_ENDPOINT): references, token, error mapping."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gh200.errors import BadInput, OperationFailed

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class HubError(OperationFailed):
    """The hub did not answer as expected (network, server error)."""


class HubNotFound(BadInput):
    """The repository, revision or file does not exist (or is gated/private without a token)."""


@dataclass(frozen=True)
class RepoRef:
    repo: str
    revision: str

    def __str__(self) -> str:
        return f"{self.repo}@{self.revision}"


def looks_like_ref(text: str) -> bool:
    repo, sep, rev = text.partition("@")
    return bool(sep) and bool(_REPO_RE.match(repo)) and bool(rev)


def parse_ref(text: str, *, require_commit: bool = True) -> RepoRef:
    """Parse OWNER/NAME@REVISION. A pinned revision is a full 40-hex commit sha."""
    repo, sep, rev = text.partition("@")
    if not sep or not _REPO_RE.match(repo) or not rev:
        raise BadInput(
            f"{text!r} is not OWNER/NAME@REVISION", "write e.g. zai-org/GLM-5.2-FP8@<40-hex commit sha>"
        )
    if require_commit and not COMMIT_RE.match(rev):
        raise BadInput(
            f"{text}: revision {rev!r} is not a pinned commit sha (40 hex digits)",
            "use the commit sha from profiles/models.lock (`gh200 lock` resolves branches and tags)",
        )
    return RepoRef(repo, rev)


def endpoint() -> str | None:
    """The hub endpoint: HF_ENDPOINT read at call time (huggingface_hub reads it only at import)."""
    value = os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def resolve_token(token_file: Path | None = None) -> str | None:
    """The HF token: $HF_TOKEN, else the file given (or $GH200_HF_TOKEN_FILE). Never printed or logged.

    None lets huggingface_hub fall back to its own stored login, if any.
    """
    env = os.environ.get("HF_TOKEN")
    if env:
        return env.strip()
    path = token_file or (
        Path(os.environ["GH200_HF_TOKEN_FILE"]) if os.environ.get("GH200_HF_TOKEN_FILE") else None
    )
    if path is None:
        return None
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise BadInput(
            f"token file {path}: cannot be read ({exc.strerror})", "check the path and permissions"
        ) from exc
    if not text:
        raise BadInput(f"token file {path} is empty", "write the Hugging Face token into it")
    return text


def scrub(text: str, token: str | None) -> str:
    """Remove the token from any text that may reach the screen."""
    return text.replace(token, "***") if token else text


@contextlib.contextmanager
def hub_errors(what: str, token: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub/httpx failures into one-line errors (never a traceback, never the token)."""
    from huggingface_hub import errors as hf_errors

    try:
        yield
    except hf_errors.GatedRepoError as exc:
        raise HubNotFound(
            f"{what}: gated repository, access not granted for this token",
            "accept the model's terms on the hub and set HF_TOKEN (or --token-file)",
        ) from exc
    except hf_errors.RepositoryNotFoundError as exc:
        raise HubNotFound(
            f"{what}: repository not found (or private)",
            "check the repo name; set HF_TOKEN for private repos",
        ) from exc
    except hf_errors.RevisionNotFoundError as exc:
        raise HubNotFound(
            f"{what}: revision not found", "check the commit sha in profiles/models.lock"
        ) from exc
    except hf_errors.RemoteEntryNotFoundError as exc:
        raise HubNotFound(f"{what}: file not found in the repository", "check the file patterns") from exc
    except hf_errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise HubError(
            f"{what}: hub answered HTTP {status}", "retry later; check HF_ENDPOINT and the token"
        ) from exc
    except (ConnectionError, TimeoutError) as exc:
        raise HubError(
            f"{what}: hub unreachable ({scrub(type(exc).__name__, token)})",
            "check the network or HF_ENDPOINT",
        ) from exc
    except Exception as exc:
        if isinstance(exc, _client_error()):
            raise HubError(
                f"{what}: hub unreachable ({type(exc).__name__})", "check the network, proxy or HF_ENDPOINT"
            ) from exc
        raise


def _client_error() -> type[Exception]:
    """The base error of huggingface_hub's HTTP client (connect, read, protocol failures).

    Taken from `huggingface_hub.errors`, which imports it from the client it uses (httpx2 in 2.x, httpx
    before): not imported from the client itself, which is huggingface_hub's dependency, not ours.
    """
    from huggingface_hub import errors as hf_errors

    found = vars(hf_errors).get("HTTPError")
    if isinstance(found, type) and issubclass(found, Exception):
        return found
    return hf_errors.HfHubHTTPError


def api(token: str | None) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=token)
