"""Every setting of the server and its default, in one place.

Precedence: command-line flag > environment variable (WOGIT_*) > default.
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
    max_small_body: int = 1 * MiB  # tag JSON and metadata bodies
    threads: int = 16
    backlog: int = 256  # connections the kernel queues before the server accepts them
    timeout: float = 30.0  # seconds a connection may sit idle mid-request
    shutdown_timeout: float = 30.0  # seconds to finish requests in flight on SIGTERM
    max_header_size: int = 64 * KiB
    fsync: bool = True

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> Settings:
        """Defaults, then ``WOGIT_<NAME>`` variables, then non-None ``overrides``."""
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            raw = environ.get("WOGIT_" + field.name.upper())
            if raw is not None:
                values[field.name] = _convert(field.name, raw, type(field.default))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _convert(name: str, raw: str, kind: type):
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
