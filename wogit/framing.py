"""Strict HTTP/1.1 request framing for cheroot: headers and chunked bodies.

cheroot is lenient where leniency lets one request hide inside another: it keeps
the last of two Content-Length headers, accepts whitespace before a colon and
folded lines, parses chunk sizes with ``int(x, 16)`` (``0x5``, ``+5``, `` 5 ``),
never reads chunk trailers, and holds each chunk whole in memory.  These readers
refuse all of that (cheroot answers their ``ValueError`` with 400) and stream.
``RequestHead`` gathers a request's head before a worker thread is given to it.
"""

from __future__ import annotations

import re
import time

from cheroot import server as cheroot_server

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
# Headers that may come once: a second one would let two readers (a proxy, us) disagree.
_SINGLE = {b"Content-Length", b"Transfer-Encoding", b"Host", b"Expect", b"Authorization",
           b"Wo-Map-Digest", b"Wo-Config-Digest"}
#: A request line as HTTP/1.x writes it; any other first line is refused as soon as it is whole.
_REQUEST_LINE = re.compile(rb"[^ \r\n]+ [^ \r\n]+ HTTP/1\.[01]\r")
MAX_LINE = 8192
MAX_TRAILERS = 64


class StrictHeaderReader(cheroot_server.HeaderReader):
    """Reads request headers; refuses folding, odd names and repeated framing headers."""

    def __call__(self, rfile, hdict=None):
        hdict = {} if hdict is None else hdict
        while True:
            line = rfile.readline()
            if not line:
                raise ValueError("the headers ended before a blank line")
            if line == b"\r\n":
                return hdict
            if not line.endswith(b"\r\n"):
                raise ValueError("header lines must end in CRLF")
            if line[:1] in (b" ", b"\t"):
                raise ValueError("folded header lines are not accepted")
            name, colon, value = line[:-2].partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise ValueError(f"invalid header line {line[:80]!r}")
            key = self._transform_key(name)
            value = value.strip(b" \t")
            if key == b"Transfer-Encoding" and value.lower() != b"chunked":
                # Only chunked is implemented; "chunked" not last (or unknown) leaves the body's
                # length unknown, which RFC 9112 (6.3) answers with 400 (cheroot: 501).
                raise ValueError(f"Transfer-Encoding must be chunked, not {value[:40].decode('latin-1')!r}")
            if key in hdict:
                if key in _SINGLE:
                    raise ValueError(f"the header {key.decode()} is repeated")
                if key in cheroot_server.comma_separated_headers:
                    value = hdict[key] + b", " + value
            hdict[key] = value


class KnownLengthReader(cheroot_server.KnownLengthRFile):
    """``wsgi.input`` for a body with Content-Length: cheroot's, that also reads into a buffer.

    cheroot's connection file is ``_pyio``'s pure-Python BufferedReader: its ``read`` copies
    each byte several times, and its ``readinto`` (Python 3.11) fails when its buffer holds
    more than is left of the target.  ``readinto1`` does one read, straight into the target
    when that is larger than the buffer.
    """

    def readinto(self, view: memoryview) -> int:
        if self.remaining <= 0:
            return 0
        n = self.rfile.readinto1(view[:self.remaining])
        self.remaining -= n
        return n


class ChunkedReader:
    """``wsgi.input`` for a chunked body: yields chunk data as it arrives, never a chunk whole."""

    def __init__(self, rfile):
        self.rfile = rfile
        self.left = 0  # bytes left in the current chunk
        self.done = False  # the last chunk and the trailers have been read

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (across chunks: clients often send small ones), b"" at the end."""
        if size is None or size < 0:
            size = 1 << 20
        buffer = bytearray(size)
        return bytes(memoryview(buffer)[:self.readinto(memoryview(buffer))])

    def readinto(self, view: memoryview) -> int:
        """``read`` into a buffer, straight from the connection (see ``KnownLengthReader``); 0 at the end."""
        got = 0
        while got < len(view) and not self.done:
            if self.left == 0:
                self._next_chunk()
                continue
            n = self.rfile.readinto1(view[got:got + min(len(view) - got, self.left)])
            if not n:
                raise ValueError("the chunked body ended inside a chunk")
            got += n
            self.left -= n
            if self.left == 0 and self.rfile.read(2) != b"\r\n":
                raise ValueError("a chunk is longer than its size or lacks its CRLF")
        return got

    def _next_chunk(self) -> None:
        line = self.rfile.readline(MAX_LINE)
        if not line.endswith(b"\r\n"):
            raise ValueError("bad chunk-size line")
        size = line[:-2].split(b";", 1)[0].rstrip(b" \t")
        if not _HEX.fullmatch(size):
            raise ValueError(f"bad chunk size {size[:20]!r}")
        self.left = int(size, 16)
        if self.left:
            return
        for _ in range(MAX_TRAILERS):
            line = self.rfile.readline(MAX_LINE)
            if line == b"\r\n":
                self.done = True
                return
            if not line.endswith(b"\r\n"):
                raise ValueError("bad trailer line")
        raise ValueError("too many trailer lines")


class RequestHead:
    """A request's head (request line and headers) gathered as its bytes arrive.

    The server gives a connection a worker thread only once its head is whole (or is sure
    to be refused), so clients that send their heads slowly (slowloris) hold no thread.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.started = time.time()  # the clock of cheroot's idle-connection expiry

    def add(self, chunk: bytes) -> bool:
        """Add what arrived; whether the head can go to a worker: its blank line is there,
        or its first line is whole but not HTTP/1.x's (a worker refuses it at once)."""
        searched = max(0, len(self.data) - 3)
        self.data += chunk
        if self.data.find(b"\n\r\n", searched) >= 0 or self.data.find(b"\n\n", searched) >= 0:
            return True
        start = 2 if self.data.startswith(b"\r\n") else 0  # cheroot skips one empty line first
        end = self.data.find(b"\n", start)
        return end >= 0 and _REQUEST_LINE.fullmatch(self.data, start, end) is None
