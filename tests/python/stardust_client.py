"""A small Stardust client in Python, written from docs/PROTOCOL.md alone.

It needs the Python standard library and the ``msgpack`` package, nothing else (Debian:
``apt-get install python3-msgpack``; PyPI: ``pip install msgpack``, version 1.0 or later).
It speaks to anything that speaks the Stardust protocol: a Rust provider that accepts anonymous
callers, or the local agent.

    from stardust_client import Client, StardustError, ApplicationError

    with Client.connect("127.0.0.1", 7000, timeout=5) as client:
        client.call("calc.Calculator", "add", 1, 2)        # -> 3
        client.call("calc.Calculator", "div", 1, 0)        # -> {"Err": "DivideByZero"}
        client.call_result("calc.Calculator", "div", 6, 3) # -> 2 (unwraps {"Ok": 2})
        client.call("calc.Calculator", "mul", 1, 2)        # raises StardustError(UnknownMethod)

Values (PROTOCOL.md section 12) map to Python as ``msgpack`` maps them: integers to ``int``,
floats to ``float``, str to ``str``, bin to ``bytes``, arrays to ``list``, maps to ``dict``
(structs arrive as dicts keyed by field name; map keys may be ints), nil to ``None``. A unit
enum variant is its name as a ``str``; other variants are one-entry dicts ``{variant: value}``.
Send ``bytes`` for ``serde_bytes`` parameters and dicts for structs.

Two kinds of failure, kept apart as the protocol keeps them apart:

* **Framework errors** (an ``Error`` frame: unknown service or method, arguments that do not
  decode, a panicking handler, a deadline, ...; or a local failure such as a closed connection)
  raise :class:`StardustError` with ``kind`` (the ``ErrorKind`` name, e.g.
  ``"InvalidArguments"``), ``code`` (section 5) and ``message``; ``local`` says whether this
  client produced it rather than the server.
* **Application errors** are values. A method declared ``-> Result<T, E>`` answers
  ``{"Ok": value}`` or ``{"Err": error}`` in an ordinary ``Response``. :meth:`Client.call`
  returns that map untouched (the client knows no method signatures, and a plain map with the
  key ``"Err"`` looks the same on the wire). When you know the method returns a ``Result``,
  use :meth:`Client.call_result` (or :func:`unwrap_result`): it returns the ``Ok`` value and
  raises :class:`ApplicationError` (whose ``.error`` is the decoded ``E``) for ``Err``.

Streaming calls (section 19, feature ``call.stream``): :meth:`Client.stream` opens one and
returns a :class:`StreamCall`, an iterator over the method's output items; once it is exhausted,
``.result`` is the method's return value (``None`` for a method that returns only a stream). An
``input`` iterable is sent as the call's input stream, under the server's credit, then ``End``:

    with client.stream("logs.Logs", "tail", "app.log") as lines:
        for line in lines:
            print(line)
    with client.stream("logs.Logs", "upload", "a.bin", input=chunks) as up:
        up.collect()      # no output items; waits for the end
        up.result         # -> the method's return value

Concurrency: one connection carries any number of calls at once. A reader thread receives every
frame and hands each ``Response``/``Error`` to the call with that request id, so calls may be
made from many threads, or started with :meth:`Client.call_async` and collected later. The same
thread answers the server's ``Ping`` frames and runs a keepalive of its own.
"""

import collections
import itertools
import queue
import random
import selectors
import socket
import struct
import threading
import time

import msgpack

__all__ = [
    "Client",
    "PendingCall",
    "StreamCall",
    "StardustError",
    "ApplicationError",
    "unwrap_result",
    "ERROR_KINDS",
]

PROTOCOL_VERSION = 1
AGENT = "stardust-python/0.1.0"
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
DEFAULT_CALL_TIMEOUT = 30.0
# The credit each side grants a streaming call for the items it receives when its handshake
# has no `stream_window` (section 19), and the largest single grant.
DEFAULT_STREAM_WINDOW = 256 * 1024
MAX_CREDIT = 2**31 - 1
FEATURE_STREAM = "call.stream"

# Frame kinds (section 2).
HELLO = 1
HELLO_ACK = 2
REQUEST = 3
RESPONSE = 4
ERROR = 5
CANCEL = 6
NOTIFY = 7
PING = 8
PONG = 9
GOAWAY = 10
ITEM = 13  # either way, in a streaming call (section 19)
CREDIT = 14  # either way, in a streaming call
END = 15  # client -> server: the input stream is complete

# Request flags (section 2).
ONE_WAY = 0x01
IDEMPOTENT = 0x02
STREAM = 0x04

# length (u32) | kind (u8) | flags (u8) | id (u64), big-endian: 14 bytes. `length` counts the
# 10 bytes after itself plus the body.
HEADER = struct.Struct(">IBBQ")
HEADER_AFTER_LENGTH = 10
HEADER_LEN = 4 + HEADER_AFTER_LENGTH  # what a stream item costs besides its body

# Error codes (section 5).
ERROR_KINDS = {
    1: "Internal",
    2: "UnknownService",
    3: "UnknownMethod",
    4: "InvalidArguments",
    5: "DeadlineExceeded",
    6: "Cancelled",
    7: "Panicked",
    8: "Unauthorized",
    9: "PermissionDenied",
    10: "Overloaded",
    11: "ShuttingDown",
    12: "FrameTooLarge",
    13: "Protocol",
    14: "Encode",
    15: "Decode",
    16: "Connect",
    17: "ConnectionClosed",
    18: "NoProvider",
    19: "Rejected",
    20: "LimitExceeded",
    21: "InvalidConfig",
    22: "Unsupported",
}
_CODES = {name: code for code, name in ERROR_KINDS.items()}

_NO_TIMEOUT = object()  # "use the call's own deadline" in PendingCall.result


class StardustError(Exception):
    """A framework error: the call failed, or never ran; not an application ``Err``.

    ``kind`` is the ``ErrorKind`` name (``"UnknownMethod"``, ...), ``code`` its number from
    section 5 (an unknown code on the wire is reported as ``1 Internal``, and ``wire_code`` keeps
    the number received), ``message`` the human-readable text. ``local`` is true when this client
    produced the error (its own deadline, a closed connection, a frame it refused to send, ...).
    """

    def __init__(self, kind, code, message, local=False, wire_code=None):
        super().__init__(f"{kind} ({code}): {message}")
        self.kind = kind
        self.code = code
        self.message = message
        self.local = local
        self.wire_code = code if wire_code is None else wire_code

    @classmethod
    def from_code(cls, code, message, local=False):
        kind = ERROR_KINDS.get(code)
        if kind is None:  # "Unknown codes MUST be treated as 1 Internal."
            return cls("Internal", 1, message, local=local, wire_code=code)
        return cls(kind, code, message, local=local)

    @classmethod
    def local_error(cls, kind, message):
        return cls(kind, _CODES[kind], message, local=True)


class ApplicationError(Exception):
    """The ``Err`` side of a method returning ``Result<T, E>``; ``error`` is the decoded ``E``."""

    def __init__(self, error):
        super().__init__(f"application error: {error!r}")
        self.error = error


def unwrap_result(value):
    """``{"Ok": v}`` -> ``v``; ``{"Err": e}`` -> raises ``ApplicationError(e)``."""
    if isinstance(value, dict) and len(value) == 1:
        if "Ok" in value:
            return value["Ok"]
        if "Err" in value:
            raise ApplicationError(value["Err"])
    raise TypeError(f'expected a Result ({{"Ok": ...}} or {{"Err": ...}}), got {value!r}')


def _pack(value):
    # use_bin_type: bytes -> bin, str -> str (the msgpack 1.0 default, spelled out).
    return msgpack.packb(value, use_bin_type=True)


def _unpack(body):
    """One MessagePack value. Trailing bytes are ignored, as the Rust peers do (section 16)."""
    try:
        # strict_map_key=False: Rust maps may have integer keys (HashMap<u32, _>).
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except msgpack.ExtraData as extra:
        return extra.unpacked


class _Closed(Exception):
    """The stream is unusable; carries the StardustError every waiting call gets."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


class PendingCall:
    """A call in flight. :meth:`result` waits for its answer."""

    def __init__(self, client, request_id, deadline):
        self._client = client
        self.id = request_id
        self.deadline = deadline  # time.monotonic() value, or None
        self._done = threading.Event()
        self._value = None
        self._error = None

    def done(self):
        return self._done.is_set()

    def _resolve(self, value=None, error=None):
        self._value, self._error = value, error
        self._done.set()

    def result(self, timeout=_NO_TIMEOUT):
        """The decoded return value; raises :class:`StardustError` on a framework error.

        Waits until the call's deadline by default; ``timeout`` (seconds, or ``None`` for ever)
        overrides that wait. When the wait runs out the call is cancelled (a ``Cancel`` frame is
        sent) and a local ``DeadlineExceeded`` is raised.
        """
        if timeout is _NO_TIMEOUT:
            wait = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        else:
            wait = timeout
        if not self._done.wait(wait):
            if self._client._abandon(self.id):
                raise StardustError.local_error(
                    "DeadlineExceeded", f"no answer within the call's deadline (request {self.id})"
                )
            self._done.wait()  # the answer arrived while we gave up: take it
        if self._error is not None:
            raise self._error
        return self._value

    def cancel(self):
        """Stops waiting and tells the server to stop the handler (no answer will come)."""
        if self._client._abandon(self.id):
            self._resolve(error=StardustError.local_error("Cancelled", "cancelled by the caller"))


class StreamCall:
    """A streaming call in flight (section 19), made by :meth:`Client.stream`.

    Iterating it yields the method's output items, decoded, in order; the iteration ends with
    the call's ``Response`` (then :attr:`result` holds its value) or raises
    :class:`StardustError` for an ``Error`` (or a local failure: the deadline, a closed
    connection). Items are taken from a queue the reader thread fills; as they are taken, the
    credit they cost is given back to the server once it reaches half this client's window.

    An ``input`` iterable is sent by a thread of its own, each item as an ``Item`` frame while
    the server's credit lasts, then ``End``. When the server sends ``Cancel`` (its handler no
    longer reads the input) sending stops and :attr:`input_stopped` becomes true; the call goes
    on. :meth:`close` (or leaving a ``with`` block) before the end cancels the call.
    """

    def __init__(self, client, request_id, deadline, window, send_window):
        self._client = client
        self.id = request_id
        self.deadline = deadline  # time.monotonic() value, or None
        self._cond = threading.Condition()
        self._items = collections.deque()  # raw bodies, not yet taken
        self._window = window  # what we grant the server for our output items
        self._held = 0  # cost of the items in _items
        self._unacked = 0  # cost of the items taken since credit was last given back
        self._credit = send_window  # what we may still send (may go below zero by one item)
        self._ended = False  # the call's answer (or a local failure) is in
        self._value = None
        self._error = None
        self._finished = False  # the consumer has been given the end
        #: True once the server said (``Cancel``) that its handler no longer reads the input.
        self.input_stopped = False
        #: Items received and sent so far, and the credit given back (bytes).
        self.received = 0
        self.sent = 0
        self.granted = 0
        self._pump = None

    # -- called by the reader thread ---------------------------------------------------------

    def _on_item(self, body):
        """Queues an item; raises _Closed when the server ignores the credit it was granted."""
        with self._cond:
            if self._ended:
                return
            self._held += HEADER_LEN + len(body)
            bound = self._window + HEADER_LEN + self._client.max_frame
            if self._held > bound:
                raise _Closed(StardustError.local_error(
                    "ConnectionClosed",
                    f"protocol violation: the server sent stream items beyond the credit it "
                    f"was granted ({self._held} bytes held unread, the window is "
                    f"{self._window} bytes)",
                ))
            self._items.append(body)
            self.received += 1
            self._cond.notify_all()

    def _on_credit(self, n):
        with self._cond:
            self._credit += n
            self._cond.notify_all()

    def _on_stop_sending(self):
        with self._cond:
            self.input_stopped = True
            self._cond.notify_all()

    def _resolve(self, value=None, error=None):
        """The call ended: its Response value or its error (from any thread)."""
        with self._cond:
            if self._ended:
                return
            self._ended = True
            self._value, self._error = value, error
            self._cond.notify_all()

    # -- the output ----------------------------------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self):
        grant, gave_up = 0, False
        with self._cond:
            while True:
                if self._items:
                    body = self._items.popleft()
                    cost = HEADER_LEN + len(body)
                    self._held -= cost
                    self._unacked += cost
                    # Half a window taken: give it back (the rule of the Rust receivers).
                    if self._unacked >= self._window // 2 and not self._ended:
                        grant = min(self._unacked, MAX_CREDIT)
                        self._unacked -= grant
                        self.granted += grant
                    break
                if self._ended:
                    if self._finished:
                        raise StopIteration
                    self._finished = True
                    if self._error is not None:
                        raise self._error
                    raise StopIteration
                wait = None if self.deadline is None else self.deadline - time.monotonic()
                if wait is not None and wait <= 0 and not gave_up:
                    gave_up = True
                    self._cond.release()
                    try:
                        self._expire()
                    finally:
                        self._cond.acquire()
                    continue  # ended by us, or the answer was already on its way: wait for it
                self._cond.wait(None if gave_up else wait)
        if grant:
            try:
                self._client._send_frame(CREDIT, 0, self.id, _pack(grant))
            except OSError:
                pass  # the reader sees the connection go and ends the call
        try:
            return _unpack(body)
        except Exception as e:
            error = StardustError.local_error("Decode", f"a stream item does not decode: {e}")
            self._fail(error)
            raise error

    def _expire(self):
        self._fail(StardustError.local_error(
            "DeadlineExceeded", f"the stream did not end within its deadline (request {self.id})"
        ))

    def _fail(self, error):
        """Ends the call here with ``error``, cancelling it on the server if it is still open."""
        if self._client._abandon(self.id):
            self._resolve(error=error)

    def collect(self):
        """The remaining output items as a list, once the call has ended (then :attr:`result`
        is set). For a method without an output stream: waits for its answer."""
        return list(self)

    @property
    def result(self):
        """The method's return value (the final ``Response``), once the items are exhausted.

        Raises the call's :class:`StardustError` if it failed, and ``RuntimeError`` if the
        output has not been read to its end yet.
        """
        with self._cond:
            if not self._finished:
                raise RuntimeError("the stream has not ended: iterate it to its end first")
            if self._error is not None:
                raise self._error
            return self._value

    @property
    def ended(self):
        return self._ended

    def close(self):
        """Cancels the call if it has not ended (``Cancel``: the server stops its handler and
        sends nothing more for it). Iterating a closed stream yields nothing more."""
        if self._client._abandon(self.id):
            self._resolve(error=StardustError.local_error("Cancelled", "closed by the caller"))
        with self._cond:
            self._items.clear()
            self._held = 0
            self._finished = True
            self._cond.notify_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the input -----------------------------------------------------------------------------

    def _start_pump(self, items):
        self._pump = threading.Thread(
            target=self._run_pump, args=(items,), name=f"stardust-stream-{self.id}", daemon=True
        )
        self._pump.start()

    def _wait_credit(self):
        """True when an item may be sent; False when nothing more may be sent."""
        with self._cond:
            while True:
                if self._ended or self.input_stopped:
                    return False
                if self._credit > 0:
                    return True
                self._cond.wait()

    def _run_pump(self, items):
        client = self._client
        try:
            for item in items:
                if not self._wait_credit():
                    return
                try:
                    body = _pack(item)
                except (TypeError, ValueError, OverflowError) as e:
                    self._fail(StardustError.local_error(
                        "Encode", f"cannot encode an input item: {e}"
                    ))
                    return
                length = HEADER_AFTER_LENGTH + len(body)
                if length > client.server_max_frame:
                    self._fail(StardustError.local_error(
                        "FrameTooLarge",
                        f"stream item not sent: its frame of {length} bytes exceeds the "
                        f"server's limit of {client.server_max_frame} bytes",
                    ))
                    return
                with self._cond:
                    self._credit -= HEADER_LEN + len(body)
                client._send_frame(ITEM, 0, self.id, body)
                self.sent += 1
            with self._cond:
                if self._ended or self.input_stopped:
                    return
            client._send_frame(END, 0, self.id, b"")
        except OSError:
            pass  # the connection is going: the reader ends the call
        except Exception as e:  # the application's iterable failed: so does the call
            self._fail(StardustError.local_error("Internal", f"the input iterable raised: {e!r}"))


class Client:
    """One connection to a Stardust server (or agent). Thread-safe."""

    def __init__(self, sock, max_frame, keepalive, on_notify, stream_window=DEFAULT_STREAM_WINDOW):
        self._sock = sock
        self.max_frame = max_frame  # what we accept (announced in Hello)
        self.stream_window = stream_window  # credit we grant each stream (announced in Hello)
        self.server_max_frame = None  # what the server accepts (HelloAck)
        self.server_version = None
        self.server_agent = None
        self.server_features = frozenset()  # HelloAck.features
        self.server_stream_window = DEFAULT_STREAM_WINDOW  # credit the server grants each stream
        self._keepalive_interval, self._keepalive_timeout = keepalive
        self._on_notify = on_notify
        #: Notifications ``(topic, payload)`` when no ``on_notify`` callback was given.
        self.notifications = queue.Queue()
        #: Counters, for tests and curiosity.
        self.stats = {
            "pings_answered": 0,
            "pings_sent": 0,
            "ignored_answers": 0,
            "dropped_notifications": 0,
            "ignored_stream_frames": 0,
        }
        self._wlock = threading.Lock()  # frames are written whole, one at a time
        self._lock = threading.Lock()  # guards _pending, _closed, _draining
        self._pending = {}
        self._ids = itertools.count(1)  # non-zero, unique among calls in flight
        self._ping_nonces = itertools.count(1)
        self._closed = None  # the StardustError calls get once the connection is gone
        self._draining = None  # the GoAway(11) message, once received
        self._rbuf = bytearray()
        # Reads wait here (epoll/kqueue/...: no FD_SETSIZE limit), with a bound, so that the
        # reader wakes up for keepalive checks and handshake deadlines.
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._last_heard = time.monotonic()
        self._reader = None

    # -- connecting ---------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        host,
        port,
        timeout=5.0,
        *,
        token=None,
        meta=None,
        agent=AGENT,
        max_frame=DEFAULT_MAX_FRAME,
        keepalive=(10.0, 30.0),
        on_notify=None,
        stream_window=DEFAULT_STREAM_WINDOW,
    ):
        """Connects and completes the handshake (section 3), all within ``timeout`` seconds.

        ``token`` goes into the ``Hello`` metadata (needed only for providers that require
        one; the agent accepts local apps without). ``max_frame`` is the largest frame this
        client accepts. ``keepalive`` is ``(interval, timeout)`` in seconds (section 7).
        ``on_notify(topic, payload)`` is called on the reader thread for each ``Notify`` (it
        must be quick and must not wait for calls on this client); without it notifications
        go to :attr:`notifications`. ``stream_window`` is the credit, in bytes, this client
        grants each streaming call for its output items (section 19; 1 to 2147483647). A
        refusal raises :class:`StardustError` with the server's code and message (e.g.
        ``8 Unauthorized``).
        """
        if not _is_uint(stream_window) or not 1 <= stream_window <= MAX_CREDIT:
            raise ValueError(f"stream_window must be 1 to {MAX_CREDIT} bytes: {stream_window!r}")
        deadline = time.monotonic() + timeout
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise StardustError.local_error("Connect", f"cannot connect to {host}:{port}: {e}")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # blocking; reads first wait in a selector, with a bound
        client = cls(sock, max_frame, keepalive, on_notify, stream_window)
        try:
            client._handshake(token, meta or {}, agent, deadline)
        except BaseException:
            client._kill()
            client._sock.close()
            client._selector.close()
            raise
        client._reader = threading.Thread(
            target=client._read_loop, name=f"stardust-reader-{host}:{port}", daemon=True
        )
        client._reader.start()
        return client

    def _handshake(self, token, meta, agent, deadline):
        meta = dict(meta)
        if token is not None:
            meta["token"] = token
        hello = {
            "protocol": "stardust",
            "version": PROTOCOL_VERSION,
            "agent": agent,
            "max_frame": self.max_frame,
            "meta": meta,
            # Streaming calls (section 19); the window only when it is not the default.
            "features": [FEATURE_STREAM],
        }
        if self.stream_window != DEFAULT_STREAM_WINDOW:
            hello["stream_window"] = self.stream_window
        try:
            self._send_frame(HELLO, 0, 0, _pack(hello))
            kind, _flags, _id, body = self._read_frame(deadline)
        except socket.timeout:
            raise StardustError.local_error("Connect", "no HelloAck within the connect timeout")
        except _Closed as closed:
            raise StardustError.local_error("Connect", f"handshake failed: {closed.error.message}")
        except OSError as e:
            raise StardustError.local_error("Connect", f"handshake failed: {e}")
        if kind == GOAWAY:
            # Refused: report the server's code and message as the reason.
            code, message = self._code_and_message(body)
            raise StardustError.from_code(code, message)
        if kind != HELLO_ACK:
            raise StardustError.local_error(
                "Protocol", f"expected HelloAck (kind 2), got frame kind {kind}"
            )
        try:
            ack = _unpack(body)
        except Exception as e:
            raise StardustError.local_error("Protocol", f"HelloAck body does not decode: {e}")
        if not isinstance(ack, dict):
            raise StardustError.local_error("Protocol", f"HelloAck body is not a map: {ack!r}")
        version, max_frame = ack.get("version"), ack.get("max_frame")
        if not _is_uint(version) or not 1 <= version <= PROTOCOL_VERSION:
            raise StardustError.local_error(
                "Protocol", f"server answered version {version!r} to our {PROTOCOL_VERSION}"
            )
        if not _is_uint(max_frame) or max_frame < HEADER_AFTER_LENGTH:
            raise StardustError.local_error(
                "Protocol", f"HelloAck.max_frame is not a usable limit: {max_frame!r}"
            )
        features = ack.get("features")
        if features is None:
            features = []
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise StardustError.local_error(
                "Protocol", f"HelloAck.features is not a list of str: {features!r}"
            )
        window = ack.get("stream_window")
        if window is None:
            window = DEFAULT_STREAM_WINDOW
        elif not _is_uint(window):
            raise StardustError.local_error(
                "Protocol", f"HelloAck.stream_window is not a uint: {window!r}"
            )
        agent_name = ack.get("agent", "")
        self.server_features = frozenset(features)
        self.server_stream_window = window
        self.server_version = version
        self.server_max_frame = max_frame
        self.server_agent = agent_name if isinstance(agent_name, str) else ""

    # -- calling ------------------------------------------------------------------------------

    def call(self, service, method, *args, idempotent=False, timeout=DEFAULT_CALL_TIMEOUT,
             metadata=None, trace_id=None):
        """Calls ``service.method(*args)`` and returns the decoded return value.

        ``timeout`` (seconds; ``None`` = no deadline) is the call's deadline: the server gets
        the remaining budget, and this client gives up on its own when it passes (sending a
        ``Cancel``). Raises :class:`StardustError`. A ``Result`` arrives as ``{"Ok": v}`` or
        ``{"Err": e}``: see :meth:`call_result`.
        """
        pending = self.call_async(
            service, method, *args, idempotent=idempotent, timeout=timeout,
            metadata=metadata, trace_id=trace_id,
        )
        return pending.result()

    def call_result(self, service, method, *args, **options):
        """Like :meth:`call` for a method returning ``Result``: the ``Ok`` value, or raises
        :class:`ApplicationError` with the ``Err`` value."""
        return unwrap_result(self.call(service, method, *args, **options))

    def call_async(self, service, method, *args, idempotent=False,
                   timeout=DEFAULT_CALL_TIMEOUT, metadata=None, trace_id=None):
        """Sends the request now and returns a :class:`PendingCall` at once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        request_id = next(self._ids)
        pending = PendingCall(self, request_id, deadline)
        with self._lock:
            self._check_open()
            self._pending[request_id] = pending  # before sending: the answer may be quick
        flags = IDEMPOTENT if idempotent else 0
        try:
            self._send_request(
                request_id, flags, service, method, args, deadline, metadata, trace_id
            )
        except BaseException:
            with self._lock:
                self._pending.pop(request_id, None)
            raise
        return pending

    def call_one_way(self, service, method, *args, idempotent=False, timeout=None,
                     metadata=None, trace_id=None):
        """Fire and forget (section 10): the server runs the call but never answers, not even
        with an error. Returns once the request is written."""
        with self._lock:
            self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        flags = ONE_WAY | (IDEMPOTENT if idempotent else 0)
        # Request id 0, as the Rust client sends one-way requests: nothing is matched by it.
        self._send_request(0, flags, service, method, args, deadline, metadata, trace_id)

    def stream(self, service, method, *args, input=None, timeout=None, idempotent=False,
               metadata=None, trace_id=None):
        """Opens a streaming call (section 19) of ``service.method(*args)`` and returns its
        :class:`StreamCall` at once.

        ``args`` are the method's arguments other than its input stream. ``input``, for a
        method that takes a stream, is an iterable of items: sent from a thread of its own as
        the server's credit allows, then ``End``. ``timeout`` (seconds; ``None``, the default,
        = no deadline) bounds the whole stream: the server stops it when its budget runs out,
        and so does this client while it waits for the stream (sending ``Cancel``). Raises :class:`StardustError` ``Unsupported``
        (nothing sent) when the server did not announce ``call.stream``.
        """
        with self._lock:
            self._check_open()
        if FEATURE_STREAM not in self.server_features:
            raise StardustError.local_error(
                "Unsupported",
                f"{service}.{method}: the server does not take streaming calls (it did not "
                f"announce `{FEATURE_STREAM}`); nothing was sent",
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        request_id = next(self._ids)
        call = StreamCall(self, request_id, deadline, self.stream_window,
                          self.server_stream_window)
        with self._lock:
            self._check_open()
            self._pending[request_id] = call  # before sending: items may come at once
        flags = STREAM | (IDEMPOTENT if idempotent else 0)
        try:
            self._send_request(
                request_id, flags, service, method, args, deadline, metadata, trace_id
            )
        except BaseException:
            with self._lock:
                self._pending.pop(request_id, None)
            raise
        if input is not None:
            call._start_pump(iter(input))
        return call

    def _send_request(self, request_id, flags, service, method, args, deadline, metadata,
                      trace_id):
        if not isinstance(service, str) or not isinstance(method, str):
            raise TypeError("service and method must be str")
        meta = dict(metadata or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise TypeError("metadata keys and values must be str")
        if trace_id is None:
            trace_id = random.getrandbits(64) or 1
        if deadline is None:
            timeout_us = 0  # no deadline
        else:
            # The remaining budget at the moment of sending; never 0 (that means "none").
            timeout_us = max(1, int((deadline - time.monotonic()) * 1_000_000))
        try:
            body = _pack([service, method, timeout_us, trace_id, meta, list(args)])
        except (TypeError, ValueError, OverflowError) as e:
            raise StardustError.local_error("Encode", f"cannot encode the request: {e}")
        self._send_checked(REQUEST, flags, request_id, body)

    def _send_checked(self, kind, flags, request_id, body):
        """Sends a Request body, refusing locally when the server's limit forbids it."""
        length = HEADER_AFTER_LENGTH + len(body)
        if length > self.server_max_frame:
            raise StardustError.local_error(
                "FrameTooLarge",
                f"the request frame of {length} bytes exceeds the server's limit of "
                f"{self.server_max_frame} bytes; not sent",
            )
        try:
            self._send_frame(kind, flags, request_id, body)
        except OSError as e:
            error = StardustError.local_error("ConnectionClosed", f"sending failed: {e}")
            self._shutdown(error)
            raise error

    def _send_raw_request(self, body_value, flags=0):
        """Test hook: sends a Request frame whose body is ``body_value`` as given (for
        malformed-request tests) and returns its :class:`PendingCall` (no deadline)."""
        request_id = next(self._ids)
        pending = PendingCall(self, request_id, None)
        with self._lock:
            self._check_open()
            self._pending[request_id] = pending
        self._send_checked(REQUEST, flags, request_id, _pack(body_value))
        return pending

    def _check_open(self):  # under self._lock
        if self._closed is not None:
            raise StardustError(
                self._closed.kind, self._closed.code, self._closed.message, local=True
            )
        if self._draining is not None:
            raise StardustError.local_error(
                "ShuttingDown",
                f"the server is draining this connection (GoAway: {self._draining}); "
                "open a new connection",
            )

    def _abandon(self, request_id):
        """Stops waiting for ``request_id`` and sends ``Cancel``. False if already answered."""
        with self._lock:
            if self._pending.pop(request_id, None) is None:
                return False
            closed = self._closed is not None
            drained = self._drained()
        if not closed:
            try:
                self._send_frame(CANCEL, 0, request_id, b"")
            except OSError:
                pass  # the connection is going; nothing to cancel any more
        if drained:
            self._close_drained()
        return True

    # -- closing ------------------------------------------------------------------------------

    def close(self):
        """Closes the connection; calls still waiting fail with ``ConnectionClosed``."""
        self._shutdown(StardustError.local_error("ConnectionClosed", "closed by the client"))
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self):
        return self._closed is not None

    def _shutdown(self, error):
        with self._lock:
            if self._closed is not None:
                return
            self._closed = error
            pending, self._pending = self._pending, {}
        for call in pending.values():
            call._resolve(error=StardustError(error.kind, error.code, error.message, local=True))
        self._kill()

    def _kill(self):
        # Only shut the socket down: that wakes the reader thread (it sees the end of the
        # stream), which then closes the socket and its selector. Closing the descriptor here
        # could leave the reader waiting on a descriptor that no longer exists.
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _drained(self):  # under self._lock
        """After GoAway(11): true once no call of ours is in flight, time to close (section 9)."""
        return self._draining is not None and not self._pending and self._closed is None

    def _close_drained(self):
        self._shutdown(StardustError.local_error(
            "ConnectionClosed",
            f"closed after the server's GoAway(11 ShuttingDown): {self._draining}",
        ))

    # -- frames -------------------------------------------------------------------------------

    def _send_frame(self, kind, flags, frame_id, body):
        header = HEADER.pack(HEADER_AFTER_LENGTH + len(body), kind, flags, frame_id)
        with self._wlock:
            self._sock.sendall(header + body)

    def _read_exact(self, n, deadline):
        while len(self._rbuf) < n:
            self._wait_readable(deadline)
            try:
                chunk = self._sock.recv(max(65536, n - len(self._rbuf)))
            except OSError as e:
                raise _Closed(StardustError.local_error("ConnectionClosed", f"read failed: {e}"))
            if not chunk:
                raise _Closed(StardustError.local_error(
                    "ConnectionClosed", "the server closed the connection"
                ))
            self._rbuf += chunk
            self._last_heard = time.monotonic()  # any data counts as liveness
        data = bytes(self._rbuf[:n])
        del self._rbuf[:n]
        return data

    def _wait_readable(self, deadline):
        while True:
            if deadline is None:
                # After the handshake: wake up every interval/2 for the keepalive check.
                wait = self._keepalive_interval / 2
            else:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    raise socket.timeout("timed out")
            try:
                ready = self._selector.select(wait)
            except (OSError, ValueError) as e:  # closed under us
                raise _Closed(StardustError.local_error("ConnectionClosed", str(e)))
            if ready:
                return
            if deadline is None:
                self._keepalive_check()

    def _keepalive_check(self):
        silence = time.monotonic() - self._last_heard
        if silence >= self._keepalive_timeout:
            raise _Closed(StardustError.local_error(
                "ConnectionClosed",
                f"keepalive: nothing heard from the server for {silence:.1f} s",
            ))
        if silence >= self._keepalive_interval:
            self.stats["pings_sent"] += 1
            self._send_frame(PING, 0, next(self._ping_nonces), b"")

    def _read_frame(self, deadline=None):
        """One frame: (kind, flags, id, body). Raises _Closed when the stream is unusable."""
        (length,) = struct.unpack(">I", self._read_exact(4, deadline))
        # Check the length before reading the body: an over-limit frame cannot be skipped,
        # and trusting a huge length would make us buffer gigabytes.
        if length < HEADER_AFTER_LENGTH:
            raise _Closed(StardustError.local_error(
                "ConnectionClosed", f"protocol violation: a frame with length {length} (< 10)"
            ))
        if length > self.max_frame:
            raise _Closed(StardustError.local_error(
                "ConnectionClosed",
                f"the server sent a frame of {length} bytes, over our limit of "
                f"{self.max_frame} bytes",
            ))
        rest = self._read_exact(length, deadline)
        kind, flags, frame_id = struct.unpack(">BBQ", rest[:HEADER_AFTER_LENGTH])
        return kind, flags, frame_id, rest[HEADER_AFTER_LENGTH:]

    @staticmethod
    def _code_and_message(body):
        """The ``[code, message]`` of an Error or GoAway body, or None if malformed."""
        try:
            value = _unpack(body)
        except Exception:
            return None
        if (
            isinstance(value, (list, tuple))
            and len(value) >= 2  # later elements are ignored
            and _is_uint(value[0])
            and isinstance(value[1], str)
        ):
            return value[0], value[1]
        return None

    # -- the reader thread --------------------------------------------------------------------

    def _read_loop(self):
        try:
            while True:
                self._dispatch(*self._read_frame())
        except _Closed as closed:
            self._shutdown(closed.error)
        except OSError as e:  # writing a Pong or a Ping failed
            self._shutdown(StardustError.local_error("ConnectionClosed", f"write failed: {e}"))
        except Exception as e:  # a bug here must not leave callers waiting for ever
            self._shutdown(StardustError.local_error("Internal", f"reader failed: {e!r}"))
        finally:
            self._sock.close()
            self._selector.close()

    def _dispatch(self, kind, _flags, frame_id, body):
        if kind == RESPONSE:
            call = self._take(frame_id)
            if call is None:
                return
            try:
                call._resolve(value=_unpack(body))
            except Exception as e:
                call._resolve(error=StardustError.local_error(
                    "Decode", f"the response body does not decode: {e}"
                ))
            self._after_answer()
        elif kind == ERROR:
            call = self._take(frame_id)
            if call is None:
                return
            parsed = self._code_and_message(body)
            if parsed is None:
                call._resolve(error=StardustError.local_error(
                    "Protocol", f"malformed Error body: {body[:64].hex()}"
                ))
            else:
                call._resolve(error=StardustError.from_code(*parsed))
            self._after_answer()
        elif kind == PING:
            self._send_frame(PONG, 0, frame_id, b"")
            self.stats["pings_answered"] += 1
        elif kind == PONG:
            pass  # its arrival already counted as liveness
        elif kind == NOTIFY:
            self._notify(body)
        elif kind == GOAWAY:
            self._goaway(body)
        elif kind in (ITEM, CREDIT, CANCEL):
            self._stream_frame(kind, frame_id, body)
        else:
            # Unknown kinds, and kinds a server never sends (Hello, a second HelloAck, Request,
            # End): a protocol violation. The stream cannot be trusted: close it.
            raise _Closed(StardustError.local_error(
                "ConnectionClosed",
                f"protocol violation: the server sent frame kind {kind}, which a client never "
                "accepts",
            ))

    def _stream_frame(self, kind, frame_id, body):
        """An Item, Credit or (server -> client) Cancel for a streaming call (section 19).
        Frames for ids that name no open stream (it ended or was cancelled) are ignored."""
        if kind == CREDIT:
            try:
                grant = _unpack(body)
            except Exception:
                grant = None
            if not _is_uint(grant) or not 1 <= grant <= MAX_CREDIT:
                raise _Closed(StardustError.local_error(
                    "ConnectionClosed",
                    f"protocol violation: a Credit frame granting {body[:16].hex()} "
                    f"(a grant is 1 to {MAX_CREDIT})",
                ))
        with self._lock:
            call = self._pending.get(frame_id)
        if not isinstance(call, StreamCall):
            self.stats["ignored_stream_frames"] += 1
            return
        if kind == ITEM:
            call._on_item(body)
        elif kind == CREDIT:
            call._on_credit(grant)
        else:
            call._on_stop_sending()

    def _take(self, request_id):
        with self._lock:
            call = self._pending.pop(request_id, None)
        if call is None:
            # Timed out or cancelled and the answer crossed the Cancel: ignore it.
            self.stats["ignored_answers"] += 1
        return call

    def _after_answer(self):
        with self._lock:
            drained = self._drained()
        if drained:
            self._close_drained()

    def _notify(self, body):
        try:
            value = _unpack(body)
        except Exception:
            value = None
        if not (isinstance(value, (list, tuple)) and len(value) >= 2 and isinstance(value[0], str)):
            self.stats["dropped_notifications"] += 1
            return
        topic, payload = value[0], value[1]
        if self._on_notify is not None:
            try:
                self._on_notify(topic, payload)
            except Exception:
                self.stats["dropped_notifications"] += 1
        else:
            self.notifications.put((topic, payload))

    def _goaway(self, body):
        parsed = self._code_and_message(body)
        if parsed is None:
            raise _Closed(StardustError.local_error(
                "ConnectionClosed", f"protocol violation: malformed GoAway body {body[:64].hex()}"
            ))
        code, message = parsed
        if code == _CODES["ShuttingDown"]:
            # Graceful drain: calls in flight still get their answers; send nothing new.
            with self._lock:
                self._draining = message
                drained = self._drained()
            if drained:
                self._close_drained()
            return
        error = StardustError.from_code(code, message)
        raise _Closed(StardustError.local_error(
            "ConnectionClosed",
            f"the server closed the connection: GoAway({error.code} {error.kind}): {message}",
        ))


def _is_uint(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
