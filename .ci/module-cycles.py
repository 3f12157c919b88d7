#!/usr/bin/env python3
"""Find import cycles between the top-level modules of each library crate.

Usage: python3 .ci/module-cycles.py [CRATE_DIR...]   (relative to the repository root; default:
stardust stardust-registry stardust-macros), or --self-test. Exit status: 1 if any crate has a
cycle, 2 if a crate cannot be read, else 0.

A crate's top-level modules are the `mod x;` / `mod x { .. }` items of src/lib.rs. Each owns its
file (src/x.rs, src/x/mod.rs or its `#[path]`) and every file declared beneath it; files are found
by following `mod` items, not by listing directories. Items written in lib.rs itself are the crate
root, which takes no part in cycles. An edge A -> B is a path in code owned by A that names B:
  * `crate::B::..` (or `$crate::`, or `NAME::` after `extern crate self as NAME;`) anywhere: `use`
    items, expressions, types, and each entry of a group (`use crate::{B::X, C::Y}`);
  * `super::..` / `self::..`, resolved from the module the code is in, inline `mod m { .. }`
    blocks included: in src/a/b.rs `super::` is `a` and `super::super::B` is `B`;
  * a name lib.rs imports or re-exports (`pub use B::{Thing, Other as O};` makes `crate::Thing`,
    or `super::O` from a top-level file, an edge to B). Names reaching the root through a glob
    (`pub use B::*`) and items defined in lib.rs are ignored, as is a root-level macro path
    (`#[crate::service]` names the macro, not the module `service`).
Comments (doc links included) and string/char literals are blanked first. Not seen: paths written
by macros (`macro_rules!` bodies, `#[stardust::service]` output) or inside strings
(`#[serde(with = "crate::x")]`), and names in scope through a glob of the crate root
(`use super::*` in a top-level file; warned about).

Test code is left out: items under `#[cfg(test)]` or `#[test]` (the `mod tests` ending a file, a
test-only helper) and the files only they load. A test may reach anywhere in its crate to check
it; that is no dependency of the library, and no build of the library has the cycles it would
add. Code under `#[cfg(feature = "fuzzing")]` is built for the fuzz targets, so it counts, marked.
Self-edges are ignored. Each strongly connected component of more than one module is printed with
every edge inside it and the file:line sites (and paths) that create it.
"""
import bisect, os, re, sys, tempfile

DEFAULT_CRATES = ["stardust", "stardust-registry", "stardust-macros"]
RAW_STR = re.compile(r'b?r(#*)"')
CHAR = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]{1,6}\}|.)|[^\\'\n])'")
TEST_ATTR = re.compile(r"#\s*\[\s*(?:cfg\s*\(\s*test\s*\)|test)\s*\]")
CFG_ATTR = re.compile(r"#\s*\[\s*cfg\s*\([^\]]*\]")
MOD = re.compile(r"(?<![\w:])mod\s+(?:r#)?(\w+)\s*([;{])")
ATTRS_BEFORE = re.compile(r"(?:#\s*\[[^\]]*\]\s*)*(?:pub\s*(?:\([^)]*\))?\s*)?$")
PATH_TAIL = re.compile(r"\s*::\s*(?:(\w+)|(\{)|\*)")
USE = re.compile(r"(?<![\w:])use\s+([^;]+);")
MACRO_AFTER, ATTR_BEFORE = re.compile(r"\s*!"), re.compile(r"#!?\s*\[\s*$")

def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)

def clean(src):
    """`src` with comments and string/char literals blanked (newlines and offsets kept)."""
    out, i, n = list(src), 0, len(src)
    while i < n:
        j, raw = None, RAW_STR.match(src, i) if not (i and re.match(r"\w", src[i - 1])) else None
        if src.startswith("//", i):
            j = src.find("\n", i) % (n + 1)  # -1 (no newline) -> n
        elif src.startswith("/*", i):  # block comments nest
            depth, j = 1, i + 2
            while j < n and depth:
                step = 2 if src.startswith(("/*", "*/"), j) else 1
                depth, j = depth + (step == 2) * (1 if src[j] == "/" else -1), j + step
        elif raw:
            j = src.find('"' + raw.group(1), raw.end())
            j = n if j < 0 else j + 1 + len(raw.group(1))
        elif src[i] == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j += 1
        elif src[i] == "'" and CHAR.match(src, i):
            j = CHAR.match(src, i).end()
        for k in range(i, min(j or i, n)):
            out[k] = out[k] if out[k] == "\n" else " "
        i = max(j or 0, i + 1)
    return "".join(out)

def item_end(s, i):
    """End of the item (or `{..}` group) starting at `i`: its `;` or closing brace at depth 0."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] in "([{":
            depth += 1
        elif s[j] in ")]}":
            depth -= 1
            if depth < 0 or (depth == 0 and s[j] == "}"):
                return j + (depth == 0)
        elif s[j] == ";" and depth == 0:
            return j + 1
    return len(s)

def use_tree(text):
    """`a::{b::C, D as E}` -> [([a, b, C], "C"), ([a, D], "E")]; segments are (name, offset)."""
    toks = [(m.group(), m.start()) for m in re.finditer(r"\$?\w+|[{},*]", text)]

    def walk(i, prefix):
        segs, alias = list(prefix), None
        while i < len(toks) and toks[i][0] not in ",}":
            if toks[i][0] == "{":
                out, i = [], i + 1
                while i < len(toks) and toks[i][0] != "}":
                    sub, i = walk(i, segs)
                    out, i = out + sub, i + (i < len(toks) and toks[i][0] == ",")
                return out, i + 1
            if toks[i][0] == "as" and i + 1 < len(toks):
                alias, i = toks[i + 1][0], i + 2
            else:
                segs, i = segs + [toks[i]], i + 1
        segs = segs[:-1] if segs and segs[-1][0] == "self" else segs  # `a::{self}` is `a`
        return ([(segs, alias or segs[-1][0])] if segs else []), i

    return walk(0, [])[0]

class File:
    """A source file, blanked (`s`), with the module it is (`modpath`) and its inline modules."""

    def __init__(self, path, orig, s, modpath, fuzz):
        self.path, self.s, self.modpath, self.fuzz, self.spans = path, s, modpath, fuzz, []
        self.lines = [0] + [m.end() for m in re.finditer("\n", s)]
        self.fuzz_spans = [(m.end(), item_end(s, m.end())) for m in CFG_ATTR.finditer(s) if
                           '"fuzzing"' in orig[m.start():m.end()] and "not" not in orig[m.start():m.end()]]

    def chain(self, p):  # the inline modules around offset p
        return [name for a, b, name in self.spans if a < p < b]

    def line(self, p):
        return bisect.bisect_right(self.lines, p)

    def in_fuzz(self, p):
        return self.fuzz or any(a <= p < b for a, b in self.fuzz_spans)

def load(path, modpath, fuzz, files, mod_rs):
    """Reads `path` (module `modpath`) and, recursively, the files its `mod x;` items load."""
    try:
        with open(path, encoding="utf-8") as fh:
            orig = fh.read()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    s = clean(orig)
    if re.search(r"#!\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]", s):
        return
    chars = list(s)
    for m in TEST_ATTR.finditer(s):  # blank test items, their attribute included
        for k in range(m.start(), item_end(s, m.end())):
            chars[k] = chars[k] if chars[k] == "\n" else " "
    f = File(path, orig, "".join(chars), modpath, fuzz)
    files.append(f)
    base = os.path.dirname(path) if mod_rs else path[:-3]
    for m in MOD.finditer(f.s):
        name, chain = m.group(1), f.chain(m.start())
        if m.group(2) == "{":
            f.spans.append((m.start(), item_end(f.s, m.start()), name))
            continue
        pre = ATTRS_BEFORE.search(f.s, max(0, m.start() - 500), m.start()).start()
        attr, d = re.search(r"#\s*\[\s*path\s*=", f.s[pre:m.start()]), os.path.join(base, *chain)
        if attr:  # the literal is blanked in f.s: read it from the original at the same offset
            lit = re.match(r'\s*"([^"]*)"', orig[pre + attr.end():])
            cands = [os.path.join(d if chain else os.path.dirname(path), lit.group(1) if lit else "?")]
        else:
            cands = [os.path.join(d, name + ".rs"), os.path.join(d, name, "mod.rs")]
        child = next((c for c in cands if os.path.isfile(c)), None)
        if child is None:
            fail(f"{path}:{f.line(m.start())}: no file for `mod {name};` (tried {', '.join(cands)})")
        load(child, modpath + chain + [name], f.in_fuzz(m.start()), files,
             bool(attr) or os.path.basename(child) == "mod.rs")

def resolve(names, modpath, top, reexports, is_macro):
    """The top-level module a path names from inside `modpath` ('*': a glob of the root)."""
    k = next((i for i, n in enumerate(names) if n != "super"), len(names))
    if k > len(modpath):
        return None
    base, rest = (modpath[:len(modpath) - k], names[k:]) if k else \
        (modpath, names[1:]) if names[0] == "self" else ([], names[1:])  # crate, $crate, alias
    if base or not rest:
        return base[0] if base else None
    if rest[0] == "*":
        return "*"
    return rest[0] if rest[0] in top and not (is_macro and len(rest) == 1) else reexports.get(rest[0])

def analyse(crate_dir):
    """-> (top-level modules {name: fuzzing only}, edges {(a, b): {sites}}, warnings)."""
    files = []
    load(os.path.join(crate_dir, "src", "lib.rs"), [], False, files, True)
    root = files[0]
    top = {m.group(1): root.in_fuzz(m.start()) for m in MOD.finditer(root.s) if not root.chain(m.start())}
    aliases = re.findall(r"extern\s+crate\s+self\s+as\s+(\w+)\s*;", root.s)
    reexports = {}
    for m in USE.finditer(root.s):
        for segs, alias in [] if root.chain(m.start()) else use_tree(m.group(1)):
            names = [n for n, _ in segs]
            names = names[1:] if names[0] in ("crate", "self") else names
            if len(names) > 1 and names[0] in top and alias not in ("*", "_"):
                reexports[alias] = names[0]
    head = re.compile(r"(?<![\w:])(::\s*)?(\$crate|crate|self|super%s)(?=\s*::)"
                      % "".join("|" + re.escape(a) for a in aliases))
    edges, warnings = {}, []
    for f in files:
        for m in head.finditer(f.s):
            modpath = f.modpath + f.chain(m.start())
            if not modpath or (m.group(1) and m.group(2) not in aliases):
                continue  # root code, or `::name` of another crate
            end = m.end()
            for t in iter(lambda: PATH_TAIL.match(f.s, end), None):
                end = item_end(f.s, t.start(2)) if t.group(2) else t.end()
                if not t.group(1):
                    break
            is_macro = bool(MACRO_AFTER.match(f.s, end)
                            or ATTR_BEFORE.search(f.s, max(0, m.start() - 20), m.start()))
            for segs, _ in use_tree(f.s[m.start(2):end]):
                names, p = [n for n, _ in segs], m.start(2) + segs[-1][1]
                target = resolve(names, modpath, top, reexports, is_macro)
                if target == "*":
                    warnings.append(f"{f.path}:{f.line(p)}: glob import of the crate root; names used "
                                    "through it are not followed")
                elif target and target != modpath[0]:
                    site = (f.path, f.line(p), "::".join(names), f.in_fuzz(p))
                    edges.setdefault((modpath[0], target), set()).add(site)
    return top, edges, warnings

def components(nodes, edges):
    """Strongly connected components of more than one node (modules reaching each other), sorted."""
    succ, reach = {}, {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)
    for v in nodes:
        seen, todo = set(), [v]
        while todo:
            new = succ.get(todo.pop(), set()) - seen
            seen |= new
            todo += new
        reach[v] = seen
    comps = {tuple(sorted(w for w in reach[v] if v in reach.get(w, ()))) for v in nodes if v in reach[v]}
    return [list(c) for c in sorted(comps)]

def shortest_cycle(start, comp, edges):
    """A shortest cycle through `start` (breadth-first search inside the component)."""
    prev, queue = {}, [start]
    for v in queue:
        for b in sorted(b for a, b in edges if a == v and b in comp and b not in prev):
            prev[b] = v
            if b == start:
                path = [start, v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return " -> ".join(reversed(path))
            queue.append(b)

def compact(paths):
    """`a::b::C`, `a::b::D` -> `a::b::{C, D}` (`self` for the common prefix itself)."""
    split, n = [p.split("::") for p in sorted(set(paths))], 0
    while len(split) > 1 and all(len(s) > n and s[n] == split[0][n] for s in split):
        n += 1
    rest = ", ".join("::".join(s[n:]) or "self" for s in split)
    return "::".join(split[0][:n] + ["{%s}" % rest]) if len(split) > 1 else paths[0]

def report(crate_dir):
    """-> (output lines, whether the crate has a cycle)."""
    top, edges, warnings = analyse(crate_dir)
    comps = components(top, edges)
    counted = f"{sum(map(len, comps))} modules in {len(comps)} cycle(s)" if comps else "no import cycles"
    lines = [f"{crate_dir.rstrip('/')}: {len(top)} top-level modules, {counted}"]
    lines += [f'  note: {m} is built only with feature "fuzzing"; its sites are marked [fuzzing]'
              for m in sorted(top) if top[m]]
    for i, comp in enumerate(comps, 1):
        lines.append(f"  cycle {i}: {', '.join(comp)} (e.g. {shortest_cycle(comp[0], comp, edges)})")
        for (a, b), sites in sorted(edges.items()):
            by_line = {}
            for path, line, text, fz in sites if a in comp and b in comp else ():
                by_line.setdefault((path, line, fz), []).append(text)
            lines += [f"    {a} -> {b}: {path}:{line} ({compact(texts)}){' [fuzzing]' if fz else ''}"
                      for (path, line, fz), texts in sorted(by_line.items())]
    return lines + [f"  warning: {w}" for w in warnings], bool(comps)

FIXTURE = {
    "lib.rs": 'extern crate self as demo;\nmod a;\npub mod b;\nmod c;\n#[path = "odd/d_impl.rs"]\nmod d;\n'
              '#[cfg(feature = "fuzzing")]\npub mod f { pub use crate::c::Z; }\n'
              "pub use b::{Thing as Renamed, Other};\npub fn root_item() {}\n",
    "a.rs": "//! Docs naming crate::c::X do not count.\nuse crate::{b::Y, root_item};\n"
            "fn f<'a>(x: &'a str) -> char { let _ = (\"crate::c::X\", r#\"super::c\"#); 'x' }\n"
            "fn g() { super::Renamed::new(); /* crate::c /* nested */ crate::c */ }\n"
            "mod inner { fn h() { super::super::d::W; } }\n"
            "#[cfg(test)]\nfn helper() { crate::c::X; }\n#[cfg(test)]\nmod tests { use crate::c::X; }\n",
    "b/mod.rs": 'mod deep;\n#[cfg(test)]\n#[path = "never.rs"]\nmod extra;\n',
    "b/deep.rs": "use super::super::a::Q;\nfn k() { self::k(); super::deep::k(); }\n",
    "c.rs": "pub struct X; pub struct Z;\nfn m() { demo::d::W; }\n"
            "#[crate::b]\nfn n() {}\nuse crate::{\n    a::P,\n};\n",
    "odd/d_impl.rs": "fn w() { crate::Other; }\n",
}

def self_test():
    with tempfile.TemporaryDirectory() as tmp:
        for rel, text in FIXTURE.items():
            os.makedirs(os.path.dirname(os.path.join(tmp, "src", rel)), exist_ok=True)
            with open(os.path.join(tmp, "src", rel), "w") as fh:
                fh.write(text)
        top, edges, warnings = analyse(tmp)
        got = {e: sorted((os.path.relpath(p, tmp), ln, t, fz) for p, ln, t, fz in s) for e, s in edges.items()}
    want = {("a", "b"): [("src/a.rs", 2, "crate::b::Y", False), ("src/a.rs", 4, "super::Renamed::new", False)],
            ("a", "d"): [("src/a.rs", 5, "super::super::d::W", False)],
            ("b", "a"): [("src/b/deep.rs", 1, "super::super::a::Q", False)],
            ("c", "a"): [("src/c.rs", 6, "crate::a::P", False)],
            ("c", "d"): [("src/c.rs", 2, "demo::d::W", False)],
            ("d", "b"): [("src/odd/d_impl.rs", 1, "crate::Other", False)],
            ("f", "c"): [("src/lib.rs", 8, "crate::c::Z", True)]}
    checks = [(top, {"a": False, "b": False, "c": False, "d": False, "f": True}), (got, want),
              (components(top, edges), [["a", "b", "d"]]), (warnings, [])]
    failed = [(g, w) for g, w in checks if g != w]
    for g, w in failed:
        print(f"self-test: got  {g!r}\n           want {w!r}")
    print("self-test: " + ("FAILED" if failed else "ok"))
    return 1 if failed else 0

def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    found = False
    for crate_dir in argv[1:] or DEFAULT_CRATES:
        lines, cyclic = report(crate_dir)
        print("\n".join(lines))
        found |= cyclic
    return 1 if found else 0

if __name__ == "__main__":
    sys.exit(main(sys.argv))
