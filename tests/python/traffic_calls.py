#!/usr/bin/env python3
"""Calls ``test.Canary.which`` through an agent and counts who answered:
``traffic_calls.py HOST:PORT --calls N [--meta KEY=VALUE ...]``.

Prints one line per outcome, ``label stable 412`` or ``error Overloaded 88``: the
traffic rules the agent applies (routes, faults) decide both, and the Rust test that runs this
script checks the counts. Any error other than a framework ``StardustError`` fails the script.
"""

import argparse
import sys
from collections import Counter

from stardust_client import Client, StardustError


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--meta", action="append", default=[])
    args = parser.parse_args()
    host, port = args.address.rsplit(":", 1)
    metadata = dict(m.split("=", 1) for m in args.meta)
    labels, errors = Counter(), Counter()
    with Client.connect(host, int(port), timeout=10) as client:
        for _ in range(args.calls):
            try:
                labels[client.call("test.Canary", "which", idempotent=True,
                                   metadata=metadata)] += 1
            except StardustError as e:
                errors[e.kind] += 1
    for label, n in sorted(labels.items()):
        print(f"label {label} {n}")
    for kind, n in sorted(errors.items()):
        print(f"error {kind} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
