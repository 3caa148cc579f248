"""SRPC framing (reference §1.2 to §1.6): what both ends of a connection write and parse.

The CONNECT request and its answers (``HTTP/1.0 200 Connected to Go SRPC``
LF LF, or a Go ``net/http`` style error response), the status and error lines
of a call, the framer that finds where one JSON value ends on a stream, the
limits that keep a peer from making us buffer without end, and the errors.

Wire summary. A client opens a TCP connection and sends
``CONNECT /_SRPC_/TLS/JSON HTTP/1.0`` LF LF; the server answers
``HTTP/1.0 200 Connected to Go SRPC`` LF LF and both sides run a TLS handshake
on the same socket. Then calls follow, one at a time: the client sends
``Service.Method`` LF, the server answers LF (accepted) or an error line; a
request/reply call continues with one coded request and, after the handler
ran, LF + coded reply (or an error line). An empty method line is a ping.
Coder and raw methods hand the connection to the handler after the accepting LF.
"""

from __future__ import annotations

import http
import json
import re
from dataclasses import dataclass
from email.utils import formatdate

from imaginator.goformats.gojson import JsonDecodeError

TLS_JSON_PATH = "/_SRPC_/TLS/JSON"
INSECURE_JSON_PATH = "/_SRPC_/unsecured/JSON"
TLS_GOB_PATH = "/_go_TLS_SRPC_/"
INSECURE_GOB_PATH = "/_goSRPC_/"
GOB_PATH_PREFIXES = (INSECURE_GOB_PATH, TLS_GOB_PATH)
CONNECTED = b"HTTP/1.0 200 Connected to Go SRPC\n\n"
CONNECTED_STATUS = "200 Connected to Go SRPC"
ACCESS_DENIED = "access to method denied"

# Go's unicode.IsSpace, which strings.TrimSpace uses on method lines.
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
END_OF_HEAD = re.compile(rb"\r?\n\r?\n")
#: The LF a JSON encoder writes after each value (blanks before it tolerated).
TRAILING_NEWLINE = re.compile(rb"[ \t\r]*\n")


@dataclass(frozen=True)
class SrpcLimits:
    """Sizes and times beyond which a peer is refused and disconnected."""

    max_connect_head: int = 4096
    max_method_line: int = 1024
    max_message: int = 16 * 1024 * 1024
    handshake_timeout: float = 60.0

    @property
    def max_buffered(self) -> int:
        """Unprocessed bytes tolerated on a connection (one message and a line)."""
        return self.max_message + self.max_method_line + self.max_connect_head


DEFAULT_LIMITS = SrpcLimits()


# ===================================================================== errors


class SrpcError(Exception):
    """An error line from the peer, or a failed SRPC connection (client side)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class SrpcConnectionError(SrpcError):
    """The connection could not be set up, or was lost."""


class SrpcTimeout(SrpcConnectionError):
    """A connection or call took longer than its timeout; the connection is closed."""


class MessageTooLarge(Exception):
    """A message or line longer than the configured limit."""


def error_line(text: str) -> bytes:
    """An SRPC error line: the text with its newlines removed, then LF."""
    cleaned = text.replace("\r", " ").replace("\n", " ") or "error"
    return cleaned.encode("utf-8", "replace") + b"\n"


# ===================================================================== JSON framing


def _go_char(byte: int) -> str:
    """How Go's JSON scanner quotes an unexpected byte."""
    if byte == 0x27:
        return "'\\''"
    if byte == 0x22:
        return "'\"'"
    if 0x20 <= byte < 0x7F:
        return f"'{chr(byte)}'"
    return f"'\\x{byte:02x}'" if byte < 0x80 else "in string literal"


_JSON_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_STRUCTURAL = re.compile(rb'["{}\[\]]')
_STRING_SPECIAL = re.compile(rb'["\\]')
_SCALAR_END = re.compile(rb"[^0-9A-Za-z+\-.]")
_VALUE_START = frozenset(b'{["-0123456789tfn')


class JsonFramer:
    """Finds where one JSON value ends in a growing buffer, without decoding.

    It tracks only strings and bracket depth, using regular expressions to
    skip over runs of ordinary bytes, so framing a large message is linear.
    Syntax inside the value is checked by :func:`decode_json` once the value
    is complete, and early by :meth:`check_syntax` when the data pauses on
    whitespace.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the previous value; the next scan starts at offset 0."""
        self.start = -1
        self._position = 0
        self._depth = 0
        self._in_string = False
        self._scalar = False
        self._checked_size = 0

    def scan(self, buffer: bytes | bytearray) -> int | None:
        """Offset just past the value, or None while it is incomplete.

        Raises :class:`JsonDecodeError` if the first byte cannot start a value.
        """
        if self.start < 0 and not self._begin(buffer):
            return None
        return self._advance(buffer)

    def _begin(self, buffer: bytes | bytearray) -> bool:
        match = _JSON_WHITESPACE.match(buffer, self._position)
        position = match.end() if match else self._position
        self._position = position
        if position >= len(buffer):
            return False
        first = buffer[position]
        if first not in _VALUE_START:
            raise JsonDecodeError(
                f"invalid character {_go_char(first)} looking for beginning of value", position
            )
        self.start = position
        if first in b"{[":
            self._depth, self._position = 1, position + 1
        elif first == 0x22:
            self._in_string, self._position = True, position + 1
        else:
            self._scalar = True
        return True

    def _advance(self, buffer: bytes | bytearray) -> int | None:
        position, size = self._position, len(buffer)
        while position < size:
            if self._in_string:
                match = _STRING_SPECIAL.search(buffer, position)
                if match is None:
                    position = size
                    break
                found = match.start()
                if buffer[found] == 0x5C:  # backslash: skip the escaped byte
                    if found + 1 >= size:
                        position = found
                        break
                    position = found + 2
                    continue
                self._in_string, position = False, found + 1
                if self._depth == 0:
                    return position
            elif self._scalar:
                match = _SCALAR_END.search(buffer, position)
                if match is None:
                    position = size
                    break
                return match.start()
            else:
                match = _STRUCTURAL.search(buffer, position)
                if match is None:
                    position = size
                    break
                char, position = buffer[match.start()], match.start() + 1
                if char == 0x22:
                    self._in_string = True
                elif char in b"{[":
                    self._depth += 1
                else:
                    self._depth -= 1
                    if self._depth == 0:
                        return position
        self._position = position
        return None

    def pending_size(self, buffer: bytes | bytearray) -> int:
        """Bytes of the incomplete value seen so far."""
        return len(buffer) - self.start if self.start >= 0 else 0

    def check_syntax(self, buffer: bytes | bytearray) -> None:
        """Raise :class:`JsonDecodeError` if the incomplete value is already invalid.

        Only when the data pauses on whitespace outside a string (so no token
        is cut in half); re-checks only after the value doubled in size, so the
        total work stays linear.
        """
        if self.start < 0 or self._in_string or buffer[-1:] not in (b" ", b"\t", b"\r", b"\n"):
            return
        size = len(buffer) - self.start
        if size < 2 * self._checked_size:
            return
        self._checked_size = size
        text = bytes(buffer[self.start :]).decode("utf-8", "replace")
        try:
            json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError as exc:
            if text[exc.pos :].strip(" \t\r\n"):
                raise JsonDecodeError(
                    f"invalid JSON: {exc.msg} at offset {exc.pos}", self.start + exc.pos
                ) from None


# ===================================================================== CONNECT heads


@dataclass(frozen=True)
class ConnectRequest:
    """The request line of a CONNECT head."""

    method: str
    path: str
    query: str
    version: str

    @property
    def method_powers(self) -> bool:
        """False when the client asked ``doNotUseMethodPowers=true``."""
        for pair in self.query.split("&"):
            key, _, value = pair.partition("=")
            if key == "doNotUseMethodPowers" and value == "true":
                return False
        return True


class BadConnectRequest(Exception):
    """A head whose request line is not ``METHOD /target HTTP/1.x``."""


#: A query string Go's ``url.ParseQuery`` accepts (no ``;``, valid escapes).
QUERY_OK = re.compile(r"(?:[^%;]|%[0-9A-Fa-f]{2})*")


def parse_connect_head(head: bytes) -> ConnectRequest:
    """The request line of an HTTP head (LF or CR LF line ends); raises
    :class:`BadConnectRequest`."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        method, target, version = line.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise BadConnectRequest() from None
    if not version.startswith("HTTP/1.") or not target.startswith("/"):
        raise BadConnectRequest()
    path, _, query = target.partition("?")
    return ConnectRequest(method, path, query, version)


def http_error_response(status: int, now: float, version: str = "HTTP/1.0") -> bytes:
    """A Go ``net/http`` style empty error response (CR LF, Date, no body)."""
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        version = "HTTP/1.0"
    lines = [
        f"{version} {status} {http.HTTPStatus(status).phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Date: {formatdate(now, usegmt=True)}",
        "Content-Length: 0",
    ]
    if version == "HTTP/1.1":
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def check_connect_reply(head: bytes) -> None:
    """Go's ``DialHTTP`` verdicts on the CONNECT answer."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
    version, _, status = line.partition(" ")
    if not version.startswith("HTTP/") or not status[:3].isdigit():
        raise SrpcConnectionError(f"malformed HTTP response: {line!r}")
    code = int(status[:3])
    if code == 200 and status == CONNECTED_STATUS:
        return
    verdicts = {404: "no SRPC endpoint", 401: "bad certificate", 405: "missing certificate"}
    raise SrpcConnectionError(verdicts.get(code, f"unexpected HTTP response: {status}"))
