#!/usr/bin/env python3
"""The Python client against a scripted fake server on 127.0.0.1: ``test_offline.py``.

A real server never sends malformed, oversized or unknown frames, never refuses in odd ways and
always answers pings; this fake one does, to check that the client stays defensive: it closes
the connection (failing the calls waiting on it) when the stream cannot be trusted, fails only
the call concerned when just one body is bad, and never hangs. It also plays the server's side
of streaming calls (section 19): output items, credit both ways, input under credit, End, and
Cancel in either direction. It checks the client's frames byte for byte against the examples of
docs/PROTOCOL.md sections 14 and 19, and answers with those examples.

Each check prints ``ok`` or ``FAIL``; the script ends with ``N passed, N failed`` and exits 1 if
anything failed. Every wait is bounded.
"""

import os
import re
import socket
import struct
import sys
import threading
import time
import traceback

import msgpack

from stardust_client import Client
from checks import Failure, equal, expect, raises

WAIT = 20.0  # bound on any single wait; far above what a loaded machine needs
DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "PROTOCOL.md")


def doc_frames():
    """The ``<!-- frame: name -->`` hex examples of PROTOCOL.md section 14, as bytes."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    frames = {}
    for name, block in re.findall(r"<!-- frame: (\w+) -->\s*```text\n(.*?)```", text, re.S):
        hex_digits = "".join(line.split("#", 1)[0] for line in block.splitlines())
        frames[name] = bytes.fromhex("".join(hex_digits.split()))
    return frames


FRAMES = doc_frames()


# --- the fake server -----------------------------------------------------------------------


def frame(kind, frame_id=0, body=b"", flags=0):
    if not isinstance(body, bytes):
        body = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">IBBQ", 10 + len(body), kind, flags, frame_id) + body


class Peer:
    """The server's end of one connection, reading and writing raw frames."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(WAIT)
        self.buf = b""

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_frame(self):
        """(kind, flags, id, body, raw bytes), or None when the client closed."""
        head = self._read(4)
        if head is None:
            return None
        (length,) = struct.unpack(">I", head)
        rest = self._read(length)
        if rest is None:
            return None
        kind, flags, frame_id = struct.unpack(">BBQ", rest[:10])
        return kind, flags, frame_id, rest[10:], head + rest

    def expect_frame(self, kind):
        got = self.read_frame()
        if got is None:
            raise Failure(f"the client closed; expected frame kind {kind}")
        if got[0] != kind:
            raise Failure(f"expected frame kind {kind}, got {got[0]}")
        return got

    def request(self):
        """The next Request as (id, flags, decoded body)."""
        _, flags, frame_id, body, _ = self.expect_frame(3)
        return frame_id, flags, msgpack.unpackb(body, raw=False)

    def send(self, data):
        self.sock.sendall(data)

    def accept_hello(self, max_frame=16 * 1024 * 1024, streams=False, stream_window=None):
        """Answers the Hello; ``streams`` announces ``call.stream``, ``stream_window`` (if
        given) is the credit granted to each stream of the client."""
        _, _, _, body, raw = self.expect_frame(1)
        hello = msgpack.unpackb(body, raw=False)
        ack = {"version": 1, "agent": "fake", "max_frame": max_frame}
        if streams:
            ack["features"] = ["call.stream"]
        if stream_window is not None:
            ack["stream_window"] = stream_window
        self.send(frame(2, 0, ack))
        return hello, raw

    def quiet(self, seconds):
        """Checks that the client sends nothing (and does not close) for ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            got = self.read_frame()
        except socket.timeout:
            return
        finally:
            self.sock.settimeout(WAIT)
        raise Failure("expected silence, got " + ("a close" if got is None else f"frame kind {got[0]}"))

    def expect_close(self):
        """Waits (bounded) until the client closes; frames it sends meanwhile are returned."""
        frames = []
        while True:
            try:
                got = self.read_frame()
            except (ConnectionResetError, socket.timeout) as e:
                if isinstance(e, socket.timeout):
                    raise Failure("the client did not close the connection")
                return frames
            if got is None:
                return frames
            frames.append(got)


class FakeServer:
    """Accepts one connection on 127.0.0.1 and runs ``script(peer)`` on it in a thread."""

    def __init__(self, script):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(WAIT)
        self.host, self.port = self.listener.getsockname()[:2]
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self.thread.start()

    def _run(self, script):
        try:
            sock, _ = self.listener.accept()
            with sock:
                script(Peer(sock))
        except BaseException as e:
            self.error = e
        finally:
            self.listener.close()

    def connect(self, **options):
        options.setdefault("timeout", WAIT)
        return Client.connect(self.host, self.port, **options)

    def join(self):
        self.thread.join(WAIT)
        if self.thread.is_alive():
            raise Failure("the fake server's script did not finish")
        if self.error is not None:
            raise self.error


CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


# --- the documented session, byte for byte ---------------------------------------------------


@check
def documented_frames():
    """Hello (with `call.stream`, section 19), Request, Cancel and Pong as sections 14 and 19
    show them; its frames as answers."""
    got = {}
    released = threading.Event()

    def script(peer):
        got["hello"] = peer.expect_frame(1)[4]
        peer.send(FRAMES["hello_ack"])
        got["request_add"] = peer.expect_frame(3)[4]
        peer.send(FRAMES["response_add"])
        got["request_mul"] = peer.expect_frame(3)
        peer.send(FRAMES["error_unknown_method"])
        peer.expect_frame(3)  # request 3, which the client abandons at its deadline
        got["cancel"] = peer.expect_frame(6)[4]
        peer.send(FRAMES["ping"])
        got["pong"] = peer.expect_frame(9)[4]
        peer.send(FRAMES["notify"])
        released.wait(WAIT)
        peer.send(FRAMES["goaway_shutting_down"])
        expect(peer.expect_close() == [], "nothing after GoAway(11) with no call in flight")

    server = FakeServer(script)
    client = server.connect(agent="demo")
    equal(got["hello"], FRAMES["hello_stream"], "Hello bytes (section 19: 14.1 + call.stream)")
    equal((client.server_agent, client.server_max_frame), ("stardust-rust/0.1.0", 16777216))
    equal(client.call("calc.Calculator", "add", 1, 2, trace_id=0x0123456789ABCDEF, timeout=5), 3)
    # 14.3 but for the budget: ours is what remained of 5 s when the request left.
    mine, doc = got["request_add"], FRAMES["request_add"]
    at = doc.index(bytes.fromhex("ce004c4b40"))
    equal(mine[:at + 1] + mine[at + 5:], doc[:at + 1] + doc[at + 5:], "Request bytes (14.3)")
    budget = struct.unpack(">I", mine[at + 1:at + 5])[0]
    expect(4_000_000 < budget <= 5_000_000, f"timeout_us {budget}")
    e = raises("UnknownMethod", client.call, "calc.Calculator", "mul", 1, 2)
    equal(e.message, "service `calc.Calculator` has no method `mul`", "Error message (14.5)")
    equal(got["request_mul"][2], 2, "second request id")
    raises("DeadlineExceeded", client.call, "calc.Calculator", "sleep", 60000, timeout=0.2)
    # The Pong is sent after the Cancel, so both are in once the Notify is.
    equal(client.notifications.get(timeout=WAIT), ("calc.done", {"sum": 3}), "Notify (14.8)")
    equal(got["cancel"], FRAMES["cancel"], "Cancel bytes (14.6)")
    equal(got["pong"], FRAMES["pong"], "Pong bytes (14.7)")
    released.set()
    server.join()
    e = raises("ConnectionClosed", client.call, "calc.Calculator", "add", 1, 2)
    expect("ShuttingDown" in e.message, f"closed because of the drain: {e.message!r}")
    client.close()


@check
def refused_handshake():
    def script(peer):
        peer.expect_frame(1)
        peer.send(FRAMES["goaway_token_required"])

    server = FakeServer(script)
    e = raises("Unauthorized", server.connect)
    equal(e.code, 8)
    equal(e.message, "this provider requires an access token; log in to the registry first")
    server.join()


@check
def bad_hello_acks():
    cases = [
        ("version 2 > ours", frame(2, 0, {"version": 2, "agent": "x", "max_frame": 1 << 20})),
        ("version 0", frame(2, 0, {"version": 0, "agent": "x", "max_frame": 1 << 20})),
        ("no max_frame", frame(2, 0, {"version": 1})),
        ("not a map", frame(2, 0, [1, "x", 1 << 20])),
        ("garbage body", frame(2, 0, b"\xc1")),
        ("a Response instead", frame(4, 0, None)),
    ]
    for what, reply in cases:
        def script(peer, reply=reply):
            peer.expect_frame(1)
            peer.send(reply)
            peer.expect_close()

        server = FakeServer(script)
        try:
            raises("Protocol", server.connect)
        except Failure as e:
            raise Failure(f"{what}: {e}")
        server.join()
    # Unknown HelloAck keys are ignored.
    server = FakeServer(lambda peer: (
        peer.expect_frame(1),
        peer.send(frame(2, 0, {"version": 1, "max_frame": 4096, "future": [1, 2]})),
        peer.expect_close(),
    ))
    client = server.connect()
    equal(client.server_max_frame, 4096)
    client.close()
    server.join()


@check
def silent_server_at_connect():
    done = threading.Event()

    def script(peer):
        peer.expect_frame(1)
        done.wait(WAIT)  # never answers

    server = FakeServer(script)
    start = time.monotonic()
    e = raises("Connect", server.connect, timeout=0.3)
    expect(time.monotonic() - start < WAIT / 2, "connect gave up near its timeout")
    expect("HelloAck" in e.message, e.message)
    done.set()
    server.join()


# --- frames that make the stream unusable ----------------------------------------------------


def stream_breaker(bad_bytes, what, max_frame=None, hang_up=False):
    """The server answers a pending call with ``bad_bytes`` (and closes its side if
    ``hang_up``): the client must close and fail the call, and the connection's later calls,
    with ConnectionClosed."""

    def script(peer):
        peer.accept_hello()
        peer.request()
        peer.send(bad_bytes)
        if hang_up:
            peer.sock.shutdown(socket.SHUT_WR)
        peer.expect_close()

    server = FakeServer(script)
    options = {} if max_frame is None else {"max_frame": max_frame}
    client = server.connect(**options)
    pending = client.call_async("s.S", "m", timeout=WAIT)
    e = raises("ConnectionClosed", pending.result)
    expect(what in e.message, f"reason {what!r} in {e.message!r}")
    raises("ConnectionClosed", client.call, "s.S", "m")
    server.join()


@check
def oversized_frame():
    # Only the header: the client must judge it without waiting for 2000 body bytes.
    stream_breaker(struct.pack(">IBBQ", 2000, 4, 0, 1), "over our limit of 1024", max_frame=1024)


@check
def huge_length():
    stream_breaker(struct.pack(">IBBQ", 0xFFFFFFFF, 4, 0, 1), "over our limit")


@check
def length_below_ten():
    stream_breaker(struct.pack(">I", 9) + b"\x04" * 9, "length 9")


@check
def unknown_frame_kind():
    stream_breaker(frame(42, 0, b""), "kind 42")


@check
def request_from_the_server():
    stream_breaker(frame(3, 7, ["s.S", "m", 0, 0, {}, []]), "kind 3")


@check
def goaway_with_an_error():
    stream_breaker(frame(10, 0, [13, "you sent garbage"]), "you sent garbage")


@check
def malformed_goaway():
    stream_breaker(frame(10, 0, "bye"), "malformed GoAway")


@check
def connection_closed_mid_frame():
    stream_breaker(frame(4, 1, "a long answer")[:12], "closed the connection", hang_up=True)


# --- bodies that fail one call only ----------------------------------------------------------


@check
def bad_bodies_fail_one_call():
    def script(peer):
        peer.accept_hello()
        answers = {
            "bad_error": lambda i: frame(5, i, ["4", "code is a str"]),
            "short_error": lambda i: frame(5, i, [4]),
            "bad_response": lambda i: frame(4, i, b"\xc1"),  # never-used MessagePack byte
            "empty_response": lambda i: frame(4, i, b""),
            "unknown_code": lambda i: frame(5, i, [999, "from the future"]),
            "long_error": lambda i: frame(5, i, [4, "bad args", "extra", 1]),
            "trailing": lambda i: frame(4, i, msgpack.packb(7) + b"\x01\x02"),
            "stray": lambda i: frame(4, i + 1000, 1) + frame(5, i + 2000, [1, "x"]) + frame(4, i, "ok"),
            "bad_notify": lambda i: frame(7, 0, "not an array") + frame(7, 0, [5, 1]) + frame(4, i, "ok"),
        }
        for _ in answers:
            request_id, _, body = peer.request()
            peer.send(answers[body[1]](request_id))
        peer.expect_close()

    server = FakeServer(script)
    client = server.connect()
    raises("Protocol", client.call, "s.S", "bad_error")
    raises("Protocol", client.call, "s.S", "short_error")
    raises("Decode", client.call, "s.S", "bad_response")
    raises("Decode", client.call, "s.S", "empty_response")
    e = raises("Internal", client.call, "s.S", "unknown_code")
    equal((e.code, e.wire_code, e.message), (1, 999, "from the future"), "unknown code")
    e = raises("InvalidArguments", client.call, "s.S", "long_error")
    equal(e.message, "bad args")
    equal(client.call("s.S", "trailing"), 7, "trailing bytes after the body are ignored")
    equal(client.call("s.S", "stray"), "ok", "answers to unknown ids are ignored")
    equal(client.stats["ignored_answers"], 2)
    equal(client.call("s.S", "bad_notify"), "ok", "malformed notifications are dropped")
    equal(client.stats["dropped_notifications"], 2)
    expect(client.notifications.empty(), "no notification delivered")
    client.close()
    server.join()


# --- streaming calls (section 19) -------------------------------------------------------------


def item_frame(call_id, value):
    return frame(13, call_id, msgpack.packb(value, use_bin_type=True))


@check
def stream_items_then_response():
    """The documented STREAM request, output items (one the documented Item), then the
    Response ends the stream; stray stream frames are ignored."""
    got = {}

    def script(peer):
        hello, _ = peer.accept_hello(streams=True)
        got["hello"] = hello
        got["request"] = request = peer.expect_frame(3)
        call_id = request[2]
        peer.send(FRAMES["stream_item"])  # id 1
        # Frames for ids that name no stream: ignored.
        peer.send(frame(13, 99, "stray") + frame(14, 99, 5) + frame(6, 98))
        peer.send(item_frame(call_id, {"number": 2, "text": "steady"}))
        peer.send(frame(4, call_id, None))
        peer.send(item_frame(call_id, "after the end"))  # ignored too
        peer.expect_close()

    server = FakeServer(script)
    client = server.connect()
    equal(got["hello"]["features"], ["call.stream"], "Hello.features")
    expect("stream_window" not in got["hello"], "the default window is not announced")
    with client.stream("logs.Logs", "tail", "app.log", timeout=60,
                       trace_id=0x0123456789ABCDEF) as lines:
        items = list(lines)
        equal(items, [{"number": 1, "text": "ready"}, {"number": 2, "text": "steady"}], "items")
        equal(lines.result, None, "a method returning only a stream answers nil")
    # The documented request but for the budget: ours is what remained of 60 s.
    mine, doc = got["request"][4], FRAMES["stream_request_tail"]
    at = doc.index(bytes.fromhex("ce03938700"))
    equal(mine[:at + 1] + mine[at + 5:], doc[:at + 1] + doc[at + 5:], "STREAM Request bytes")
    budget = struct.unpack(">I", mine[at + 1:at + 5])[0]
    expect(59_000_000 < budget <= 60_000_000, f"timeout_us {budget}")
    equal(got["request"][1], 0x04, "flags STREAM")
    deadline = time.monotonic() + WAIT
    while client.stats["ignored_stream_frames"] < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    equal(client.stats["ignored_stream_frames"], 4, "stray stream frames ignored")
    equal(client.call_async("s.S", "m").id, 2, "the connection is still usable")
    client.close()
    server.join()


@check
def stream_grants_credit_back():
    """Credit goes back per half window of items taken: the documented 131072 for two 64 KiB
    items under the default window; 60, 60, 60 for ten 20-byte items under a window of 100."""
    got = {}
    half = bytes(65519)  # bin16: 3 + 65519 = 65522 body bytes, 65536 with the header

    def script(peer):
        hello, _ = peer.accept_hello(streams=True)
        got["hello"] = hello
        first = peer.request()[0]
        peer.send(item_frame(first, half) + item_frame(first, half))
        got["credit"] = peer.expect_frame(14)[4]
        peer.send(frame(4, first, None))
        expect(peer.expect_close() == [], "no more credit after the end")

    server = FakeServer(script)
    big = server.connect()
    lengths = [len(item) for item in big.stream("logs.Logs", "tail", "a")]
    equal(lengths, [65519, 65519], "both items")
    equal(got["credit"][:6] + got["credit"][14:], FRAMES["stream_credit"][:6] +
          FRAMES["stream_credit"][14:], "Credit bytes (section 19) but for the id")
    big.close()
    server.join()

    def script2(peer):
        hello, _ = peer.accept_hello(streams=True)
        got["hello"] = hello
        call_id = peer.request()[0]
        for _ in range(10):
            peer.send(item_frame(call_id, "abcde"))  # 6 body bytes: costs 20
        got["grants"] = [msgpack.unpackb(peer.expect_frame(14)[3]) for _ in range(3)]
        peer.send(frame(4, call_id, "done"))
        got["after"] = peer.expect_close()

    server = FakeServer(script2)
    client = server.connect(stream_window=100)
    equal(got["hello"].get("stream_window"), 100, "Hello.stream_window")
    with client.stream("logs.Logs", "tail", "app.log", timeout=WAIT) as lines:
        equal(list(lines), ["abcde"] * 10, "items")
        equal(lines.result, "done", "the Response value")
        equal(lines.granted, 180, "granted in all")
    client.close()
    server.join()
    equal(got["grants"], [60, 60, 60], "grants")
    expect(all(f[0] != 14 for f in got["after"]), "no credit after the end")


@check
def stream_input_under_credit_then_end():
    """Input items go out while the server's credit (HelloAck.stream_window) is above zero,
    wait for Credit, then End; the Response is the result."""
    got = {"items": []}

    def script(peer):
        peer.accept_hello(streams=True, stream_window=100)
        call_id, flags, body = peer.request()
        got["request"] = (flags, body[:2], body[5])
        # b"x" * 6 is bin8: 8 body bytes, 22 with the header. 100 -> 78 -> 56 -> 34 -> 12 -> -10.
        for _ in range(5):
            got["items"].append(peer.expect_frame(13))
        peer.quiet(0.3)  # out of credit
        peer.send(frame(14, call_id, 50))  # -10 + 50 = 40 -> 18 -> -4
        for _ in range(2):
            got["items"].append(peer.expect_frame(13))
        peer.quiet(0.3)
        peer.send(frame(14, call_id, 100))
        got["items"].append(peer.expect_frame(13))
        got["end"] = peer.expect_frame(15)[4]
        peer.send(frame(4, call_id, 48))
        got["after"] = peer.expect_close()

    server = FakeServer(script)
    client = server.connect()
    equal(client.server_stream_window, 100, "HelloAck.stream_window")
    chunks = [b"x" * 6] * 8
    with client.stream("logs.Logs", "upload", "a.bin", input=chunks, timeout=WAIT) as upload:
        equal(upload.collect(), [], "no output items")
        equal(upload.result, 48, "upload's return value")
        equal(upload.sent, 8, "items sent")
    client.close()
    server.join()
    equal(got["request"], (0x04, ["logs.Logs", "upload"], ["a.bin"]),
          "flags, name and only the non-stream arguments")
    call_id = got["items"][0][2]
    for kind, flags, frame_id, body, _ in got["items"]:
        equal((kind, flags, frame_id, body), (13, 0, call_id, b"\xc4\x06xxxxxx"), "an Item")
    equal(got["end"], frame(15, call_id), "End bytes")
    expect(got["after"] == [], "nothing after the End")


@check
def stream_error_end():
    """An Error ends the stream after its items; a server without call.stream is refused
    locally, with nothing sent."""

    def script(peer):
        peer.accept_hello(streams=True)
        call_id = peer.request()[0]
        peer.send(item_frame(call_id, 1) + frame(5, call_id, [7, "the handler panicked"]))
        call_id = peer.request()[0]
        peer.expect_close()  # the client's deadline passes: it cancels (below)

    server = FakeServer(script)
    client = server.connect()
    numbers = client.stream("logs.Logs", "numbers", 5)
    equal(next(numbers), 1, "the item before the error")
    e = raises("Panicked", next, numbers)
    equal(e.message, "the handler panicked")
    raises("Panicked", lambda: numbers.result)
    expect(list(numbers) == [], "nothing after the end")
    # The whole stream's deadline: a local DeadlineExceeded, and Cancel.
    start = time.monotonic()
    slow = client.stream("logs.Logs", "hang", timeout=0.2)
    raises("DeadlineExceeded", slow.collect)
    expect(time.monotonic() - start < WAIT / 2, "gave up near the deadline")
    client.close()
    server.join()

    def old_server(peer):
        peer.accept_hello()  # no features
        expect(peer.expect_close() == [], "nothing sent to a server without call.stream")

    server = FakeServer(old_server)
    client = server.connect()
    e = raises("Unsupported", client.stream, "logs.Logs", "tail", "app.log")
    expect(e.local and e.code == 22 and "nothing was sent" in e.message, e.message)
    client.close()
    server.join()


@check
def stream_deadline_cancels():
    def script(peer):
        peer.accept_hello(streams=True)
        call_id = peer.request()[0]
        got["cancel"] = peer.expect_frame(6)
        peer.send(item_frame(call_id, "late") + frame(4, call_id, None))  # crossed: ignored
        peer.expect_close()

    got = {}
    server = FakeServer(script)
    client = server.connect()
    slow = client.stream("logs.Logs", "hang", timeout=0.2)
    raises("DeadlineExceeded", next, slow)
    raises("DeadlineExceeded", lambda: slow.result)
    client.close()
    server.join()
    equal(got["cancel"][2], slow.id, "Cancel for the stream's id")


@check
def stream_close_cancels():
    """Leaving the ``with`` block before the end sends Cancel; what crosses it is ignored."""
    got = {}

    def script(peer):
        peer.accept_hello(streams=True)
        call_id = peer.request()[0]
        peer.send(item_frame(call_id, "first") + item_frame(call_id, "second"))
        got["cancel"] = peer.expect_frame(6)[4]
        peer.send(item_frame(call_id, "third") + frame(4, call_id, None))
        request_id = peer.request()[0]
        peer.send(frame(4, request_id, "unary"))
        got["after"] = peer.expect_close()

    server = FakeServer(script)
    client = server.connect()
    with client.stream("logs.Logs", "tail", "app.log", timeout=WAIT) as lines:
        equal(next(lines), "first")
        call_id = lines.id
    expect(list(lines) == [], "a closed stream yields nothing more")
    raises("Cancelled", lambda: lines.result)
    equal(client.call("s.S", "m", timeout=WAIT), "unary", "the connection goes on")
    client.close()
    server.join()
    equal(got["cancel"], frame(6, call_id), "Cancel bytes")
    expect(got["after"] == [], "no second Cancel")


@check
def server_cancel_stops_input():
    """A Cancel from the server stops the input (no more Items, no End); the call goes on."""
    got = {}
    more = threading.Event()

    def script(peer):
        peer.accept_hello(streams=True)
        call_id = peer.request()[0]
        got["input"] = [peer.expect_frame(13)[3] for _ in range(2)]
        if call_id == 3:
            peer.send(FRAMES["stream_cancel"])
        else:
            peer.send(frame(6, call_id))
        peer.send(item_frame(call_id, "ops: bye") + frame(4, call_id, None))
        got["after"] = peer.expect_close()

    def chat_input():
        yield "hi"
        yield "bye"
        more.wait(WAIT)
        yield "late"  # the server stopped reading: never sent

    server = FakeServer(script)
    client = server.connect()
    with client.stream("logs.Logs", "chat", "ops", input=chat_input(), timeout=WAIT) as chat:
        equal(list(chat), ["ops: bye"], "the output goes on after the server's Cancel")
        expect(chat.input_stopped, "the sender learnt it")
        more.set()
        chat._pump.join(WAIT)
        expect(not chat._pump.is_alive(), "the input thread ended")
        equal(chat.sent, 2, "items sent")
    client.close()
    server.join()
    equal([msgpack.unpackb(b) for b in got["input"]], ["hi", "bye"], "the input")
    expect(all(f[0] not in (13, 15) for f in got["after"]), "no Item or End after the Cancel")


@check
def stream_overrun_closes():
    """A server sending beyond window + 14 + max_frame unread bytes breaks the protocol."""

    def script(peer):
        peer.accept_hello(streams=True)
        call_id = peer.request()[0]
        peer.send(item_frame(call_id, bytes(990)) + item_frame(call_id, bytes(990)))
        peer.expect_close()

    server = FakeServer(script)
    client = server.connect(max_frame=1024, stream_window=100)
    lines = client.stream("logs.Logs", "tail", "app.log", timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while not client.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    expect(client.closed, "the client closed the connection")
    equal(len(next(lines)), 990, "the item within bounds")
    e = raises("ConnectionClosed", next, lines)
    expect("beyond the credit" in e.message, e.message)
    server.join()


@check
def bad_credit():
    stream_breaker(frame(14, 1, 0), "Credit frame")


@check
def end_from_the_server():
    stream_breaker(frame(15, 1), "kind 15")


# --- drain, keepalive, limits ----------------------------------------------------------------


@check
def graceful_drain():
    def script(peer):
        peer.accept_hello()
        first, _, _ = peer.request()
        second, _, _ = peer.request()
        peer.send(frame(10, 0, [11, "the server is shutting down"]))
        peer.send(frame(4, second, "second"))
        drained.wait(WAIT)
        peer.send(frame(4, first, "first"))
        expect(peer.expect_close() == [], "no request after the GoAway")

    drained = threading.Event()
    server = FakeServer(script)
    client = server.connect()
    first = client.call_async("s.S", "one", timeout=WAIT)
    second = client.call_async("s.S", "two", timeout=WAIT)
    equal(second.result(), "second", "calls in flight still get their answers")
    e = raises("ShuttingDown", client.call, "s.S", "three")
    expect(e.local, "refused locally, not sent")
    drained.set()
    equal(first.result(), "first")
    server.join()  # the client closed once nothing was in flight
    expect(client.closed, "closed after the drain")


@check
def keepalive_gives_up_on_a_silent_server():
    got = []

    def script(peer):
        peer.accept_hello()
        peer.request()
        got.extend(peer.expect_close())  # reads pings, answers nothing

    server = FakeServer(script)
    client = server.connect(keepalive=(0.1, 0.6))
    start = time.monotonic()
    e = raises("ConnectionClosed", client.call, "s.S", "m", timeout=WAIT)
    expect("keepalive" in e.message, e.message)
    expect(time.monotonic() - start < WAIT / 2, "gave up near the keepalive timeout")
    server.join()
    expect(any(kind == 8 for kind, *_ in got), f"the client pinged: kinds {[g[0] for g in got]}")
    expect(client.stats["pings_sent"] >= 1, "pings_sent counted")


@check
def request_over_the_servers_limit():
    def script(peer):
        peer.expect_frame(1)
        peer.send(frame(2, 0, {"version": 1, "max_frame": 1024}))
        request_id, _, body = peer.request()  # only the small one arrives
        peer.send(frame(4, request_id, len(body[5][0])))
        peer.expect_close()

    server = FakeServer(script)
    client = server.connect()
    e = raises("FrameTooLarge", client.call, "s.S", "m", b"x" * 1024)
    expect(e.local and "not sent" in e.message, e.message)
    equal(client.call("s.S", "m", b"x" * 900), 900, "a request under the limit")
    client.close()
    server.join()


@check
def encode_errors_are_local():
    def script(peer):
        peer.accept_hello()
        peer.expect_close()

    server = FakeServer(script)
    client = server.connect()
    raises("Encode", client.call, "s.S", "m", object())
    raises("Encode", client.call, "s.S", "m", 2**64)
    expect(not client.closed, "the connection is unaffected")
    client.close()
    server.join()


@check
def close_is_prompt():
    def script(peer):
        peer.accept_hello()
        peer.expect_close()

    server = FakeServer(script)
    # The reader wakes on its own only every 5 minutes (half the keepalive interval): a close
    # within WAIT / 2 was prompt, not a wake-up that happened to come.
    client = server.connect(keepalive=(600.0, 1200.0))
    pending = client.call_async("s.S", "m", timeout=None)
    start = time.monotonic()
    client.close()
    raises("ConnectionClosed", pending.result)
    expect(not client._reader.is_alive(), "the reader thread ended")
    took = time.monotonic() - start
    expect(took < WAIT / 2, f"close took {took:.2f} s")
    server.join()


def main():
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    passed, failed = 0, []
    for fn in CHECKS:
        if only not in fn.__name__:
            continue
        start = time.monotonic()
        try:
            fn()
        except Failure as e:
            failed.append(fn.__name__)
            print(f"FAIL {fn.__name__}: {e}")
        except Exception:
            failed.append(fn.__name__)
            print(f"FAIL {fn.__name__}: unexpected exception")
            traceback.print_exc(file=sys.stdout)
        else:
            passed += 1
            print(f"ok   {fn.__name__} ({time.monotonic() - start:.2f} s)")
    print(f"python client against a fake server: {passed} passed, {len(failed)} failed")
    if failed:
        print("failed: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
