//! What the descriptors say about a service for tools (`stardust-registry describe`, the
//! console): doc comments as text, and types as written in the trait.

use quote::ToTokens;
use syn::{Attribute, Expr, ExprLit, Lit, Meta, Type};

/// The text of the `///` doc comments among `attrs`, one line per comment, each without the
/// single leading space rustdoc strips too.
pub(crate) fn doc_text(attrs: &[Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
        .map(|line| line.strip_prefix(' ').unwrap_or(&line).to_owned())
        .collect();
    lines.join("\n").trim().to_owned()
}

/// `ty` as a person would write it: `Vec<Item>`, `Result<(), CartError>`, `[u8; 4]`.
pub(crate) fn type_text(ty: &Type) -> String {
    let spaced = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(spaced.len());
    let chars: Vec<char> = spaced.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let before = out.chars().last().unwrap_or(' ');
            let after = chars.get(i + 1).copied().unwrap_or(' ');
            // Token spacing from `to_string`: keep it only between words and after `,`/`;`.
            let glue_before = matches!(before, '<' | '(' | '[' | '&' | ':' | '\'');
            let glue_after = matches!(after, '<' | '>' | ',' | ')' | ']' | ':' | ';');
            if glue_before || glue_after {
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_read_as_written() {
        let cases = [
            ("Vec < Item >", "Vec<Item>"),
            ("Result < () , CartError >", "Result<(), CartError>"),
            (
                "std :: collections :: BTreeMap < u32 , String >",
                "std::collections::BTreeMap<u32, String>",
            ),
            ("[u8 ; 4]", "[u8; 4]"),
            ("(i64 , i64)", "(i64, i64)"),
            ("Option < Vec < u8 > >", "Option<Vec<u8>>"),
            ("stardust :: Streaming < u64 >", "stardust::Streaming<u64>"),
        ];
        for (written, shown) in cases {
            let ty: Type = syn::parse_str(written).unwrap();
            assert_eq!(type_text(&ty), shown);
        }
    }

    #[test]
    fn docs_lose_the_leading_space_only() {
        let attrs: Vec<Attribute> = vec![
            syn::parse_quote!(#[doc = " Adds two numbers."]),
            syn::parse_quote!(#[doc = "   indented"]),
            syn::parse_quote!(#[allow(unused)]),
        ];
        assert_eq!(doc_text(&attrs), "Adds two numbers.\n  indented");
    }
}
