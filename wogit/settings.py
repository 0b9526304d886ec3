"""Every setting of the server and its default, in one place.

Precedence: command-line flag > environment variable (WOGIT_*) > config file ([server]) > default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Settings:
    data: str = os.path.join(os.path.expanduser("~"), ".local", "share", "wogit", "registry.git")
    host: str = "127.0.0.1"
    port: int = 8080
    max_map_size: int = 64 * GiB
    max_config_size: int = 16 * MiB
    max_body_size: int = 1 * MiB  # tag JSON and metadata bodies
    threads: int = 32
    max_uploads: int = 0  # map and config uploads at once, per process (503 beyond); 0: threads - 4, at least 1
    workers: int = 1  # processes serving the port (forked, sharing one listening socket)
    backlog: int = 256  # connections the kernel queues before the server accepts them
    max_idle_connections: int = 256  # kept-alive connections waiting for their next request; more are closed
    timeout: float = 30.0  # seconds a connection may sit idle mid-request
    header_timeout: float = 10.0  # seconds a request's head (line and headers) may take, from its first byte
    shutdown_timeout: float = 30.0  # seconds to finish requests in flight on SIGTERM
    max_header_size: int = 64 * KiB
    fsync: bool = True
    auth_file: str = ""  # an htpasswd file of users; empty: no authentication
    tls_cert: str = ""  # PEM certificate (chain) and key: serve HTTPS
    tls_key: str = ""
    max_login_failures: int = 10  # failed logins from one address within the window before 429
    login_failure_window: float = 60.0
    hook_timeout: float = 60.0  # seconds an operator's wo-validate-* hook may run before it is killed
    replica_of: str = ""  # the primary's base URL: serve reads from a copy of it, refuse writes
    replica_interval: float = 5.0  # seconds between a replica's fetches (it also fetches when notified)
    replica_user: str = ""  # credentials of the replica on the primary (HTTP Basic)
    replica_password_file: str = ""  # a file holding that user's password
    push_mirrors: tuple[str, ...] = ()  # git remotes that get every change pushed
    mirror_interval: float = 30.0  # seconds between checks for changes made with git (pushes)
    notify: tuple[str, ...] = ()  # replicas' base URLs, told to fetch after every write
    log_format: str = "plain"  # the log's lines: "plain" text or "json" (one object a line)
    metrics_access: str = "read"  # GET /metrics: "read" (read on every repository) or "open" (anyone)
    health_access: str = "open"  # GET /healthz and /readyz: "open" (anyone) or "read"
    download_cache_size: int = 10 * GiB  # tarballs and inflated maps kept for sendfile (wogit.cache); 0: none

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, file: dict | None = None, **overrides) -> Settings:
        """Defaults, then the config file's ``file`` values, then ``WOGIT_<NAME>`` variables,
        then non-None ``overrides`` (the command line)."""
        environ = os.environ if environ is None else environ
        values = dict(file or {})
        for field in fields(cls):
            raw = environ.get("WOGIT_" + field.name.upper())
            if raw is not None:
                values[field.name] = _convert(field.name, raw, type(field.default))
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name, allowed in CHOICES.items():
            if name in values and values[name] not in allowed:
                raise SystemExit(f"wogit: {name} must be {' or '.join(allowed)}, not {values[name]!r}")
        return cls(**values)

    @property
    def upload_slots(self) -> int:
        """How many uploads run at once in a process: ``max_uploads``, or by default all the threads but
        4 (at least 1), so that reads always find a thread while uploads hold the rest."""
        return self.max_uploads if self.max_uploads > 0 else max(1, self.threads - 4)


#: Settings that take one of a few words.
CHOICES = {"log_format": ("plain", "json"), "metrics_access": ("read", "open"), "health_access": ("open", "read")}


def parse_size(text: str) -> int:
    """Bytes from ``2000``, ``512K``, ``512M``, ``64G``, ``1T`` (binary units; ``KiB``, ``MB`` also read)."""
    units = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": GiB * KiB}
    number = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = number[-1:] if number[-1:] in units else ""
    number = number[: len(number) - len(unit)]
    if not (number.isascii() and number.isdigit()):
        raise ValueError(f"not a size: {text!r} (e.g. 2000, 512M, 64G)")
    return int(number) * units[unit]


def _convert(name: str, raw: str, kind: type):
    if kind is tuple:
        return tuple(raw.split())  # a list of URLs, separated by whitespace
    if name.endswith("_size"):
        try:
            return parse_size(raw)
        except ValueError as exc:
            raise SystemExit(f"wogit: WOGIT_{name.upper()}: {exc}") from None
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SystemExit(f"wogit: WOGIT_{name.upper()}={raw!r} is not a boolean")
    try:
        return kind(raw)
    except ValueError:
        raise SystemExit(f"wogit: WOGIT_{name.upper()}={raw!r} is not a valid {kind.__name__}") from None
