"""Who may use the workbench: users from a file with scrypt-hashed passwords (a login form,
then a signed session cookie), or the user a trusted reverse proxy names in a header.

- The users file holds one ``name:hash`` per line (``#`` comments and blank lines allowed);
  ``edge-agent workbench hash-password NAME`` prints such a line. A third field gives roles,
  comma-separated: ``name:hash:quality`` may block and release (``ROLES``); a user without
  one reads only. A user a proxy names gets the roles the users file gives that name. The hash is
  ``scrypt$N$r$p$salt$key`` (base64), Python's ``hashlib.scrypt``: nothing to install.
- A session is ``name|expiry|hmac`` in an HttpOnly, SameSite=Strict cookie, signed with a key
  made when the workbench starts: a restart logs everyone out, which costs a login and keeps
  a key off the disk.
- The proxy header is honoured only on connections from ``--trusted-proxy`` addresses (the
  TCP peer, never an ``X-Forwarded-For`` a client could write).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("trace_store.web")

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1  # ~32 MiB and ~0.1 s per check: OWASP's minimum
SCRYPT_MAXMEM = 64 * 1024 * 1024
SESSION_COOKIE = "workbench_session"
SESSION_SECONDS = 12 * 3600  # a shift and then some
MAX_NAME = 64
QUALITY = "quality"
ROLES = frozenset({QUALITY})
"""``quality``: block and release lots, serials and products, sign recall reports off."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UsersFileError(ValueError):
    """The users file cannot be read or has a bad line (the message names it)."""


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=SCRYPT_MAXMEM
    )
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=SCRYPT_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def check_hash(stored: str) -> None:
    """Raise ValueError unless ``stored`` is a hash this module made."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a hash from 'edge-agent workbench hash-password'")
    try:
        int(parts[1]), int(parts[2]), int(parts[3])
        base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError as exc:
        raise ValueError(f"damaged hash ({exc})") from exc


def load_users(path: str | Path) -> dict[str, str]:
    """name -> hash from a users file. Raises UsersFileError naming the file and line."""
    return {name: stored for name, (stored, _) in _load(path).items()}


def load_roles(path: str | Path) -> dict[str, frozenset[str]]:
    """name -> roles from a users file (only users that have some)."""
    return {name: roles for name, (_, roles) in _load(path).items() if roles}


def _load(path: str | Path) -> dict[str, tuple[str, frozenset[str]]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersFileError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from exc
    users: dict[str, tuple[str, frozenset[str]]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        where = f"{path}:{number}"
        if not sep or not valid_name(name):
            raise UsersFileError(f"{where}: expected NAME:HASH (a name of 1-{MAX_NAME} letters)")
        # A hash holds no ':' (base64 and '$'): a third field is the roles.
        stored, _, listed = stored.partition(":")
        roles = frozenset(r.strip() for r in listed.split(",") if r.strip())
        try:
            check_hash(stored)
        except ValueError as exc:
            raise UsersFileError(f"{where}: {exc}") from exc
        if roles - ROLES:
            unknown = ", ".join(sorted(roles - ROLES))
            raise UsersFileError(f"{where}: unknown role {unknown} (roles: {', '.join(ROLES)})")
        if name in users:
            raise UsersFileError(f"{where}: user {name!r} twice")
        users[name] = (stored, roles)
    if not users:
        raise UsersFileError(f"{path}: no users in it")
    return users


def valid_name(name: str) -> bool:
    return 0 < len(name) <= MAX_NAME and all(c.isalnum() or c in "._@-" for c in name)


def parse_networks(values: Sequence[str]) -> list[Network]:
    """``--trusted-proxy`` values (an address or a network) as networks; ValueError names the
    bad one."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"--trusted-proxy {value!r}: not an IP address or network") from exc
    return out


@dataclass
class Access:
    """The workbench's access rules; ``user()`` decides each request."""

    users: Mapping[str, str] = field(default_factory=dict)
    proxy_header: str | None = None
    trusted: Sequence[Network] = ()
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    roles: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def has_role(self, user: str | None, role: str) -> bool:
        """Only named users have roles: an open workbench (no login) reads only."""
        return user is not None and role in self.roles.get(user, frozenset())

    @property
    def open(self) -> bool:
        """No login at all (bound to loopback without users or a proxy)."""
        return not self.users and self.proxy_header is None

    def trusted_peer(self, host: str | None) -> bool:
        if host is None:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self.trusted)

    def proxy_user(self, host: str | None, headers: Mapping[str, str]) -> str | None:
        """The user a trusted proxy names, or None."""
        if self.proxy_header is None or not self.trusted_peer(host):
            return None
        name = headers.get(self.proxy_header.lower(), "").strip()
        return name[:200] or None

    # ---- sessions --------------------------------------------------------------------------

    def login(self, name: str, password: str) -> bool:
        stored = self.users.get(name)
        if stored is None:
            # The same work as a real check: a wrong name takes as long as a wrong password.
            verify_password(password, _DUMMY_HASH)
            return False
        return verify_password(password, stored)

    def session_cookie(self, name: str, now: float | None = None) -> str:
        expiry = int((now if now is not None else time.time()) + SESSION_SECONDS)
        payload = f"{name}|{expiry}"
        return f"{payload}|{self._sign(payload)}"

    def session_user(self, cookie: str | None, now: float | None = None) -> str | None:
        if not cookie:
            return None
        name, _, rest = cookie.partition("|")
        expiry, _, signature = rest.partition("|")
        if not hmac.compare_digest(self._sign(f"{name}|{expiry}"), signature):
            return None
        try:
            if int(expiry) < (now if now is not None else time.time()):
                return None
        except ValueError:
            return None
        return name if name in self.users else None

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self.key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_DUMMY_HASH = "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 43 + "="
