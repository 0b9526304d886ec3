"""Where the client finds its registry and its credentials.

The registry URL comes from, in order: ``--registry URL``, the ``WOGIT_REGISTRY``
variable, ``registry = "..."`` in the user's config file
(``$XDG_CONFIG_HOME/wogit/client.toml``, else ``~/.config/wogit/client.toml``), and
last ``http://127.0.0.1:8080`` (what ``wogit serve`` listens on by default).

Credentials come from, in order: a ``user:password@`` part of the URL, the
``WOGIT_USER`` and ``WOGIT_PASSWORD`` variables, the netrc file (``$NETRC``, else
``~/.netrc``) entry of the registry's host, and last a prompt — only once the
server has answered 401 and only when standard input is a terminal. A password
is never echoed, printed, or put in a message: ``Credentials`` hides it from
``repr`` and ``Registry.url`` never holds it.
"""

from __future__ import annotations

import getpass
import netrc
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

DEFAULT_REGISTRY = "http://127.0.0.1:8080"
REGISTRY_VARIABLE = "WOGIT_REGISTRY"
USER_VARIABLE = "WOGIT_USER"
PASSWORD_VARIABLE = "WOGIT_PASSWORD"


@dataclass(frozen=True)
class Credentials:
    """A user and password for HTTP Basic; ``repr`` never shows the password."""

    user: str
    password: str = field(repr=False)

    def as_tuple(self) -> tuple[bytes, bytes]:
        """For requests' ``auth=``: UTF-8 bytes, as the registry reads them (requests would send latin-1)."""
        return self.user.encode(), self.password.encode()


@dataclass(frozen=True)
class Registry:
    """A registry's base URL (without credentials) and the credentials found for it."""

    url: str
    credentials: Credentials | None = None


class ConfigError(ValueError):
    """The client's configuration cannot be used (a usage error)."""


def config_file() -> Path:
    """The user's client config file (it need not exist)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "wogit" / "client.toml"


def registry_url(flag: str | None = None) -> str:
    """The registry URL: the flag, else the variable, else the config file, else the default."""
    if flag:
        return flag
    if os.environ.get(REGISTRY_VARIABLE):
        return os.environ[REGISTRY_VARIABLE]
    path = config_file()
    if path.is_file():
        try:
            with open(path, "rb") as file:
                url = tomllib.load(file).get("registry")
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        if url is not None and not isinstance(url, str):
            raise ConfigError(f"{path}: registry must be a string")
        if url:
            return url
    return DEFAULT_REGISTRY


def resolve(flag: str | None = None) -> Registry:
    """The registry to talk to and the credentials found for it without asking anyone."""
    url = registry_url(flag)
    wrong = ConfigError(f"the registry URL must be http:// or https:// with a host (and a port from 1 to 65535), "
                        f"not {_without_password(url)!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # an unclosed [ of an IPv6 address, a port that is not a number or too big
        raise wrong from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise wrong
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port:
        netloc += f":{parts.port}"
    bare = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    if parts.username is not None:
        return Registry(bare, Credentials(unquote(parts.username), unquote(parts.password or "")))
    return Registry(bare, from_environment() or from_netrc(parts.hostname))


def from_environment() -> Credentials | None:
    """``WOGIT_USER`` and ``WOGIT_PASSWORD``: both, or neither (then the netrc file is read)."""
    user, password = os.environ.get(USER_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    if not user and password is None:
        return None
    if not user or password is None:
        given, missing = (USER_VARIABLE, PASSWORD_VARIABLE) if user else (PASSWORD_VARIABLE, USER_VARIABLE)
        raise ConfigError(f"{given} is set but {missing} is not: set both, or neither (to use the netrc file)")
    return Credentials(user, password)


def from_netrc(host: str) -> Credentials | None:
    """The netrc entry of ``host`` (or its ``default`` entry), from ``$NETRC`` or ``~/.netrc``."""
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    if not os.path.lexists(path):
        return None
    if not os.path.isfile(path):
        raise ConfigError(f"the netrc file {path} is not a file")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError) as exc:
        # The parser's message may quote a line of the file, which can hold a password.
        raise ConfigError(f"cannot read the netrc file {path} (line {getattr(exc, 'lineno', '?')})") from None
    if not entry:
        return None
    login, _account, password = entry
    return Credentials(login, password or "")


def prompt(url: str) -> Credentials | None:
    """Ask for a user and password on the terminal; None when standard input is not one."""
    if not sys.stdin.isatty():
        return None
    try:
        print(f"Login for {url}", file=sys.stderr)
        sys.stderr.write("User: ")
        sys.stderr.flush()
        user = sys.stdin.readline().strip()
        if not user:
            return None
        return Credentials(user, getpass.getpass("Password: "))
    except (EOFError, KeyboardInterrupt):
        return None


def _without_password(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.rsplit("@", 1)[-1] if "@" in url else url
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
