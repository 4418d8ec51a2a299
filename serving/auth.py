"""API keys: every endpoint that writes needs one; clicks and reads do where configured.

Keys are stored hashed, never as themselves: a keys file holds one ``name:sha256hex`` line per
key (``#`` starts a comment), so a leaked keys file grants nothing. A request presents its key as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; its SHA-256 is compared with every
stored hash by :func:`hmac.compare_digest`, so the comparison time says nothing about how close a
guess was. With no keys file the write endpoints are off (403) rather than open, except for the
person at the machine: a service bound to loopback takes writes without a key from a request that
is local in every respect (:func:`request_is_local`), so tagging works on a fresh home.

The file comes from ``VSEARCH_API_KEYS_FILE`` or else the ``serving.api_keys_file`` setting; it is
read again when it changes, so a key added with ``vsearch api-key create`` (or a line deleted to
revoke one) takes effect without a restart. Keys are never logged; names are.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from vsearch_pipeline.core.text_files import TextFileError, numbered_lines

KEYS_ENV = "VSEARCH_API_KEYS_FILE"
LOCAL_WRITER = "this-machine"  # the name a write without a key is recorded under
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HASH_PATTERN = re.compile(r"^[0-9a-f]{64}$")

log = logging.getLogger("vsearch.serving.auth")


def hash_key(key: str) -> str:
    """The SHA-256 hex of a key: what the keys file stores instead of the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def keys_file_path(setting: str | None) -> Path | None:
    """The keys file in use: the environment variable wins over the setting; None when neither."""
    chosen = os.environ.get(KEYS_ENV) or setting
    return Path(chosen).expanduser() if chosen else None


def parse_keys(text: str | bytes, source: str = "keys file") -> dict[str, str]:
    """name -> SHA-256 hex from a keys file (its bytes, or its text). A BOM is dropped; a line
    that is malformed or not UTF-8 is skipped with a warning naming its line number only (it may
    hold a key pasted by mistake), and the other keys still work."""
    keys: dict[str, str] = {}
    for number, raw in numbered_lines(text, source, on_error=_warn_unreadable):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, digest = line.partition(":")
        digest = digest.strip().lower()
        if not NAME_PATTERN.match(name.strip()) or not _HASH_PATTERN.match(digest):
            log.warning("%s line %d is not name:sha256hex; skipped", source, number)
            continue
        keys[name.strip()] = digest
    return keys


def _warn_unreadable(error: TextFileError) -> None:
    log.warning("%s line %d is not UTF-8 text; skipped (save the file as UTF-8)", error.source,
                error.line)


def create_key(keys_file: Path, name: str) -> str:
    """Make a new random key, append `name:sha256` to the keys file (created with mode 0600) and
    return the key: the only time it exists outside the caller's hands."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"a key name is letters, digits, '.', '_', '@' or '-' (at most 64), "
                         f"got {name!r}")
    existing = parse_keys(keys_file.read_bytes(), str(keys_file)) if keys_file.exists() else {}
    if name in existing:
        raise ValueError(f"{keys_file} already has a key named {name!r}: pick another name, or "
                         "delete its line to revoke it first")
    key = secrets.token_urlsafe(32)
    keys_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(keys_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if f.tell() > 0 and not keys_file.read_bytes().endswith(b"\n"):
            f.write("\n")
        f.write(f"{name}:{hash_key(key)}\n")
    return key


class KeysFileUnreadable(RuntimeError):
    """The configured keys file exists but cannot be read (permissions, a folder, an I/O error):
    guarded endpoints stay closed, and say why."""


class ApiKeys:
    """The keys of a keys file, read again whenever the file changes."""

    def __init__(self, setting: str | None) -> None:
        self.setting = setting
        self._lock = threading.Lock()
        self._seen: tuple[str, int, int] | None = None  # (path, mtime_ns, size) last read
        self._keys: dict[str, str] = {}

    def current(self) -> dict[str, str] | None:
        """name -> hash, or None when no keys file is configured (or it does not exist)."""
        path = keys_file_path(self.setting)
        if path is None:
            return None
        try:
            stat = path.stat()
            seen = (str(path), stat.st_mtime_ns, stat.st_size)
            with self._lock:
                if seen != self._seen:
                    self._keys = parse_keys(path.read_bytes(), str(path))
                    self._seen = seen
                return self._keys
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("the API keys file %s cannot be read: %s", path, err.strerror or err)
            raise KeysFileUnreadable(f"the API keys file {path} cannot be read "
                                     f"({err.strerror or err}): guarded endpoints are closed "
                                     "until it can") from None

    def name_of(self, key: str) -> str | None:
        """The name of the key, or None (also while the keys file cannot be read). Every stored
        hash is compared, in constant time each."""
        try:
            keys = self.current() or {}
        except KeysFileUnreadable:
            return None
        digest = hash_key(key)
        found = None
        for name, stored in keys.items():
            if hmac.compare_digest(digest, stored):
                found = name
        return found


_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


def presented_keys(authorization: str | None, x_api_key: str | None) -> list[str]:
    """The keys a request carries: a Bearer token and an X-API-Key header, either or both."""
    scheme, _, token = (authorization or "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else ""
    return [k for k in (bearer, (x_api_key or "").strip()) if k]


def is_loopback(host: str | None) -> bool:
    """A bind address, client address or host name that only this machine reaches."""
    if not host:
        return False
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def request_is_local(request: Request) -> bool:
    """From this machine to this machine by name. The client's address is loopback; the Host
    header names loopback, so a page whose own name was rebound to 127.0.0.1 (DNS rebinding) is
    refused; an Origin, when the browser sends one, is loopback too, so another site open in the
    same browser cannot post to the service."""
    host = urlsplit("//" + request.headers.get("host", "")).hostname
    origin = request.headers.get("origin")
    return (is_loopback(request.client.host if request.client else None) and is_loopback(host)
            and (origin is None or is_loopback(urlsplit(origin).hostname)))


class WriteGuard:
    """A FastAPI dependency that lets a write through only with a valid API key; the key's name
    is its value and ``request.state.api_key_name``. Put it on every endpoint that writes (and on
    reads or clicks where they are private): ``@app.post(..., dependencies=[Depends(guard)])``.

    401 (with ``WWW-Authenticate: Bearer``) for a missing or unknown key; 503 while the keys file
    cannot be read. While there is no keys file: with ``local_without_key`` (the service is bound
    to loopback) a local request passes as :data:`LOCAL_WRITER`; everything else gets 403, so
    guarded endpoints are off rather than open.
    """

    def __init__(self, keys: ApiKeys, local_without_key: bool = False) -> None:
        self.keys = keys
        self.local_without_key = local_without_key

    def mode(self) -> str:
        """How writes are let in now: `api_key`, `this_machine` (no key needed from here) or
        `off`; the page shows the key field only for `api_key`."""
        try:
            configured = self.keys.current()
        except KeysFileUnreadable:
            return "api_key"
        if configured:
            return "api_key"
        return "this_machine" if self.local_without_key else "off"

    def __call__(
        self,
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        header_key: Annotated[str | None, Depends(_header)],
    ) -> str:
        try:
            configured = self.keys.current()
        except KeysFileUnreadable as err:
            raise HTTPException(503, str(err)) from None
        if not configured:
            return self._without_keys_file(request)
        presented = [k for k in (bearer.credentials if bearer else None, header_key) if k]
        name = next((n for n in map(self.keys.name_of, presented) if n), None)
        if name is None:
            _log_refusal(request, "an unknown API key" if presented else "no API key")
            raise HTTPException(401, "a valid API key is needed: 'Authorization: Bearer <key>' or "
                                     "'X-API-Key: <key>'", headers={"WWW-Authenticate": "Bearer"})
        request.state.api_key_name = name
        return name

    def _without_keys_file(self, request: Request) -> str:
        if self.local_without_key and request_is_local(request):
            request.state.api_key_name = LOCAL_WRITER
            return LOCAL_WRITER
        if self.local_without_key:
            _log_refusal(request, "not from this machine")
            raise HTTPException(403, "without an API keys file this service takes writes only "
                                     "from this machine; create a key with `vsearch api-key "
                                     "create NAME` to write from elsewhere")
        raise HTTPException(403, "this endpoint is disabled until an API keys file is "
                                 f"configured (serving.api_keys_file or {KEYS_ENV}; create a "
                                 "key with `vsearch api-key create NAME`)")


def _log_refusal(request: Request, why: str) -> None:
    client = request.client.host if request.client else "unknown"
    log.warning("refused %s %s from %s: %s", request.method, request.url.path, client, why)
