"""API keys: made once and shown once, kept only as SHA-256 hashes; revoked by id.

A key reads `lg_<id>_<secret>`. The id finds its record without a scan and is safe to log; the
secret is 32 random bytes, so a plain SHA-256 (not a slow password hash) is what protects it.
The server's `KeyRing` re-reads the key file when it changes, so a revocation reaches new
sessions at once and open ones at their next check.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)
PREFIX = "lg"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    sha256: str
    created: float
    revoked: float | None = None


class KeyFileError(ValueError):
    pass


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def key_id(secret: str) -> str | None:
    """The id a presented key names, or None when it is not shaped like one of ours."""
    prefix, _, rest = secret.partition("_")
    ident, _, random_part = rest.partition("_")
    return ident if prefix == PREFIX and ident and random_part else None


def from_hash_entry(entry: str) -> ApiKey:
    """`<id>:<sha256 hex>`, as `livegen api-keys create` prints it for an environment variable."""
    ident, _, sha = entry.strip().partition(":")
    if not ident or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise KeyFileError(f"a key hash reads <id>:<64 hex digits>, got {entry[:80]!r}")
    return ApiKey(id=ident, name="environment", sha256=sha, created=0.0)


class KeyFile:
    """The JSON file of hashed keys that the CLI writes and the server reads."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, ApiKey]:
        if not self.path.exists():
            return {}
        try:
            records = json.loads(self.path.read_text())["keys"]
            return {record["id"]: ApiKey(**record) for record in records}
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"{self.path} is not a livegen key file: {exc}") from exc

    def create(self, name: str) -> tuple[str, ApiKey]:
        """A new key: the secret to show once, and its record (now in the file)."""
        keys = self.read()
        ident = secrets.token_hex(4)
        while ident in keys:
            ident = secrets.token_hex(4)
        secret = f"{PREFIX}_{ident}_{secrets.token_urlsafe(32)}"
        keys[ident] = ApiKey(id=ident, name=name, sha256=digest(secret), created=time.time())
        self._write(keys)
        return secret, keys[ident]

    def revoke(self, ident: str) -> ApiKey:
        keys = self.read()
        if ident not in keys:
            raise KeyFileError(f"no key {ident!r} in {self.path}")
        keys[ident] = replace(keys[ident], revoked=keys[ident].revoked or time.time())
        self._write(keys)
        return keys[ident]

    def _write(self, keys: dict[str, ApiKey]) -> None:
        """Atomically (a reader sees the old file or the new one), readable by the owner only."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".api-keys.")
        with os.fdopen(fd, "w") as out:
            json.dump({"keys": [asdict(key) for key in keys.values()]}, out, indent=1)
        os.replace(temporary, self.path)


class KeyRing:
    """The keys the server accepts: the file's (re-read when its modification time changes) and the environment's."""

    def __init__(self, path: Path, hash_entries: list[str]):
        self.file = KeyFile(path)
        self.fixed = {key.id: key for key in map(from_hash_entry, hash_entries)}
        self._stamp: tuple[int, int] | None = None
        self._from_file: dict[str, ApiKey] = {}
        self.reload()

    @property
    def configured(self) -> bool:
        """Any key, even a revoked one: once keys exist the server never falls back to keyless."""
        return bool(self.fixed or self._from_file)

    def reload(self) -> None:
        """Re-read the file if it changed since the last read (a stat per call: cheap enough to poll)."""
        try:
            status = self.file.path.stat()
            stamp = (status.st_mtime_ns, status.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            try:
                self._from_file = self.file.read() if stamp else {}
            except KeyFileError:  # a file half-edited by hand: keep serving the keys it held
                log.exception("API keys not re-read; the previous ones stay in force")
            self._stamp = stamp

    def find(self, secret: str) -> ApiKey | None:
        """The key this secret is (revoked or not), or None."""
        ident = key_id(secret) or ""
        key = self.fixed.get(ident) or self._from_file.get(ident)
        return key if key is not None and hmac.compare_digest(key.sha256, digest(secret)) else None

    def active(self, ident: str) -> bool:
        key = self.fixed.get(ident) or self._from_file.get(ident)
        return key is not None and key.revoked is None
