"""A local stand-in for the Hugging Face Hub on 127.0.0.1, for the real huggingface_hub client.

No hub is reachable from the test machines, so fetch and remote inspect are tested against this server
through HF_ENDPOINT. It answers the routes huggingface_hub 2.x calls (read from its source):
- GET  /api/models/{repo}/revision/{rev}[?blobs=true]  model_info: sha, siblings (+ size, blobId, lfs)
- GET  /api/models/{repo}/tree/{rev}?recursive=...     list_repo_tree, used by snapshot_download
- HEAD /{repo}/resolve/{rev}/{path}                    get_hf_file_metadata: X-Repo-Commit, ETag,
                                                       X-Linked-Etag / X-Linked-Size for LFS files
- GET  /{repo}/resolve/{rev}/{path}                    the bytes, with Range (206 + Content-Range);
                                                       LFS files: 302 to /blobs/{sha256} on a second
                                                       origin (the CDN), which serves them without auth
Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound) as the hub's do, so the
client raises its typed errors. Faults can be injected per file: corrupt bytes, a dropped connection
part-way (the client resumes with Range), a stall (the test kills the client mid-download), a short but
well-formed answer, or a listed file that /resolve does not find.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """What git stores for an LFS file: the hub's blobId (and tree oid) of an LFS file is this blob's."""
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


@dataclass
class Repo:
    commit: str
    files: dict[str, bytes]
    branches: dict[str, str] = field(default_factory=dict)
    token: str | None = None  # when set, requests must carry "Authorization: Bearer <token>"
    sizes: bool = True  # False: model_info lists files without their size (as without ?blobs=true)

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def blob_id(self, path: str) -> str:
        data = self.files[path]
        return git_blob_id(lfs_pointer(data) if self.is_lfs(path) else data)


@dataclass
class Faults:
    corrupt: set[str] = field(default_factory=set)
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before closing (once)
    stall: dict[str, threading.Event] = field(default_factory=dict)  # path -> released by the test
    stalled: threading.Event = field(default_factory=threading.Event)
    short: dict[str, int] = field(default_factory=dict)  # path -> GET serves only this many bytes
    missing: set[str] = field(default_factory=set)  # listed by model_info, but /resolve answers 404


class _Cdn:
    """A second origin (another port) standing in for the hub's storage host."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"


class HubServer:
    def __init__(self, cdn: bool = True) -> None:
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, tuple[str, str]] = {}
        self.cdn_auth_seen: list[str | None] = []
        self.faults = Faults()
        self.gets: Counter[str] = Counter()
        self.ranges: list[tuple[str, str]] = []
        self.auth_seen: list[str | None] = []
        self._lock = threading.Lock()
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.cdn: _Cdn | None = _Cdn(self._handler(cdn=True)) if cdn else None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> HubServer:
        self.thread.start()
        if self.cdn is not None:
            self.cdn.thread.start()
        return self

    def stop(self) -> None:
        for event in self.faults.stall.values():
            event.set()
        for httpd in (self.httpd, *((self.cdn.httpd,) if self.cdn else ())):
            httpd.shutdown()
            httpd.server_close()

    def add_repo(self, name: str, commit: str, files: dict[str, bytes], token: str | None = None) -> Repo:
        repo = Repo(commit, files, {"main": commit}, token)
        self.repos[name] = repo
        return repo

    def add_dir(self, name: str, commit: str, root: Path, token: str | None = None) -> Repo:
        files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        return self.add_repo(name, commit, files, token)

    def _handler(self, cdn: bool = False) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                return

            def _error(self, status: int, code: str | None, message: str) -> None:
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _repo(self, name: str, rev: str) -> tuple[Repo, str] | None:
                repo = server.repos.get(name)
                auth = self.headers.get("authorization")
                server.auth_seen.append(auth)
                if repo is None or (repo.token is not None and auth != f"Bearer {repo.token}"):
                    self._error(401 if repo is not None else 404, "RepoNotFound", "Repository not found")
                    return None
                commit = repo.commit if rev == repo.commit else repo.branches.get(rev)
                if commit is None:
                    self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
                    return None
                return repo, commit

            def do_GET(self) -> None:
                self._route()

            def do_HEAD(self) -> None:
                self._route()

            def _route(self) -> None:
                parts = urlsplit(self.path)
                path = unquote(parts.path)
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
                if m and self.command == "GET":
                    return self._model_info(m.group(1), m.group(2), "blobs=true" in parts.query.lower())
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
                if m and self.command == "GET":
                    return self._tree(m.group(1), m.group(2))
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m and not cdn:
                    return self._resolve(m.group(1), m.group(2), m.group(3))
                m = re.fullmatch(r"/blobs/([0-9a-f]{64})", path)
                if m and cdn:
                    return self._blob(m.group(1))
                self._error(404, None, "no such route")
                return None

            def _model_info(self, name: str, rev: str, blobs: bool) -> None:
                found = self._repo(name, rev)
                if found is None:
                    return
                repo, commit = found
                siblings = []
                for path, data in sorted(repo.files.items()):
                    sib: dict[str, Any] = {"rfilename": path}
                    if blobs:
                        if repo.sizes:
                            sib["size"] = len(data)
                        sib["blobId"] = repo.blob_id(path)
                        if repo.is_lfs(path):
                            sib["lfs"] = {
                                "sha256": hashlib.sha256(data).hexdigest(),
                                "size": len(data),
                                "pointerSize": 134,
                            }
                    siblings.append(sib)
                self._json(
                    {
                        "id": name,
                        "modelId": name,
                        "sha": commit,
                        "private": repo.token is not None,
                        "siblings": siblings,
                    }
                )

            def _tree(self, name: str, rev: str) -> None:
                found = self._repo(name, rev)
                if found is None:
                    return
                repo, _ = found
                entries = []
                for path, data in sorted(repo.files.items()):
                    entry: dict[str, Any] = {
                        "type": "file",
                        "oid": repo.blob_id(path),
                        "size": len(data),
                        "path": path,
                    }
                    if repo.is_lfs(path):
                        entry["lfs"] = {
                            "oid": hashlib.sha256(data).hexdigest(),
                            "size": len(data),
                            "pointerSize": 134,
                        }
                    entries.append(entry)
                self._json(entries)

            def _resolve(self, name: str, rev: str, path: str) -> None:
                found = self._repo(name, rev)
                if found is None:
                    return
                repo, commit = found
                data = repo.files.get(path)
                if data is None or path in server.faults.missing:
                    self._error(404, "EntryNotFound", f"{path} does not exist on {rev}")
                    return
                if repo.is_lfs(path) and server.cdn is not None:
                    # As the hub does: LFS files redirect to a storage host of another origin. The file's
                    # metadata rides on the redirect; the client then GETs the CDN without the token.
                    sha = hashlib.sha256(data).hexdigest()
                    server.blobs[sha] = (name, path)
                    self.send_response(302)
                    self.send_header("Location", f"{server.cdn.url}/blobs/{sha}")
                    self.send_header("X-Repo-Commit", commit)
                    self.send_header("ETag", f'"{git_blob_id(data)}"')
                    self.send_header("X-Linked-Etag", f'"{sha}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = hashlib.sha256(data).hexdigest() if repo.is_lfs(path) else git_blob_id(data)
                lfs = repo.is_lfs(path)
                self._send_bytes(path, data, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}, lfs)

            def _send_bytes(self, path: str, data: bytes, headers: dict[str, str], lfs: bool) -> None:
                """Serve bytes with Range support and the injected faults."""
                if self.command == "GET":
                    with server._lock:
                        server.gets[path] += 1
                    if path in server.faults.corrupt:
                        data = bytes([data[0] ^ 0xFF]) + data[1:]
                    if path in server.faults.short:
                        # A whole, well-formed answer that is shorter than the file (a proxy's cut copy).
                        data = data[: server.faults.short[path]]
                start, end = 0, len(data) - 1
                status = 200
                rng = self.headers.get("range")
                if rng:
                    m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                    if m:
                        start = int(m.group(1))
                        end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
                        status = 206
                        if self.command == "GET":
                            server.ranges.append((path, rng))
                body = data[start : end + 1]
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if lfs:
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if self.command == "HEAD":
                    return
                drop = server.faults.drop_after.pop(path, None)
                if drop is not None and drop < len(body):
                    self.wfile.write(body[:drop])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                stall = server.faults.stall.get(path)
                if stall is not None:
                    half = len(body) // 2
                    self.wfile.write(body[:half])
                    self.wfile.flush()
                    server.faults.stalled.set()
                    stall.wait(30)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _blob(self, sha: str) -> None:
                """The CDN side: content-addressed, no token, no repo headers."""
                server.cdn_auth_seen.append(self.headers.get("authorization"))
                found = server.blobs.get(sha)
                repo = server.repos.get(found[0]) if found else None
                data = repo.files.get(found[1]) if (repo and found) else None
                if found is None or data is None:
                    self._error(404, None, "no such blob")
                    return
                # As the hub's storage host does: the file's name rides on Content-Disposition.
                name = found[1].rsplit("/", 1)[-1]
                disposition = f"inline; filename*=UTF-8''{name}; filename=\"{name}\";"
                self._send_bytes(
                    found[1], data, {"ETag": f'"{sha}"', "Content-Disposition": disposition}, False
                )

        return Handler
