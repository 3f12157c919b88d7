#!/usr/bin/env python3
"""The public API of each library crate, as rustdoc shows it, against a committed listing.

Every public item is a semver promise, so a change to the public surface must be deliberate:
`.ci/run` builds the docs (`cargo doc --no-deps`) and runs this script, which fails when the
surface differs from `docs/api/<crate>.txt`. After an intended change, rebuild the docs and run
it with `--write`, and commit the listing with the change (the diff is the review).

The listing is read from rustdoc's HTML with the stable toolchain (no nightly JSON): each
crate's `all.html` names every public item; each item's page names its members (inherent and
trait methods, fields, variants, associated items) and the traits it implements (auto traits
included: losing `Send` is a breaking change too). Items and members hidden with
`#[doc(hidden)]` are not shown by rustdoc, so they are not listed: that is how internals that
generated code needs stay out of the promise.

Usage: python3 .ci/public-api.py [--write] [--doc-dir DIR] [crate ...]
       (crates: rustdoc names, default stardust stardust_registry stardust_macros;
        DIR default: $CARGO_TARGET_DIR/doc or target/doc)
"""

import html
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = ["stardust", "stardust_registry", "stardust_macros"]

SECTION = re.compile(r'<h3 id="([\w-]+)">([^<]+)</h3><ul class="all-items">(.*?)</ul>', re.S)
LINK = re.compile(r'<a href="([^"]+)">([^<]+)</a>')
# Member anchors on an item page, by what they are.
MEMBER = re.compile(
    r'id="((?:method|tymethod|structfield|variant|associatedconstant|associatedtype)\.[\w]+)"'
)
IMPL = re.compile(r'<section id="(impl-[^"]+)" class="impl"')


def item_lines(doc_dir, crate):
    """The listing of one crate: sorted, one line per item, member or implemented trait."""
    path = os.path.join(doc_dir, crate, "all.html")
    with open(path, encoding="utf-8") as f:
        page = f.read()
    lines = set()
    for _, kind, block in SECTION.findall(page):
        kind = kind.strip().lower()
        for href, name in LINK.findall(block):
            name = f"{crate}::{html.unescape(name)}"
            lines.add(f"{kind} {name}")
            item_page = os.path.join(doc_dir, crate, href)
            try:
                with open(item_page, encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            for member in sorted(set(MEMBER.findall(text))):
                what, member_name = member.split(".", 1)
                lines.add(f"{kind} {name} {what} {member_name}")
            for impl in sorted(set(IMPL.findall(text))):
                lines.add(f"{kind} {name} {html.unescape(impl)}")
    return sorted(lines)


def main(argv):
    write = "--write" in argv
    argv = [a for a in argv if a != "--write"]
    doc_dir = None
    if "--doc-dir" in argv:
        i = argv.index("--doc-dir")
        doc_dir = argv[i + 1]
        del argv[i : i + 2]
    if doc_dir is None:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        doc_dir = os.path.join(target, "doc")
    crates = argv or CRATES
    failed = False
    for crate in crates:
        try:
            lines = item_lines(doc_dir, crate)
        except OSError as e:
            print(f"{crate}: no docs to read ({e}); run `cargo doc --no-deps --workspace` first")
            return 2
        listing = os.path.join(ROOT, "docs", "api", f"{crate}.txt")
        text = "".join(line + "\n" for line in lines)
        if write:
            os.makedirs(os.path.dirname(listing), exist_ok=True)
            with open(listing, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"{crate}: {len(lines)} lines written to {os.path.relpath(listing, ROOT)}")
            continue
        try:
            with open(listing, encoding="utf-8") as f:
                committed = f.read().splitlines()
        except OSError:
            committed = []
        added = sorted(set(lines) - set(committed))
        removed = sorted(set(committed) - set(lines))
        if not added and not removed:
            print(f"{crate}: public API unchanged ({len(lines)} lines)")
            continue
        failed = True
        print(f"{crate}: the public API differs from {os.path.relpath(listing, ROOT)}:")
        for line in removed:
            print(f"  - {line}")
        for line in added:
            print(f"  + {line}")
    if failed:
        print(
            "\nIf the change is intended, update the listing and commit it with the change:\n"
            "  cargo doc --no-deps --workspace && python3 .ci/public-api.py --write"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
