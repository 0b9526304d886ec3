"""Who a client is: HTTP Basic credentials checked against an htpasswd file.

Users live in an Apache-compatible htpasswd file (``name:hash`` lines), so a file
made by ``htpasswd -B`` works as-is and ``wogit user`` edits the same format.
Only bcrypt hashes log in: the older kinds (MD5, SHA-1, crypt, plain) are weak
enough that accepting them would make the file's strength its weakest line.

What each piece guards against:

- ``parse_basic`` turns every malformed header into ``ValueError`` (a 401 for
  the server, never a 500) and never puts credentials in the message.
- ``Users.check`` costs one bcrypt check whether or not the user exists, so
  timing does not tell an attacker which names are real; verified credentials
  are cached so a client sending the same header on every request pays bcrypt
  once, and the cache key holds the stored hash, so a changed password or a
  removed user stops matching at once.
- ``Users`` re-reads the file when it changes: ``htpasswd`` rewrites it in place
  with lines of equal length, so size and inode stay and only the modification
  time in nanoseconds tells.
- ``Throttle`` counts failed logins per client address, in bounded memory.
- ``add_user``/``remove_user`` rewrite the file atomically, mode 0600, under a
  lock, keeping every other line and comment in order.
"""

from __future__ import annotations

import base64
import binascii
import collections
import fcntl
import functools
import hashlib
import hmac
import math
import os
import re
import secrets
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable

import bcrypt

#: bcrypt hashes as htpasswd (``$2y$``) and the bcrypt package (``$2b$``, ``$2a$``) write them.
_BCRYPT = re.compile(rb"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
#: bcrypt looks at this many bytes of a password; the bcrypt package raises beyond it.
BCRYPT_MAX_BYTES = 72
DEFAULT_COST = 12
#: How often the file's stat is compared at most, in seconds.
POLL_SECONDS = 0.5
#: A file modified this recently (seconds) may change again within the same timestamp: read it again.
RACY_SECONDS = 2.0
MAX_CACHED = 10_000
MAX_NAME_LENGTH = 128


# -- the Authorization header ---------------------------------------------------

def parse_basic(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from ``Basic <base64>``; None without a header; ValueError if malformed.

    The user name ends at the first ``:``, so passwords may contain ``:``.
    """
    if not header:
        return None
    parts = header.split(None, 1)
    if not parts or parts[0].lower() != "basic":
        raise ValueError("not Basic authentication")
    if len(parts) < 2:
        raise ValueError("no credentials after Basic")
    try:
        decoded = base64.b64decode(parts[1].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("credentials are not valid base64") from None
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("credentials are not UTF-8") from None
    user, colon, password = text.partition(":")
    if not colon:
        raise ValueError("no ':' between user name and password")
    return user, password


# -- checking passwords -----------------------------------------------------------

def _secret(password: str) -> bytes:
    # htpasswd truncates to 72 bytes the same way, so long passwords it made still match.
    return password.encode("utf-8", "surrogatepass")[:BCRYPT_MAX_BYTES]


def _cost(stored: bytes) -> int:
    return int(stored[4:6])


@functools.cache
def _dummy_hash(cost: int) -> bytes:
    """A hash nobody knows the password of, so an unknown user costs a real bcrypt check."""
    return bcrypt.hashpw(secrets.token_bytes(32), bcrypt.gensalt(cost))


class Users:
    """The users of an htpasswd file, re-read when the file changes.

    ``problems`` lists what was wrong in the file at the last read (never a hash);
    ``verifications`` counts bcrypt checks (for tests and metrics).
    """

    def __init__(self, path: str):
        self.path = path
        self.problems: list[str] = []
        self.verifications = 0
        self._lock = threading.Lock()
        self._users: dict[str, tuple[bytes, bool]] = {}  # name -> (hash, is bcrypt)
        self._cost = DEFAULT_COST
        # Keyed hash of the password: the cache never holds a password or a plain hash of one.
        self._key = secrets.token_bytes(32)
        self._verified: collections.OrderedDict[tuple[str, bytes, bytes], None] = collections.OrderedDict()
        self._signature: tuple | None = None
        self._polled = -math.inf
        with self._lock:
            self._refresh(force=True)

    def cached(self, name: str, password: str) -> bool:
        """True if these credentials were verified before and are still current (no bcrypt)."""
        with self._lock:
            self._refresh()
            stored, usable = self._users.get(name, (b"", False))
            return usable and (name, stored, self._digest(password)) in self._verified

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def check(self, name: str, password: str) -> bool:
        """True if ``password`` is ``name``'s; one bcrypt check unless cached, known user or not."""
        secret = _secret(password)
        digest = self._digest(password)
        with self._lock:
            self._refresh()
            stored, usable = self._users.get(name, (b"", False))
            key = (name, stored, digest)
            if usable and key in self._verified:
                self._verified.move_to_end(key)
                return True
            cost = self._cost
        ok = bcrypt.checkpw(secret, stored if usable else _dummy_hash(cost))
        with self._lock:
            self.verifications += 1
            if ok and usable:
                self._verified[key] = None
                while len(self._verified) > MAX_CACHED:
                    self._verified.popitem(last=False)
        return ok and usable

    def names(self) -> list[str]:
        """Every user in the file (non-bcrypt ones too), in file order."""
        with self._lock:
            self._refresh()
            return list(self._users)

    def _refresh(self, force: bool = False) -> None:
        # Caller holds the lock.
        now = time.monotonic()
        if not force and now - self._polled < POLL_SECONDS:
            return
        self._polled = now
        try:
            with open(self.path, "rb") as file:
                st = os.fstat(file.fileno())
                signature = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
                if signature == self._signature:
                    return
                data = file.read()
        except FileNotFoundError:
            if self._signature != "missing":
                self._load(b"", "missing", [f"{self.path} does not exist: no users"])
            return
        except OSError as exc:
            self._load(b"", "unreadable", [f"cannot read {self.path}: {exc.strerror}"])
            return
        if time.time_ns() - st.st_mtime_ns < RACY_SECONDS * 1e9:
            # Written so recently that another write may keep this timestamp: read again next poll.
            signature = None
        self._load(data, signature, [])

    def _load(self, data: bytes, signature, problems: list[str]) -> None:
        users: dict[str, tuple[bytes, bool]] = {}
        for number, raw in enumerate(data.splitlines(), 1):
            try:
                line = raw.decode("utf-8").rstrip()
            except UnicodeDecodeError:
                problems.append(f"line {number}: not UTF-8")
                continue
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, colon, stored = line.partition(":")
            if not colon or not name:
                problems.append(f"line {number}: not 'name:hash'")
                continue
            if name in users:
                problems.append(f"line {number}: user {name!r} again (the first line counts)")
                continue
            hashed = stored.encode("utf-8")
            usable = _BCRYPT.fullmatch(hashed) is not None
            if not usable:
                kind = "malformed bcrypt" if hashed.startswith(b"$2") else "non-bcrypt"
                problems.append(f"line {number}: user {name!r} has a {kind} hash")
            users[name] = (hashed, usable)
        costs = collections.Counter(_cost(h) for h, usable in users.values() if usable)
        # The most common cost (the highest of equals): an unknown user costs what most users cost.
        self._cost = max(costs, key=lambda c: (costs[c], c)) if costs else DEFAULT_COST
        self._users = users
        self._signature = signature
        self.problems = problems
        current = {(name, h) for name, (h, _) in users.items()}
        for key in [k for k in self._verified if k[:2] not in current]:
            del self._verified[key]


# -- brute force ----------------------------------------------------------------------

class Throttle:
    """Failed logins per client address: after ``max_failures`` within ``window`` seconds, wait.

    Each address keeps only its last ``max_failures`` failure times, and at most
    ``max_addresses`` addresses are tracked (the longest quiet are dropped first).
    """

    def __init__(self, max_failures: int = 10, window: float = 60.0, *,
                 max_addresses: int = 100_000, clock: Callable[[], float] = time.monotonic):
        if max_failures < 1 or window <= 0 or max_addresses < 1:
            raise ValueError("max_failures and max_addresses must be at least 1, window positive")
        self.max_failures = max_failures
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        self._lock = threading.Lock()
        # address -> recent failure times; ordered by last failure, oldest first.
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def __len__(self) -> int:
        """How many addresses are tracked."""
        with self._lock:
            return len(self._failures)

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until ``address`` may try again, or None if it may now."""
        with self._lock:
            times = self._failures.get(address)
            if times is None or len(times) < self.max_failures:
                return None
            wait = times[-self.max_failures] + self.window - self._clock()
            return math.ceil(wait) if wait > 0 else None

    def failure(self, address: str) -> None:
        with self._lock:
            now = self._clock()
            times = self._failures.pop(address, None)
            if times is None:
                times = collections.deque(maxlen=self.max_failures)
            times.append(now)
            self._failures[address] = times
            while self._failures:
                oldest = next(iter(self._failures.values()))
                if len(self._failures) <= self.max_addresses and oldest[-1] > now - self.window:
                    break
                self._failures.popitem(last=False)


# -- editing the file -------------------------------------------------------------------

def check_name(name: str) -> None:
    """ValueError unless ``name`` is a user name ``add_user`` writes."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"a user name has 1 to {MAX_NAME_LENGTH} characters")
    if ":" in name:
        raise ValueError("a user name cannot contain ':'")
    if any(c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name):
        raise ValueError("a user name cannot contain whitespace or control characters")
    if name.startswith("#"):
        raise ValueError("a user name cannot start with '#' (that line would be a comment)")
    if name == "*":
        raise ValueError("'*' means anonymous clients, it cannot be a user name")


def add_user(path: str, name: str, password: str, cost: int = DEFAULT_COST) -> bool:
    """Set ``name``'s password; True if the user was created, False if its hash was replaced."""
    check_name(name)
    if not password:
        raise ValueError("empty password")
    if "\0" in password:
        raise ValueError("a password cannot contain NUL characters")
    if not 4 <= cost <= 31:
        raise ValueError("bcrypt cost must be between 4 and 31")
    stored = bcrypt.hashpw(_secret(password), bcrypt.gensalt(cost))
    entry = name.encode("utf-8") + b":$2y$" + stored[4:] + b"\n"  # $2y$ like htpasswd -B

    def edit(lines: list[bytes]) -> tuple[list[bytes] | None, bool]:
        kept = [line for line in lines if not _names(line, name)]
        if len(kept) == len(lines):
            return kept + [entry], True
        first = next(i for i, line in enumerate(lines) if _names(line, name))
        return kept[:first] + [entry] + kept[first:], False

    return _rewrite(path, edit)


def remove_user(path: str, name: str) -> bool:
    """Remove ``name``; False if it was not in the file (or there is no file)."""
    if not name or any(c in name for c in ":\r\n"):
        raise ValueError("not a user name")

    def edit(lines: list[bytes]) -> tuple[list[bytes] | None, bool]:
        kept = [line for line in lines if not _names(line, name)]
        return (kept, True) if len(kept) < len(lines) else (None, False)

    return _rewrite(path, edit, create=False)


def list_users(path: str) -> list[str]:
    """The users in the file (no file: none), in file order."""
    users = Users(path)
    return users.names()


def _names(line: bytes, name: str) -> bool:
    return line.startswith(name.encode("utf-8") + b":")


def _rewrite(path: str, edit: Callable[[list[bytes]], tuple[list[bytes] | None, bool]],
             create: bool = True) -> bool:
    """Apply ``edit`` to the file's lines under a lock and return its verdict.

    ``edit`` returns the new lines (None: leave the file alone) and the verdict;
    new lines replace the file atomically.
    """
    path = os.path.realpath(path)  # a symlinked file stays a symlink
    directory = os.path.dirname(path)
    lock = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Every writer locks the directory: read-modify-write cycles never interleave.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path, "rb") as file:
                owner = os.fstat(file.fileno())
                lines = file.read().splitlines(keepends=True)
        except FileNotFoundError:
            if not create:
                return False
            owner, lines = None, []
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\n"
        lines, result = edit(lines)
        if lines is None:
            return result
        fd, temp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), 0o600)
                if owner is not None and os.geteuid() == 0:
                    os.fchown(out.fileno(), owner.st_uid, owner.st_gid)  # root editing a service's file
                out.writelines(lines)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise
        os.fsync(lock)
        return result
    finally:
        os.close(lock)
