#!/usr/bin/env python3
"""The Python client against a scripted fake server on 127.0.0.1: ``test_offline.py``.

A real server never sends malformed, oversized or unknown frames, never refuses in odd ways and
always answers pings; this fake one does, to check that the client stays defensive: it closes
the connection (failing the calls waiting on it) when the stream cannot be trusted, fails only
the call concerned when just one body is bad, and never hangs. It also checks the client's
frames byte for byte against the examples of docs/PROTOCOL.md section 14, and answers with
those examples.

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

    def accept_hello(self, max_frame=16 * 1024 * 1024):
        _, _, _, body, raw = self.expect_frame(1)
        hello = msgpack.unpackb(body, raw=False)
        self.send(frame(2, 0, {"version": 1, "agent": "fake", "max_frame": max_frame}))
        return hello, raw

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
    """Hello, Request, Cancel and Pong as section 14 shows them; its frames as answers."""
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
    equal(got["hello"], FRAMES["hello"], "Hello bytes (14.1)")
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
