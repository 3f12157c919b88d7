//! Attributes: the options of `#[stardust::service(name = "...", version = "...")]` and the
//! `#[stardust(...)]` attributes of methods. They are read here, apart from the Rust syntax of
//! the trait, because they are the macro's own small language with its own messages.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, Error, Ident, LitStr};

use super::diagnostics::ServiceBuilder;

/// Version used when the attribute gives none.
const DEFAULT_VERSION: &str = "1.0.0";

/// The options of `#[stardust::service(name = "...", version = "...")]`.
#[derive(Default)]
pub(crate) struct Options {
    pub name: Option<LitStr>,
    pub version: Option<LitStr>,
}

impl Options {
    /// Parses the attribute's arguments (the tokens between its parentheses).
    pub fn parse(args: TokenStream) -> syn::Result<Options> {
        let mut options = Options::default();
        let parser = syn::meta::parser(|meta| {
            let slot = if meta.path.is_ident("name") {
                &mut options.name
            } else if meta.path.is_ident("version") {
                &mut options.version
            } else {
                return Err(meta.error(format_args!(
                    "unknown service option `{}`; the options are `name` and `version`",
                    path_to_string(&meta.path)
                )));
            };
            let key = path_to_string(&meta.path);
            if slot.is_some() {
                return Err(meta.error(format_args!("duplicate service option `{key}`")));
            }
            // Parse any expression so a non-string value gets a message about strings rather
            // than syn's generic "expected string literal".
            let value: syn::Expr = meta.value()?.parse()?;
            match value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(lit),
                    ..
                }) => {
                    *slot = Some(lit);
                    Ok(())
                }
                other => Err(Error::new_spanned(
                    other,
                    format_args!(
                        "the value of `{key}` must be a string literal, e.g. `{key} = \"{}\"`",
                        if key == "name" {
                            "calc.Calculator"
                        } else {
                            "1.0.0"
                        }
                    ),
                )),
            }
        });
        syn::parse::Parser::parse2(parser, args)?;
        Ok(options)
    }
}

impl ServiceBuilder {
    /// The service's wire name: the `name` option, checked, or the trait's name.
    pub(super) fn service_name(&mut self, option: Option<&LitStr>, ident: &Ident) -> String {
        let Some(lit) = option else {
            return ident.unraw().to_string();
        };
        let name = lit.value();
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.error(
                lit.span(),
                "the service name must be non-empty and contain no whitespace, \
                 e.g. `name = \"calc.Calculator\"`",
            );
        }
        name
    }

    /// The service's version: the `version` option, checked, or the default.
    pub(super) fn version(&mut self, option: Option<&LitStr>) -> String {
        let Some(lit) = option else {
            return DEFAULT_VERSION.to_owned();
        };
        let version = lit.value();
        if !is_semver(&version) {
            self.error(
                lit.span(),
                format_args!(
                    "invalid service version \"{version}\": expected MAJOR.MINOR.PATCH, \
                     three numbers without leading zeros, e.g. `version = \"1.2.0\"`"
                ),
            );
        }
        version
    }

    /// Splits off `#[stardust(...)]` attributes and reads them.
    pub(super) fn method_attrs(&mut self, attrs: Vec<Attribute>) -> (Vec<Attribute>, bool) {
        let mut kept = Vec::new();
        let mut idempotent: Option<Span> = None;
        for attr in attrs {
            if attr.path().is_ident("cfg") {
                // Attribute macros see `#[cfg]` before it is evaluated; a method that may vanish
                // would shift the indexes of the methods after it between builds.
                self.error(
                    &attr,
                    "a service method can't be conditional: methods are numbered by position, \
                     so every build must have the same ones",
                );
                continue;
            }
            if !attr.path().is_ident("stardust") {
                kept.push(attr);
                continue;
            }
            let result = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("idempotent") {
                    if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                        return Err(meta.error("`idempotent` takes no value: write `idempotent`"));
                    }
                    if idempotent.is_some() {
                        return Err(meta.error("duplicate method attribute `idempotent`"));
                    }
                    idempotent = Some(meta.path.span());
                    Ok(())
                } else {
                    Err(meta.error(format_args!(
                        "unknown method attribute `{}`; the only one is `idempotent`",
                        path_to_string(&meta.path)
                    )))
                }
            });
            if let Err(error) = result {
                self.push(error);
            }
        }
        (kept, idempotent.is_some())
    }
}

/// `MAJOR.MINOR.PATCH`: three decimal numbers without leading zeros (as semver requires).
pub(super) fn is_semver(version: &str) -> bool {
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part.len() == 1 || !part.starts_with('0'))
                && part.parse::<u64>().is_ok()
        })
}

fn path_to_string(path: &syn::Path) -> String {
    quote::quote!(#path).to_string().replace(' ', "")
}
