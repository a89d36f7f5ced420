"""Bearer tokens (hashed at rest), owner names and a per-token rate limit.

Tokens are 256 random bits, so a plain SHA-256 is a sufficient at-rest hash (there is nothing
to brute-force); lookups go by hash and the match is re-checked with ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
import uuid

from sqlalchemy import Engine, insert, select

from api.db.engine import db_now
from api.db.tables import TokenRow

TOKEN_PREFIX = "ap_"
OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
tokens = TokenRow.__table__


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Create tokens and resolve them to owners.

    Valid tokens are remembered for ``remember_s`` (at most ``MAX_REMEMBERED``), so a client
    polling a job costs no token query per request; unknown tokens are never remembered (a flood
    of made-up tokens cannot grow the memory). Tokens are never revoked today; if they are,
    a revocation takes effect within ``remember_s``.
    """

    MAX_REMEMBERED = 10_000

    def __init__(self, engine: Engine, remember_s: float = 60.0) -> None:
        self.engine = engine
        self.remember_s = remember_s
        self._recent: dict[str, tuple[str, float]] = {}  # token hash -> (owner, remembered until)
        self._lock = threading.Lock()

    def recent_owner(self, token: str) -> str | None:
        """The owner of ``token`` if it was resolved within ``remember_s``; None: ask ``owner_of``."""
        digest = hash_token(token)
        with self._lock:
            found = self._recent.get(digest)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    def create(self, owner: str) -> str:
        """A new token for ``owner``; the raw token is returned once and never stored."""
        if not OWNER_RE.match(owner):
            raise ValueError("owner must be 1-64 characters of letters, digits, '_', '.', '@' or '-'")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.engine.execution_options(write=True).begin() as conn:
            conn.execute(insert(tokens).values(
                id=uuid.uuid4().hex, owner=owner, token_hash=hash_token(token), created_at=db_now(self.engine)
            ))  # fmt: skip
        return token

    def owner_of(self, token: str) -> str | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        digest = hash_token(token)
        with self.engine.begin() as conn:
            row = conn.execute(select(tokens.c.owner, tokens.c.token_hash).where(tokens.c.token_hash == digest)).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        with self._lock:
            if len(self._recent) >= self.MAX_REMEMBERED:
                self._recent.clear()
            self._recent[digest] = (str(row.owner), time.monotonic() + self.remember_s)
        return str(row.owner)


class RateLimiter:
    """A token bucket per key: ``per_minute`` sustained, bursts up to the same number.

    In-process: each API process limits on its own (put a proxy limit in front of several).
    """

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        """0 when allowed; otherwise the seconds to wait before the next request is."""
        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.get(key, (self.capacity, now))
            level = min(self.capacity, level + (now - last) * self.rate)
            if level >= 1.0:
                self._buckets[key] = (level - 1.0, now)
                return 0.0
            self._buckets[key] = (level, now)
            return (1.0 - level) / self.rate
