"""API keys per tenant (`snapcell serve --api-key-file FILE`).

The file holds one `tenant key` pair a line; `#` starts a comment. A key is either the secret
itself or `sha256:<64 hex digits>`, the SHA-256 of the secret (so the file need not hold
secrets). Tenant names are 1–64 characters of `[A-Za-z0-9._-]`; a tenant may have several keys.
Clients send `Authorization: Bearer <key>` or `X-API-Key: <key>`. Keys are compared by their
SHA-256 digests in constant time."""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from ..errors import ConfigurationError

TENANT = re.compile(r"[A-Za-z0-9._-]{1,64}")
HASHED = re.compile(r"sha256:([0-9a-f]{64})")
MIN_KEY = 16


class ApiKeys:
    """Digest of each key → tenant."""

    def __init__(self, keys: dict[bytes, str]) -> None:
        self._keys = keys

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "ApiKeys":
        """Parse a key file; ConfigurationError (with the line number) on anything malformed."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigurationError(f"cannot read the API key file {path}: {e}") from None
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, source: str = "API key file") -> "ApiKeys":
        """Parse the text of a key file."""
        keys: dict[bytes, str] = {}
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ConfigurationError(f"{source}:{n}: expected 'tenant key'")
            tenant, key = parts
            if not TENANT.fullmatch(tenant):
                raise ConfigurationError(f"{source}:{n}: bad tenant name {tenant[:80]!r}")
            m = HASHED.fullmatch(key)
            if m:
                digest = bytes.fromhex(m.group(1))
            else:
                if len(key) < MIN_KEY:
                    raise ConfigurationError(f"{source}:{n}: keys must be at least {MIN_KEY} "
                                             f"characters")
                digest = hashlib.sha256(key.encode("utf-8")).digest()
            if digest in keys:
                raise ConfigurationError(f"{source}:{n}: duplicate key")
            keys[digest] = tenant
        if not keys:
            raise ConfigurationError(f"{source}: no keys")
        return cls(keys)

    def tenant(self, key: str | None) -> str | None:
        """The tenant of `key`, None if it is not a valid key."""
        if not key:
            return None
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known, tenant in self._keys.items():     # no early exit: constant time in the key
            if hmac.compare_digest(known, digest):
                found = tenant
        return found

    def __len__(self) -> int:
        return len(self._keys)


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request presents, if any."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None
