#!/usr/bin/env python3
"""Exercises a Stardust endpoint with the Python client: ``test_against.py HOST:PORT``.

The endpoint must host the test services of ``tests/python_client.rs`` (``test.Calc``,
``test.Greeter`` and ``test.Types``) and accept callers without a token: a Rust provider built
with ``allow_anonymous()``, or the local agent in front of one. Each check prints ``ok`` or
``FAIL``; the script ends with ``N passed, N failed`` and exits 1 if anything failed.

``--keepalive-check-ms MS`` adds a check for a server that hangs up after MS milliseconds
without a frame and pings well before: a call is held open (the client silent but for its
answers to the server's pings) until it has outlived that hang-up by a second and pings were
answered meanwhile, then released from another connection; its answer must arrive.
"""

import argparse
import sys
import threading
import time
import traceback

from stardust_client import ApplicationError, Client, unwrap_result
from checks import Failure, equal, expect, raises

CALC = "test.Calc"
GREETER = "test.Greeter"
TYPES = "test.Types"
I64_MIN = -(2**63)
U64_MAX = 2**64 - 1

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


# --- typed results -------------------------------------------------------------------------


@check
def handshake(c, _):
    equal(c.server_version, 1, "negotiated version")
    expect(c.server_max_frame >= 1024, f"server max_frame {c.server_max_frame} >= 1024")
    expect(isinstance(c.server_agent, str), "server agent is a str")


@check
def integers(c, _):
    equal(c.call(CALC, "add", 1, 2), 3, "add(1, 2)")
    equal(c.call(CALC, "add", -5, 3), -2, "add(-5, 3)")
    equal(c.call(CALC, "add", 2**40, 2**40), 2**41, "add(2^40, 2^40)")
    equal(c.call(CALC, "add", I64_MIN, 0), I64_MIN, "add(i64::MIN, 0)")


@check
def strings(c, _):
    equal(c.call(GREETER, "greet", "python"), "hello, python")
    equal(c.call(GREETER, "greet", "Zoë ☄"), "hello, Zoë ☄", "non-ASCII text")


@check
def bytes_values(c, _):
    for data in (b"", b"\x00\x01\xff", bytes(range(256)) * 400):
        echoed = c.call(CALC, "echo", data)
        expect(isinstance(echoed, bytes), f"echo returns bytes, got {type(echoed).__name__}")
        equal(echoed, data, f"echo of {len(data)} bytes")
    equal(c.call(TYPES, "checksum", b"\x01\x02\xff"), [3, 258], "checksum: a tuple is a list")
    # A byte parameter also accepts an array of integers (section 12).
    equal(c.call(TYPES, "checksum", [1, 2, 255]), [3, 258], "bytes sent as an int array")


@check
def enums_and_structs(c, _):
    empty = c.call(TYPES, "describe", "Empty")  # unit variant: its name
    equal(empty["kind"], "empty")
    equal(empty["shape"], "Empty", "unit variant comes back as a str")
    circle = c.call(TYPES, "describe", {"Circle": 2.0})  # newtype variant
    equal(circle["kind"], "circle")
    expect(abs(circle["area"] - 12.566370614359172) < 1e-9, f"circle area {circle['area']}")
    equal(circle["shape"], {"Circle": 2.0})
    rect = c.call(TYPES, "describe", {"Rect": [3, 4]})  # tuple variant
    equal((rect["kind"], rect["area"], rect["corners"]), ("rect", 12.0, 4))
    points = [{"x": 0, "y": 0}, {"x": 4, "y": 0}, {"y": 3, "x": 4}]  # keys in any order
    poly = c.call(TYPES, "describe", {"Poly": {"points": points, "label": "tri"}})
    equal(
        poly,
        {
            "kind": "poly",
            "area": 0.0,
            "corners": 3,
            "label": "tri",
            "points": [{"x": 0, "y": 0}, {"x": 4, "y": 0}, {"x": 4, "y": 3}],
            "shape": {"Poly": {"points": [{"x": 0, "y": 0}, {"x": 4, "y": 0}, {"x": 4, "y": 3}],
                               "label": "tri"}},
        },
        "struct variant -> struct as a map",
    )
    # A missing Option field decodes as None.
    unlabelled = c.call(TYPES, "describe", {"Poly": {"points": []}})
    equal(unlabelled["label"], None, "missing Option field")


@check
def options(c, _):
    equal(c.call(TYPES, "maybe_double", 21), 42, "Some(21)")
    equal(c.call(TYPES, "maybe_double", None), None, "None")
    equal(c.call(TYPES, "maybe_double"), None, "left-out trailing Option argument")
    equal(c.call(TYPES, "greet", "Ada"), "hello, Ada", "optional parameter left out")
    equal(c.call(TYPES, "greet", "Ada", "Dr"), "hello, Dr Ada", "optional parameter given")
    equal(c.call(TYPES, "greet", "Ada", None, "extra"), "hello, Ada", "extra argument ignored")


@check
def scalars_and_collections(c, _):
    equal(
        c.call(TYPES, "extremes"),
        {
            "u64_max": U64_MAX,
            "i64_min": I64_MIN,
            "u8_max": 255,
            "f32_half": 0.5,
            "f64_third": 1.0 / 3.0,
            "yes": True,
            "letter": "λ",
            "text": "grüße, 世界",
            "color": "Green",
            "nothing": None,
            "raw": b"\x00\x01\x02\xff",
            "plain_bytes": [1, 2, 3],
            "pair": [7, "seven"],
            "nested": {"a": [1, None, -3], "b": []},
            "unit": None,
        },
        "extremes()",
    )
    inverted = c.call(TYPES, "invert", {"one": 1, "two": 2})
    equal(inverted, {1: "one", 2: "two"}, "a map with integer keys")


# --- application errors (values) -------------------------------------------------------------


@check
def application_errors(c, _):
    equal(c.call(CALC, "div", 7, 2), {"Ok": 3}, "div(7, 2)")
    equal(c.call(CALC, "div", 1, 0), {"Err": "DivideByZero"}, "div(1, 0)")
    equal(
        c.call(CALC, "div", I64_MIN, -1),
        {"Err": {"Overflow": {"a": I64_MIN, "b": -1}}},
        "div(i64::MIN, -1)",
    )
    equal(c.call_result(CALC, "div", 9, 3), 3, "call_result unwraps Ok")
    try:
        c.call_result(CALC, "div", 1, 0)
    except ApplicationError as e:
        equal(e.error, "DivideByZero", "ApplicationError.error")
    else:
        raise Failure("call_result of an Err did not raise ApplicationError")
    try:
        unwrap_result(c.call(CALC, "add", 1, 1))
    except TypeError:
        pass
    else:
        raise Failure("unwrap_result accepted a non-Result")


# --- framework errors ----------------------------------------------------------------------


@check
def unknown_service(c, _):
    e = raises("UnknownService", c.call, "no.Such", "add", 1, 2)
    equal((e.code, e.local), (2, False), "code, local")


@check
def unknown_method(c, _):
    e = raises("UnknownMethod", c.call, CALC, "mul", 1, 2)
    equal(e.code, 3)
    expect("mul" in e.message, f"message names the method: {e.message!r}")


@check
def invalid_arguments(c, _):
    equal(raises("InvalidArguments", c.call, CALC, "add", "one", 2).code, 4)
    raises("InvalidArguments", c.call, CALC, "add", 1)  # a required argument left out
    raises("InvalidArguments", c.call, CALC, "add", 1.5, 2)
    raises("InvalidArguments", c.call, TYPES, "describe", "Hexagon")  # unknown variant
    raises("InvalidArguments", c.call, TYPES, "describe", {"Rect": [1, 2, 3]})  # tuple too long
    # `args` not an array (hand-made request body).
    pending = c._send_raw_request([CALC, "add", 0, 0, {}, {"a": 1}])
    raises("InvalidArguments", pending.result, 10)
    equal(c.call(CALC, "add", 2, 2), 4, "the connection still works")


@check
def malformed_request(c, _):
    # Fewer than 6 elements: a protocol error for this request only (section 11).
    pending = c._send_raw_request([CALC, "add", 0])
    equal(raises("Protocol", pending.result, 10).code, 13)
    pending = c._send_raw_request("not an array")
    raises("Protocol", pending.result, 10)
    equal(c.call(CALC, "add", 2, 3), 5, "the connection stays open")


@check
def panicking_handler(c, _):
    e = raises("Panicked", c.call, CALC, "boom", "kaboom from python")
    equal(e.code, 7)
    expect("kaboom from python" in e.message, f"message carries the panic text: {e.message!r}")
    equal(c.call(CALC, "add", 1, 1), 2, "the connection still works")


@check
def deadline_local(c, _):
    start = time.monotonic()
    e = raises("DeadlineExceeded", c.call, TYPES, "hold", "never-local", timeout=0.3)
    elapsed = time.monotonic() - start
    equal(e.code, 5)
    expect(0.29 <= elapsed < 10, f"gave up after {elapsed:.3f} s for a 0.3 s deadline")
    equal(c.call(CALC, "add", 1, 2), 3, "the connection still works")


@check
def deadline_server(c, _):
    # Wait past our own deadline: the server must stop the handler and say so itself.
    pending = c.call_async(TYPES, "hold", "never-server", timeout=0.2)
    e = raises("DeadlineExceeded", pending.result, 20)
    expect(not e.local, f"the server's Error frame, not our timer: {e.message!r}")


@check
def no_deadline(c, _):
    equal(c.call(CALC, "add", 4, 4, timeout=None), 8, "timeout_us = 0")


@check
def cancel(c, _):
    pending = c.call_async(TYPES, "hold", "cancel-me", timeout=None)
    pending.cancel()  # sends Cancel: the server drops the handler and answers nothing
    raises("Cancelled", pending.result)
    # Had the cancelled handler survived, it would take this release's permit and the next
    # hold of the key would wait for ever. It was dropped, so the next hold returns at once.
    c.call(TYPES, "release", "cancel-me")
    equal(c.call(TYPES, "hold", "cancel-me", timeout=20), "cancel-me", "hold after cancel")


@check
def metadata_trace_and_budget(c, _):
    info = c.call(CALC, "context", metadata={"tag": "py"}, trace_id=0x0123456789ABCDEF, timeout=5)
    equal(info["service"], CALC)
    equal(info["method"], "context")
    equal(info["trace_id"], 0x0123456789ABCDEF, "trace id")
    equal(info["tag"], "py", "call metadata")
    expect(0 < info["remaining_ms"] <= 5000, f"remaining budget {info['remaining_ms']} ms")
    equal(info["token_visible"], False, "no token in the connection metadata")
    no_budget = c.call(CALC, "context", timeout=None)
    equal(no_budget["remaining_ms"], None, "no deadline")
    expect(no_budget["trace_id"] != 0, "a trace id is always sent")


@check
def idempotent_flag(c, _):
    equal(c.call(CALC, "add", 5, 6, idempotent=True), 11)


@check
def notifications(c, _):
    count = c.call(CALC, "subscribe", "py.news")
    expect(isinstance(count, int) and count >= 1, f"subscribe returned {count!r}")
    # Sent before the handler returned, so it arrived before the Response (section 1).
    topic, payload = c.notifications.get_nowait()
    equal((topic, payload), ("py.news", "welcome to py.news"), "notification")


# --- several calls in flight -----------------------------------------------------------------


@check
def out_of_order_answers(c, _):
    keys = [f"order-{i}" for i in range(40)]
    holds = {key: c.call_async(TYPES, "hold", key, timeout=60) for key in keys}
    # Calls started later are answered while all the holds are in flight.
    equal(c.call(CALC, "add", 20, 22), 42, "a quick call among held ones")
    expect(not any(p.done() for p in holds.values()), "no hold answered before its release")
    for key in reversed(keys):  # release in reverse order: answers must follow the ids
        c.call(TYPES, "release", key)
        equal(holds[key].result(), key, f"hold({key})")
    for key in keys:
        expect(holds[key].done(), key)


@check
def many_threads(c, _):
    errors = []

    def worker(t):
        try:
            for i in range(150):
                got = c.call(CALC, "add", t * 1000, i)
                if got != t * 1000 + i:
                    errors.append(f"thread {t}: add({t * 1000}, {i}) = {got}")
        except Exception as e:
            errors.append(f"thread {t}: {e!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    expect(not any(t.is_alive() for t in threads), "worker threads finished")
    expect(not errors, "; ".join(errors[:5]))


@check
def pipelined_burst(c, _):
    pending = [c.call_async(CALC, "add", i, i) for i in range(500)]
    for i, p in enumerate(pending):
        equal(p.result(), 2 * i, f"answer {i} matched by id")


@check
def one_way(c, _):
    before = dict(c.stats)
    held = c.call_async(TYPES, "hold", "one-way", timeout=30)
    c.call_one_way(TYPES, "release", "one-way")  # no answer; it runs all the same
    equal(held.result(), "one-way", "the one-way release ran")
    # One-way failures are silent too: no Error for an unknown service, a panic, bad args.
    c.call_one_way("no.Such", "thing")
    c.call_one_way(CALC, "boom", "silent", idempotent=True)
    c.call_one_way(CALC, "add", "bad")
    equal(c.call(CALC, "add", 1, 2), 3, "a normal call after the one-way ones")
    equal(c.stats["ignored_answers"], before["ignored_answers"], "no stray answers")


# --- frame limits --------------------------------------------------------------------------


@check
def request_over_server_limit(c, _):
    # Not sent at all: refused locally, the connection is unaffected.
    e = raises("FrameTooLarge", c.call, CALC, "echo", bytes(c.server_max_frame))
    expect(e.local, "refused by the client itself")
    equal(c.call(CALC, "add", 1, 2), 3, "the connection still works")


@check
def response_over_client_limit(_, address):
    host, port = address
    with Client.connect(host, port, timeout=10, max_frame=1024) as small:
        equal(len(small.call(CALC, "blob", 900)), 900, "a response under 1024 bytes")
        e = raises("FrameTooLarge", small.call, CALC, "blob", 4096)
        expect(not e.local, "the server replaced the response by Error(12)")
        equal(small.call(CALC, "add", 1, 2), 3, "the connection still works")


@check
def connections_are_independent(_, address):
    host, port = address
    a = Client.connect(host, port, timeout=10)
    b = Client.connect(host, port, timeout=10)
    held = a.call_async(TYPES, "hold", "two-connections", timeout=30)
    b.call(TYPES, "release", "two-connections")
    equal(held.result(), "two-connections")
    a.close()
    raises("ConnectionClosed", a.call, CALC, "add", 1, 1)
    equal(b.call(CALC, "add", 1, 1), 2, "the other connection still works")
    b.close()


@check
def close_fails_waiting_calls(_, address):
    host, port = address
    client = Client.connect(host, port, timeout=10)
    pending = client.call_async(TYPES, "hold", "closed-under", timeout=30)
    client.close()
    raises("ConnectionClosed", pending.result)


def keepalive_check(hangup_ms):
    def keepalive(c, address):
        hangup = hangup_ms / 1000
        answered = c.stats["pings_answered"]
        held = c.call_async(TYPES, "hold", "keepalive", timeout=None)
        start = time.monotonic()
        # Waits on conditions, not for a fixed time: a loaded machine only makes this longer.
        while time.monotonic() - start < hangup + 1 or c.stats["pings_answered"] < answered + 2:
            expect(not held.done(), "the held call ended early (connection lost?)")
            expect(
                time.monotonic() - start < hangup + 60,
                f"{c.stats['pings_answered'] - answered} pings answered while held",
            )
            time.sleep(0.05)
        other = Client.connect(*address, timeout=10)
        try:
            equal(other.call(TYPES, "release", "keepalive"), True, "release")
        finally:
            other.close()
        equal(held.result(timeout=60), "keepalive", "the held call, after the hang-up time")
    return keepalive


@check
def streams(c, _):
    # Server streaming over several windows (2000 items of a few bytes; credit is given back).
    with c.stream("test.Types", "count", 2000, timeout=30) as call:
        items = call.collect()
    equal(items, list(range(2000)), "a server stream's items, in order")
    equal(call.result, None, "a stream-only method answers nil")
    # Client streaming: 5000 items sent under the server's credit, then End.
    call = c.stream("test.Types", "total", input=iter(range(5000)), timeout=30)
    equal(call.collect(), [], "a client stream has no output items")
    equal(call.result, sum(range(5000)), "the client stream's result")
    # Both ways, with a typed item error.
    call = c.stream("test.Types", "shout", input=["hi", "", "there"], timeout=30)
    equal(
        call.collect(),
        [{"Ok": "HI"}, {"Err": "nothing to shout"}, {"Ok": "THERE"}],
        "a stream both ways",
    )
    # Closing early cancels it; the connection carries on.
    call = c.stream("test.Types", "count", 10**9, timeout=30)
    first = next(iter(call))
    equal(first, 0, "the first item of a long stream")
    call.close()
    equal(c.call(CALC, "add", 2, 2), 4, "a call after a cancelled stream")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("address", help="HOST:PORT of the provider or agent")
    parser.add_argument("--keepalive-check-ms", type=int, default=None)
    parser.add_argument("-k", dest="only", default=None, help="run checks whose name has this")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help="leave out the check of this name (repeatable)",
    )
    options = parser.parse_args()
    host, _, port = options.address.rpartition(":")
    address = (host.strip("[]"), int(port))
    checks = list(CHECKS)
    if options.keepalive_check_ms is not None:
        checks.append(keepalive_check(options.keepalive_check_ms))
    if options.only:
        checks = [fn for fn in checks if options.only in fn.__name__]
    unknown = set(options.skip) - {fn.__name__ for fn in checks}
    if unknown:
        parser.error(f"--skip names no check: {', '.join(sorted(unknown))}")
    checks = [fn for fn in checks if fn.__name__ not in options.skip]

    client = Client.connect(*address, timeout=10)
    passed, failed = 0, []
    for fn in checks:
        start = time.monotonic()
        try:
            fn(client, address)
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
        if client.closed:
            print(f"FAIL the shared connection closed during {fn.__name__}: {client._closed}")
            failed.append(f"{fn.__name__} (connection lost)")
            break
    client.close()
    print(f"python client against {options.address}: {passed} passed, {len(failed)} failed")
    if failed:
        print("failed: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
