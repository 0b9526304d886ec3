"""``wogit.client.Client``: the registry's HTTP API as a typed Python API.

Push uploads a map and a config (each only when the registry lacks its digest),
tags them and sets metadata; pull downloads a tag's map and config into a
directory, resuming a partial download (``map.part``) with a ``Range`` request,
verifying each sha256 digest before the file gets its final name. Maps stream
in chunks both ways: they are never held in memory. Lists follow the ``Link:
<...>; rel="next"`` header until the last page.

Every failure is a ``ClientError`` carrying the server's ``msg``; its subclass
says what kind of failure it was (``NotFound``, ``AuthenticationFailed``, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urljoin

import requests
import urllib3

from wogit import __version__, client_config
from wogit.client_config import DEFAULT_REGISTRY, Credentials

CHUNK = 1 << 16  # what a download writes (and flushes) at a time: a killed run keeps all but the last chunk
MAP, CONFIG = "map", "config"
_ROUTE = {MAP: "blobs", CONFIG: "configs"}
_DIGEST_HEADER = {MAP: "Wo-Map-Digest", CONFIG: "Wo-Config-Digest"}
BUSY_WAIT = 60.0  # seconds a request waits in all, as 503 answers' Retry-After ask, before giving up


# -- errors -------------------------------------------------------------------------

class ClientError(Exception):
    """A request failed; ``msg`` is the server's own message where it sent one."""

    exit_code = 1

    def __init__(self, msg: str, status: int | None = None):
        super().__init__(msg)
        self.msg = msg
        self.status = status


class NotFound(ClientError):
    exit_code = 3


class AuthenticationFailed(ClientError):
    """401 (no or wrong credentials), 403 (no permission) or 429 (too many failed logins)."""

    exit_code = 4


class Conflict(ClientError):
    exit_code = 5


class DigestMismatch(ClientError):
    """Downloaded bytes do not have the digest the registry named."""

    exit_code = 6


class ConnectionFailed(ClientError):
    """The registry could not be reached, or the connection broke."""

    exit_code = 7


class Refused(ClientError):
    """400: the registry refused the request as malformed (a name, a value, a time): a usage error."""

    exit_code = 2


_BY_STATUS = {400: Refused, 404: NotFound, 401: AuthenticationFailed, 403: AuthenticationFailed,
              429: AuthenticationFailed, 409: Conflict}


#: The most of an answer's body read into memory (maps and configs stream to files instead).
MAX_ANSWER = 16 << 20
MAX_ERROR = 64 << 10


def read_bounded(response: requests.Response, limit: int = MAX_ANSWER) -> bytes:
    """An answer's body, refusing one longer than ``limit`` (a broken or hostile server)."""
    body = bytearray()
    try:
        for chunk in response.iter_content(1 << 16):
            body += chunk
            if len(body) > limit:
                raise ClientError(f"the registry's answer to {response.request.method} {response.url} is "
                                  f"longer than {limit} bytes")
    except requests.exceptions.RequestException as exc:
        raise ConnectionFailed(f"the answer from {response.url} broke off: {_reason(exc)}") from None
    finally:
        response.close()
    return bytes(body)


def json_of(response: requests.Response, key: str | None = None, kind: type = dict):
    """An answer's JSON (its ``key``), checked to be of ``kind``; ClientError otherwise."""
    try:
        value = json.loads(read_bounded(response))
        if key is not None:
            value = value[key]
        if not isinstance(value, kind):
            raise TypeError
        return value
    except (ValueError, KeyError, TypeError):
        raise ClientError(f"the registry's answer to {response.request.method} {response.url} is not "
                          f"the JSON the API documents") from None


def _retry_after(response: requests.Response) -> float | None:
    """The seconds a Retry-After header asks to wait (None: none, or not a number of seconds)."""
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isascii() and value.isdigit() else None


def error_of(response: requests.Response) -> ClientError:
    """The ClientError for an error answer, with the server's ``msg``."""
    try:
        msg = json.loads(read_bounded(response, MAX_ERROR))["msg"]
        if not isinstance(msg, str):
            raise TypeError
    except (ValueError, KeyError, TypeError, ClientError):
        msg = f"{response.status_code} {response.reason}"
    if response.headers.get("Retry-After") and str(response.headers["Retry-After"]) not in msg:
        msg += f" (retry after {response.headers['Retry-After']} s)"
    return _BY_STATUS.get(response.status_code, ClientError)(msg, response.status_code)


# -- results ------------------------------------------------------------------------

@dataclass(frozen=True)
class Tag:
    repository: str
    map: str
    tag: str
    map_digest: str
    config_digest: str
    created: str


@dataclass(frozen=True)
class PushResult:
    repository: str
    map: str
    tag: str
    map_digest: str
    config_digest: str
    map_uploaded: bool      # False: the registry already had these bytes
    config_uploaded: bool
    tag_created: bool       # False: the tag already existed with these very digests
    metadata_set: list[str]
    metadata_ignored: list[str]


@dataclass(frozen=True)
class PullResult:
    repository: str
    map: str
    tag: str
    directory: str
    map_digest: str
    config_digest: str
    map_size: int
    config_size: int
    resumed_bytes: int      # bytes of map and config already on disk (.part or the final file)
    retries: int            # broken downloads resumed within this run


@dataclass(frozen=True)
class Metadata:
    values: dict[str, str]
    commit: str | None      # Wo-Metadata-Commit: the metadata commit whose state this is


@dataclass(frozen=True)
class MetadataValue:
    key: str
    value: str
    commit: str | None


@dataclass(frozen=True)
class HistoryEntry:
    time: str
    user: str | None
    action: str             # create-tag, delete-tag, set-metadata, delete-metadata, change-metadata (by git)
    commit: str
    tag: str | None = None
    keys: list[str] | None = None
    map_digest: str | None = None
    config_digest: str | None = None


@dataclass(frozen=True)
class _Transfer:
    size: int
    reused: int
    retries: int


class Progress:
    """What ``Client(progress=...)`` returns for each transfer: told of every chunk, then closed."""

    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


ProgressFactory = Callable[[str, int, int], Progress]  # (label, total bytes, bytes already done)


def file_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a file, read in chunks."""
    with open(path, "rb") as file:
        return "sha256:" + hashlib.file_digest(file, "sha256").hexdigest()


# -- the client ---------------------------------------------------------------------

class Client:
    """One registry. ``ask(url)`` is called once, on a 401 answered to a client without credentials,
    for credentials to retry with; ``progress`` makes a progress bar for each transfer; ``retries``
    is how often a broken download is resumed within one pull."""

    def __init__(self, url: str = DEFAULT_REGISTRY, credentials: Credentials | None = None, *,
                 ask: Callable[[str], Credentials | None] | None = None, progress: ProgressFactory | None = None,
                 page_size: int | None = None, retries: int = 5, timeout: tuple[float, float] = (10, 300)):
        self.url = url.rstrip("/")
        self.credentials = credentials
        self.ask = ask
        self.progress = progress
        self.page_size = page_size
        self.retries = retries
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"wogit/{__version__}"

    @classmethod
    def configured(cls, registry: str | None = None, **options) -> Client:
        """A client of the registry and credentials the ``wogit`` commands would use (``client_config``)."""
        found = client_config.resolve(registry)
        return cls(found.url, found.credentials, **options)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- push and pull ------------------------------------------------------------

    def push(self, repository: str, map: str, tag: str, map_file: str | os.PathLike,
             config_file: str | os.PathLike, metadata: dict[str, str] | None = None) -> PushResult:
        """Upload what the registry lacks, tag it (a tag that exists with the same digests is fine)
        and merge ``metadata`` into the map's."""
        map_digest, config_digest = file_digest(map_file), file_digest(config_file)
        proofs: dict[str, str] = {}
        map_uploaded = self._upload(MAP, map_file, map_digest, proofs)
        config_uploaded = self._upload(CONFIG, config_file, config_digest, proofs)
        tag_created = self._create_tag(repository, map, tag, map_digest, config_digest, proofs)
        changed = self.set_metadata(repository, map, metadata) if metadata else {"set": [], "ignored": []}
        return PushResult(repository, map, tag, map_digest, config_digest, map_uploaded, config_uploaded,
                          tag_created, changed["set"], changed["ignored"])

    def pull(self, repository: str, map: str, tag: str, directory: str | os.PathLike) -> PullResult:
        """Download the tag's ``map``, ``config`` and the map's ``metadata`` into ``directory``."""
        map_digest, config_digest = self.tag_digests(repository, map, tag)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        got_map = self._download(MAP, map_digest, directory / "map")
        got_config = self._download(CONFIG, config_digest, directory / "config")
        metadata = read_bounded(self._request("GET", _path(repository, map, "metadata")))
        _write_atomically(directory / "metadata", metadata)
        return PullResult(repository, map, tag, str(directory), map_digest, config_digest, got_map.size,
                          got_config.size, got_map.reused + got_config.reused, got_map.retries + got_config.retries)

    def tag_digests(self, repository: str, map: str, tag: str) -> tuple[str, str]:
        """(map digest, config digest) of a tag, from ``HEAD /<repository>/<map>/<tag>``."""
        response = self._request("HEAD", _path(repository, map, tag))
        return response.headers["Wo-Map-Digest"], response.headers["Wo-Config-Digest"]

    def has(self, kind: str, digest: str) -> bool:
        """Whether the registry holds (and lets this client read) a map or config of this digest."""
        response = self._request("HEAD", f"/{_ROUTE[kind]}/{digest}", expect=(200, 404))
        return response.status_code == 200

    def delete_tag(self, repository: str, map: str, tag: str) -> Tag:
        return _tag(json_of(self._request("DELETE", _path(repository, map, tag))))

    # -- metadata ------------------------------------------------------------------

    def metadata(self, repository: str, map: str, at: str | None = None) -> Metadata:
        """All of a map's metadata, now or as it was ``at`` a time or commit."""
        response = self._request("GET", _path(repository, map, "metadata"), params=_at(at))
        return Metadata(parse_metadata(read_bounded(response).decode("utf-8", "replace")),
                        response.headers.get("Wo-Metadata-Commit"))

    def metadata_value(self, repository: str, map: str, key: str, at: str | None = None) -> MetadataValue:
        response = self._request("GET", _path(repository, map, "metadata", key), params=_at(at))
        return MetadataValue(key, read_bounded(response).decode("utf-8", "replace"),
                             response.headers.get("Wo-Metadata-Commit"))

    def set_metadata(self, repository: str, map: str, values: dict[str, str]) -> dict[str, list[str]]:
        """Merge ``values`` into the map's metadata; the server's answer: ``{"set": [...], "ignored": [...]}``."""
        body = "".join(f"{key}={value}\n" for key, value in values.items()).encode()
        return json_of(self._request("PUT", _path(repository, map, "metadata"), body=lambda: body,
                                     headers={"Content-Type": "text/plain; charset=utf-8"}))

    def delete_metadata(self, repository: str, map: str, key: str) -> None:
        self._request("DELETE", _path(repository, map, "metadata", key))

    # -- lists ---------------------------------------------------------------------

    def repositories(self) -> Iterator[str]:
        return self._pages("/_catalog", "repositories")

    def maps(self, repository: str) -> Iterator[str]:
        return self._pages(_path("_catalog", repository), "maps")

    def tags(self, repository: str, map: str, sort: str | None = None) -> Iterator[Tag]:
        """The map's tags by name, or newest first with ``sort="time"``."""
        params = {"sort": sort} if sort else {}
        for item in self._pages(_path(repository, map, "_tags"), "tags", params):
            yield _tag({"repository": repository, "map": map, **item})

    def history(self, repository: str, map: str) -> Iterator[HistoryEntry]:
        """What happened to the map, newest first."""
        fields = HistoryEntry.__dataclass_fields__
        for item in self._pages(_path(repository, map, "_history"), "history"):
            yield HistoryEntry(**{name: value for name, value in item.items() if name in fields})

    def _pages(self, path: str, key: str, params: dict[str, str] | None = None) -> Iterator:
        params = dict(params or {})
        if self.page_size:
            params["n"] = str(self.page_size)
        url: str | None = self.url + path
        seen = set()
        while url:
            response = self._request("GET", url, params=params)
            following = response.links.get("next", {}).get("url")
            yield from json_of(response, key, list)
            url, params = (urljoin(response.url, following), None) if following else (None, None)
            if url and not url.startswith(self.url + "/"):  # credentials go to the registry only
                raise ClientError(f"the registry's next page is elsewhere: {url}")
            if url in seen:
                raise ClientError(f"the registry's pages loop: {url} comes again")
            seen.add(url)

    # -- transfers -----------------------------------------------------------------

    def _upload(self, kind: str, path: str | os.PathLike, digest: str, proofs: dict[str, str]) -> bool:
        """Upload a file unless the registry has its digest (readable by us); True when it was
        uploaded.  The registry's proof that we hold the bytes goes into ``proofs``, for the tag."""
        if self.has(kind, digest):
            return False
        size = os.path.getsize(path)

        def body():
            return _Reader(open(path, "rb"), size, self._bar(kind, size, 0))

        response = self._request("PUT", f"/{_ROUTE[kind]}/upload", body=body, expect=(201, 409),
                                 headers={"Content-Type": "application/octet-stream", _DIGEST_HEADER[kind]: digest})
        if response.headers.get("Wo-Upload-Proof"):
            proofs[f"{kind}_proof"] = response.headers["Wo-Upload-Proof"]
        response.close()
        return response.status_code == 201

    def _download(self, kind: str, digest: str, target: Path) -> _Transfer:
        """Download into ``target`` through ``target.part``, resuming what is on disk, retrying a
        broken connection from the bytes received; the file is renamed only once its digest matches."""
        if target.is_file() and file_digest(target) == digest:
            size = target.stat().st_size
            return _Transfer(size, size, 0)
        with _Part(target.with_name(target.name + ".part")) as part:
            reused = part.have
            for attempt in range(self.retries + 1):
                try:
                    size = self._fetch(kind, digest, part)
                    break
                except ConnectionFailed:
                    if attempt == self.retries:
                        raise
                    time.sleep(0.2 * (attempt + 1))
            matches = part.digest() == digest
        if not matches:
            part.path.unlink()
            raise DigestMismatch(f"the downloaded {kind} is not {digest}; removed it, try again")
        os.replace(part.path, target)
        return _Transfer(size, min(reused, size), attempt)

    def _fetch(self, kind: str, digest: str, part: _Part) -> int:
        """One GET of the rest of a download, appended to ``part``; returns the whole size."""
        headers = {"Accept-Encoding": "identity"}  # byte ranges of the bytes themselves
        if part.have:
            headers.update({"Range": f"bytes={part.have}-", "If-Range": f'"{digest}"'})
        response = self._request("GET", f"/{_ROUTE[kind]}/{digest}", headers=headers, stream=True,
                                 expect=(200, 206, 416))
        with response:
            if response.status_code == 416:  # the part is as long as the file, or longer
                size = int(response.headers.get("Content-Range", "*/-1").rsplit("/", 1)[1])
                if part.have == size:
                    return size
                part.restart()
                return self._fetch(kind, digest, part)
            if response.status_code == 200:
                part.restart()
                size = int(response.headers["Content-Length"])
            else:
                first, size = _content_range(response.headers.get("Content-Range", ""))
                if first != part.have:
                    raise ClientError(f"the registry answered bytes from {first}, not {part.have}")
            bar = self._bar(kind, size, part.have)
            # read1 hands over what has arrived, so a broken connection loses none of it.
            read = getattr(response.raw, "read1", response.raw.read)
            try:
                while part.have < size and (chunk := read(min(CHUNK, size - part.have))):
                    part.append(chunk)
                    bar.update(len(chunk))
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ConnectionFailed(f"the connection broke after {part.have} bytes of the {kind}: "
                                       f"{_reason(exc)}") from None
            finally:
                bar.close()
            if part.have != size:
                raise ConnectionFailed(f"the {kind} ended after {part.have} of {size} bytes")
        return size

    def _bar(self, label: str, total: int, initial: int) -> Progress:
        return self.progress(label, total, initial) if self.progress else Progress()

    # -- requests ------------------------------------------------------------------

    def _request(self, method: str, path: str, *, expect: tuple[int, ...] = (200,),
                 body: Callable[[], object] | None = None, **kwargs) -> requests.Response:
        """Send a request (asking for credentials once on a 401 if none were given); an answer not in
        ``expect`` raises its ClientError. ``body`` makes the request body afresh for each try."""
        url = path if path.startswith(("http://", "https://")) else self.url + path
        waited = 0.0
        while True:
            response = self._send(method, url, body, kwargs)
            if response.status_code == 401 and self.credentials is None and self.ask:
                self.credentials, self.ask = self.ask(self.url), None
                if self.credentials is not None:
                    response.close()
                    continue
            wait = _retry_after(response) if response.status_code == 503 else None
            if wait is not None and waited + wait <= BUSY_WAIT:  # busy (as many uploads as it takes): again
                response.close()
                time.sleep(wait)
                waited += wait
                continue
            break
        if response.status_code in expect:
            return response
        if method == "HEAD":  # no body, so no msg: ask GET for it (an error answer is short)
            response = self._send("GET", url, None, {**kwargs, "stream": True})
            if response.status_code in expect:  # it changed meanwhile
                response.close()
                return self._request(method, path, expect=expect, **kwargs)
        raise error_of(response)

    def _send(self, method: str, url: str, body, kwargs) -> requests.Response:
        auth = self.credentials.as_tuple() if self.credentials else None
        data = body() if body else None
        try:
            # Streamed: a body is read only as far as it is needed (read_bounded, or to a file).
            return self.session.request(method, url, data=data, auth=auth, timeout=self.timeout,
                                        allow_redirects=False, **{"stream": True, **kwargs})
        except requests.exceptions.RequestException as exc:
            raise ConnectionFailed(f"cannot reach {self.url}: {_reason(exc)}") from None
        finally:
            if hasattr(data, "close"):
                data.close()

    def _create_tag(self, repository: str, map: str, tag: str, map_digest: str, config_digest: str,
                    proofs: dict[str, str] | None = None) -> bool:
        response = self._request("PUT", _path(repository, map, tag), expect=(201, 409),
                                 json={"map_digest": map_digest, "config_digest": config_digest, **(proofs or {})})
        if response.status_code == 201:
            return True
        if self.tag_digests(repository, map, tag) != (map_digest, config_digest):
            raise error_of(response)
        return False


class _Part:
    """A download in progress: the ``.part`` file, how many bytes it has and their sha256.
    Every chunk is flushed as it comes, so a killed run leaves all it received."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "ab+")
        self.file.seek(0)
        self.hasher = hashlib.sha256()
        while chunk := self.file.read(CHUNK):
            self.hasher.update(chunk)
        self.have = self.file.tell()

    def append(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.file.flush()
        self.hasher.update(chunk)
        self.have += len(chunk)

    def restart(self) -> None:
        self.file.seek(0)
        self.file.truncate()
        self.hasher, self.have = hashlib.sha256(), 0

    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()

    def __enter__(self) -> _Part:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


class _Reader:
    """An upload body: reads a file in chunks, tells the progress bar, has a length (Content-Length)."""

    def __init__(self, file, size: int, bar: Progress):
        self.file, self.size, self.bar = file, size, bar

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        chunk = self.file.read(CHUNK if n is None or n < 0 else n)
        self.bar.update(len(chunk))
        return chunk

    def close(self) -> None:
        self.bar.close()
        self.file.close()


def parse_metadata(text: str) -> dict[str, str]:
    """The ``key=value`` lines of ``GET .../metadata`` as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def _tag(item: dict) -> Tag:
    return Tag(item["repository"], item["map"], item["tag"], item["map_digest"], item["config_digest"],
               item["created"])


def _path(*names: str) -> str:
    return "".join("/" + quote(name, safe="") for name in names)


def _at(at: str | None) -> dict[str, str] | None:
    return {"at": at} if at else None


def _content_range(header: str) -> tuple[int, int]:
    """(first byte, whole size) of ``Content-Range: bytes first-last/size``."""
    try:
        span, size = header.removeprefix("bytes ").split("/")
        return int(span.split("-")[0]), int(size)
    except ValueError:
        raise ClientError(f"the registry answered a range without a valid Content-Range: {header!r}") from None


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".part")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _reason(exc: Exception) -> str:
    """The innermost cause of a requests exception, e.g. 'Connection refused'."""
    for _ in range(20):
        inner = exc.__cause__ or exc.__context__ or next((a for a in exc.args if isinstance(a, Exception)), None)
        if inner is None:
            break
        exc = inner
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    if "Errno" in text:
        return text.rsplit("]", 1)[-1].strip(" ')\"")
    return text or type(exc).__name__
