//! The hex dumps of `docs/PROTOCOL.md`, read back for the tests that rebuild them.
#![allow(dead_code)]

use stardust::__wire::frame;

pub const DOC: &str = include_str!("../../docs/PROTOCOL.md");

/// Parses an annotated hex dump: on each line, everything after `#` is a comment and the rest
/// must be two-digit hex bytes separated by whitespace.
pub fn hex(dump: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in dump.lines() {
        let data = line.split('#').next().unwrap();
        for tok in data.split_whitespace() {
            assert_eq!(tok.len(), 2, "bad hex token {tok:?} in line {line:?}");
            out.push(u8::from_str_radix(tok, 16).unwrap_or_else(|_| panic!("bad hex {tok:?}")));
        }
    }
    out
}

/// The bytes of the dump labelled `<!-- frame: name -->` in PROTOCOL.md.
pub fn doc_frame(name: &str) -> Vec<u8> {
    let marker = format!("<!-- frame: {name} -->");
    let at = DOC
        .find(&marker)
        .unwrap_or_else(|| panic!("PROTOCOL.md has no {marker}"));
    let rest = &DOC[at + marker.len()..];
    let open = rest.find("```text\n").expect("code block after marker") + "```text\n".len();
    let close = rest[open..].find("```").expect("end of code block");
    hex(&rest[open..open + close])
}

/// Asserts that `built` equals both the test's copy of the dump and the document's.
pub fn check(name: &str, built: &[u8], expected: &str) {
    let expected = hex(expected);
    assert_eq!(
        built,
        &expected[..],
        "{name}: the runtime's bytes differ from the test's dump"
    );
    assert_eq!(
        doc_frame(name),
        expected,
        "{name}: PROTOCOL.md's dump differs from the test's dump"
    );
    let h = frame::parse_header(built, frame::DEFAULT_MAX_FRAME)
        .unwrap()
        .unwrap();
    assert_eq!(h.frame_len(), built.len(), "{name}: length field");
}
