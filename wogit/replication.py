"""Replication with plain git: read replicas that fetch, push mirrors that push, and pokes.

- ``Replica`` keeps this registry's repository a copy of a primary's: it fetches
  ``refs/wo/*`` from the primary's ``/_git`` endpoint every ``interval`` seconds
  and whenever it is poked (the primary notifies its replicas after each write).
  A fetch is atomic (``--atomic``: all refs move or none) and checks every object
  (``transfer.fsckObjects``); the lag it reports is the time since the start of
  the last successful fetch, an upper bound on how stale its answers are.
- ``PushMirror`` pushes every change to a git remote (``+refs/wo/*`` with
  ``--prune``: ``push --mirror`` limited to the registry's refs) in the
  background, after each write and every ``interval`` seconds if the refs moved
  (pushes made with git count too); a failed push is retried with exponential
  backoff (1 s doubling up to 60 s; writes meanwhile wait for the next retry),
  logged and shown in the status, and never delays or fails a write.
- ``Notifier`` tells replicas to fetch now (``POST <replica>/_replica/refresh``).

Each runs one daemon thread; ``poke()`` never blocks, and pokes that arrive while
work is running are coalesced into one more round.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import subprocess
import threading
import time
import urllib.parse
import urllib.request

from wogit import names, objects

log = logging.getLogger("wogit")
REFSPEC = "+" + names.NAMESPACE + "*:" + names.NAMESPACE + "*"
GIT_TIMEOUT = 3600.0  # seconds one fetch or push may take (a first copy of a big registry is long)


def redact(url: str) -> str:
    """``url`` without a password, for logs and status."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class _Worker:
    """A daemon thread that runs ``work()`` when poked or every ``interval`` seconds."""

    def __init__(self, name: str, interval: float):
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def poke(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.next_wait())
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                self.work()
            except Exception:  # a worker never dies: it reports and tries again
                log.exception("%s failed", self._thread.name)

    def next_wait(self) -> float:
        return self.interval

    def work(self) -> None:
        raise NotImplementedError


def _git(git_dir: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "--git-dir", git_dir, *args], capture_output=True, text=True,
                          env={**objects.GIT_ENV, **(env or {})}, timeout=GIT_TIMEOUT, check=False)


def _error(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stderr or "").splitlines() if line.strip()]
    return " / ".join(lines[-3:]) or f"exit status {result.returncode}"


def _credentials_env(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its user and password, and the environment that gives them to git
    (an Authorization header in git's config from the environment: no command line shows it)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.username is None:
        return url, {}
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    user, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), _basic_env(user, password)


def _basic_env(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}"}


class Replica(_Worker):
    """This registry as a read replica of ``primary`` (its base URL)."""

    def __init__(self, git_dir: str, primary: str, interval: float = 5.0,
                 user: str | None = None, password: str | None = None):
        super().__init__("wogit-replica", interval)
        self.git_dir = git_dir
        self.primary = primary.rstrip("/")
        self.remote = self.primary + "/_git"
        self._env = {"GIT_TERMINAL_PROMPT": "0"}
        if user:  # in the environment, not the command line: other users' `ps` cannot see it
            self._env.update(_basic_env(user, password or ""))
        self._lock = threading.Lock()
        self.last_success: float | None = None  # start time of the last successful fetch
        self.last_attempt: float | None = None
        self.last_error: str | None = None
        self.fetches = 0
        self.failures = 0

    def fetch(self) -> bool:
        """Fetch now (one at a time); True if the replica is now as new as the primary was at the start."""
        with self._lock:
            started = time.time()
            self.last_attempt = started
            # Objects are checked as they arrive and kept as the pack they came in (exploding a
            # small pack into loose objects would compress every map a second time).
            result = _git(self.git_dir, "-c", "transfer.fsckObjects=true", "-c", "transfer.unpackLimit=1",
                          "-c", "gc.auto=0", "fetch",
                          "--quiet", "--atomic", "--prune", "--no-tags", "--no-write-fetch-head",
                          self.remote, REFSPEC, env=self._env)
            if result.returncode == 0:
                self.last_success, self.last_error = started, None
                self.fetches += 1
                return True
            self.failures += 1
            self.last_error = _error(result)
            log.warning("replica: fetching from %s failed: %s", redact(self.remote), self.last_error)
            return False

    def work(self) -> None:
        self.fetch()

    def lag(self) -> float | None:
        return None if self.last_success is None else round(time.time() - self.last_success, 3)

    def status(self) -> dict:
        return {"primary": redact(self.primary), "interval_seconds": self.interval, "lag_seconds": self.lag(),
                "last_fetch": _iso(self.last_success), "last_attempt": _iso(self.last_attempt),
                "last_error": self.last_error, "fetches": self.fetches, "failures": self.failures}


class PushMirror(_Worker):
    """Pushes the registry's refs to ``url`` whenever they change, retrying with backoff."""

    def __init__(self, git_dir: str, url: str, interval: float = 30.0,
                 min_backoff: float = 1.0, max_backoff: float = 60.0):
        super().__init__(f"wogit-mirror-{redact(url)}", interval)
        self.git_dir = git_dir
        self.url = url
        self.remote, credentials = _credentials_env(url)
        self._env = {"GIT_TERMINAL_PROMPT": "0", **credentials}
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.backoff = 0.0  # seconds between retries after a failure; 0 while healthy
        self.retry_at = 0.0  # no attempt before this (time.monotonic()), whatever pokes arrive
        self.pushed_state: str | None = None  # the refs as last pushed (a hash of for-each-ref)
        self.last_success: float | None = None
        self.last_attempt: float | None = None
        self.last_error: str | None = None
        self.pushes = 0
        self.failures = 0

    def next_wait(self) -> float:
        return max(0.0, self.retry_at - time.monotonic()) if self.backoff else self.interval

    def work(self) -> None:
        if time.monotonic() < self.retry_at:
            return  # backing off: the change goes out with the next retry
        state = _refs_state(self.git_dir)
        if state == self.pushed_state:
            return
        self.last_attempt = time.time()
        result = _git(self.git_dir, "push", "--porcelain", "--prune", self.remote, REFSPEC, env=self._env)
        if result.returncode == 0:
            self.pushed_state, self.last_success, self.last_error, self.backoff = state, time.time(), None, 0.0
            self.pushes += 1
            return
        self.failures += 1
        self.last_error = _error(result)
        self.backoff = min(self.max_backoff, max(self.min_backoff, self.backoff * 2))
        self.retry_at = time.monotonic() + self.backoff
        log.warning("push mirror %s: push failed (retrying in %g s): %s", redact(self.url), self.backoff,
                    self.last_error)

    def status(self) -> dict:
        return {"url": redact(self.url), "in_sync": self.pushed_state is not None and self.last_error is None,
                "last_push": _iso(self.last_success), "last_attempt": _iso(self.last_attempt),
                "last_error": self.last_error,
                "retry_in_seconds": round(max(0.0, self.retry_at - time.monotonic()), 3) if self.backoff else None,
                "pushes": self.pushes, "failures": self.failures}


def _refs_state(git_dir: str) -> str:
    out = _git(git_dir, "for-each-ref", "--format=%(objectname) %(refname)", names.NAMESPACE).stdout
    return hashlib.sha256(out.encode()).hexdigest()


class Notifier(_Worker):
    """Asks replicas to fetch now; best effort (they poll anyway)."""

    def __init__(self, replicas: list[str], timeout: float = 2.0):
        super().__init__("wogit-notify", 3600.0)
        self.replicas = [url.rstrip("/") for url in replicas]
        self.timeout = timeout
        self._pending = False

    def poke(self) -> None:
        self._pending = True
        super().poke()

    def work(self) -> None:
        if not self._pending:
            return
        self._pending = False
        for url in self.replicas:
            try:
                request = urllib.request.Request(url + "/_replica/refresh", data=b"", method="POST")
                urllib.request.urlopen(request, timeout=self.timeout).close()
            except OSError as exc:
                log.info("notifying replica %s failed (it will catch up on its own): %s", redact(url), exc)


class Replication:
    """What this registry replicates: a primary (if it is a replica), push mirrors, replicas to notify."""

    def __init__(self, replica: Replica | None = None, mirrors: list[PushMirror] | None = None,
                 notifier: Notifier | None = None):
        self.replica = replica
        self.mirrors = list(mirrors or [])
        self.notifier = notifier

    def _workers(self) -> list[_Worker]:
        return [w for w in (self.replica, *self.mirrors, self.notifier) if w is not None]

    def start(self) -> None:
        for worker in self._workers():
            worker.start()
        for mirror in self.mirrors:
            mirror.poke()  # catch up with what changed while the server was down

    def stop(self) -> None:
        for worker in self._workers():
            worker.stop()

    def changed(self) -> None:
        """The registry's refs changed (a write): push and notify, in the background."""
        for mirror in self.mirrors:
            mirror.poke()
        if self.notifier is not None:
            self.notifier.poke()

    @property
    def role(self) -> str:
        return "replica" if self.replica is not None else "primary"

    def summary(self) -> dict:
        """For ``GET /v1``: the role, and for a replica its primary and lag."""
        if self.replica is None:
            return {"role": "primary"}
        return {"role": "replica", "primary": redact(self.replica.primary), "lag_seconds": self.replica.lag()}

    def status(self) -> dict:
        return {"role": self.role, "replica": self.replica.status() if self.replica else None,
                "push_mirrors": [m.status() for m in self.mirrors],
                "notify": [redact(url) for url in (self.notifier.replicas if self.notifier else [])]}
