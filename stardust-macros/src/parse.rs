//! Parsing and validation: turns the attribute arguments and the annotated trait into a small
//! [`ServiceDef`] that [`crate::expand`] can generate code from without checking anything again.
//!
//! Every rule the generated code relies on is checked here, so that a mistake is reported at the
//! offending token with a message saying what to write instead, rather than as a confusing type
//! error somewhere inside generated code. All problems in a trait are reported at once.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, Error, FnArg, GenericArgument, Ident, Item, ItemTrait, LitStr, Pat, PathArguments,
    Receiver, ReturnType, Signature, TraitItem, TraitItemFn, Type, Visibility,
};

/// Version used when the attribute gives none.
const DEFAULT_VERSION: &str = "1.0.0";

/// Names a service method can't have, because the generated `XxxClient` already has an
/// associated item of that name and the two would collide.
const RESERVED_METHOD_NAMES: &[&str] = &["connect", "new", "client", "with_timeout", "DESCRIPTOR"];

/// A validated `#[stardust::service]` trait.
pub(crate) struct ServiceDef {
    /// The trait's attributes (doc comments and anything else), passed through unchanged.
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub ident: Ident,
    /// The name the service travels under: the `name` option, or the trait's name.
    pub name: String,
    pub version: String,
    /// In declaration order: a method's position here is its index on the wire.
    pub methods: Vec<MethodDef>,
}

/// One validated service method: `async fn ident(&self, args...) -> output`.
pub(crate) struct MethodDef {
    /// The method's attributes minus `#[stardust(...)]`, which only the macro understands.
    pub attrs: Vec<Attribute>,
    /// The method's `&self` receiver, kept so errors in the rewritten trait point at user code.
    pub receiver: Receiver,
    pub ident: Ident,
    pub args: Vec<ArgDef>,
    /// The declared return type; `()` when there is none.
    pub output: Type,
    pub idempotent: bool,
}

impl MethodDef {
    /// The method name as it travels on the wire (without a raw identifier's `r#`).
    pub fn wire_name(&self) -> String {
        self.ident.unraw().to_string()
    }
}

/// One method argument: a plain identifier and an owned type.
pub(crate) struct ArgDef {
    pub ident: Ident,
    pub ty: Type,
}

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

/// Parses and validates the whole attribute invocation.
pub(crate) fn parse_service(args: TokenStream, item: TokenStream) -> syn::Result<ServiceDef> {
    let options = Options::parse(args)?;
    let item: Item = syn::parse2(item)?;
    let Item::Trait(item) = item else {
        return Err(Error::new(
            item_keyword_span(&item),
            "#[stardust::service] can only be applied to a trait, e.g. \
             `pub trait Calculator { async fn add(&self, a: i64, b: i64) -> i64; }`",
        ));
    };
    ServiceBuilder::default().build(options, item)
}

/// Collects every error found while validating, so the user sees them all in one build.
#[derive(Default)]
struct ServiceBuilder {
    errors: Option<Error>,
}

impl ServiceBuilder {
    fn error(&mut self, span: impl Into<SpanOf>, message: impl std::fmt::Display) {
        self.push(match span.into() {
            SpanOf::Span(span) => Error::new(span, message),
            SpanOf::Tokens(tokens) => Error::new_spanned(tokens, message),
        });
    }

    fn push(&mut self, error: Error) {
        match &mut self.errors {
            Some(errors) => errors.combine(error),
            None => self.errors = Some(error),
        }
    }

    fn build(mut self, options: Options, item: ItemTrait) -> syn::Result<ServiceDef> {
        let name = self.service_name(options.name.as_ref(), &item.ident);
        let version = self.version(options.version.as_ref());
        self.check_trait_header(&item);

        let mut methods = Vec::new();
        for trait_item in item.items {
            match trait_item {
                TraitItem::Fn(method) => {
                    if let Some(method) = self.method(&item.ident, method) {
                        methods.push(method);
                    }
                }
                TraitItem::Const(c) => self.error(
                    c.ident.span(),
                    "a service trait can't have associated constants; \
                     use a free `const` outside the trait",
                ),
                TraitItem::Type(t) => self.error(
                    t.ident.span(),
                    "a service trait can't have associated types: \
                     the generated client and server need concrete argument and return types",
                ),
                other => self.error(
                    &other,
                    "a service trait can only contain `async fn` methods",
                ),
            }
        }

        match self.errors {
            Some(errors) => Err(errors),
            None => Ok(ServiceDef {
                attrs: item.attrs,
                vis: item.vis,
                ident: item.ident,
                name,
                version,
                methods,
            }),
        }
    }

    fn service_name(&mut self, option: Option<&LitStr>, ident: &Ident) -> String {
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

    fn version(&mut self, option: Option<&LitStr>) -> String {
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

    /// Checks the parts of `trait Name<...>: ... where ...` that the macro does not support.
    fn check_trait_header(&mut self, item: &ItemTrait) {
        if let Some(unsafety) = &item.unsafety {
            self.error(unsafety.span, "a service trait can't be `unsafe`");
        }
        if let Some(auto) = &item.auto_token {
            self.error(auto.span, "a service trait can't be an `auto` trait");
        }
        if !item.generics.params.is_empty() {
            self.error(
                &item.generics,
                "a service trait can't have generic parameters: \
                 every method needs concrete argument and return types to go over the network",
            );
        }
        if let Some(where_clause) = &item.generics.where_clause {
            self.error(where_clause, "a service trait can't have a `where` clause");
        }
        if item.colon_token.is_some() {
            self.error(
                &item.supertraits,
                "a service trait can't declare supertraits: \
                 `Send + Sync + 'static` are added automatically",
            );
        }
        for attr in &item.attrs {
            if attr.path().is_ident("stardust") {
                self.error(
                    attr,
                    "service options go in the service attribute itself, \
                     e.g. `#[stardust::service(name = \"calc.Calculator\")]`",
                );
            }
        }
    }

    /// Validates one trait method; `None` when it had errors (already recorded).
    fn method(&mut self, service: &Ident, method: TraitItemFn) -> Option<MethodDef> {
        let before = self.error_count();
        let TraitItemFn {
            attrs,
            sig,
            default,
            ..
        } = method;

        let (attrs, idempotent) = self.method_attrs(attrs);
        self.check_signature_header(&sig);

        let name = sig.ident.unraw().to_string();
        if RESERVED_METHOD_NAMES.contains(&name.as_str()) {
            let kind = if name == "DESCRIPTOR" {
                "constant"
            } else {
                "method"
            };
            self.error(
                sig.ident.span(),
                format_args!(
                    "a service method can't be named `{name}`: the generated `{}Client` \
                     already has a `{name}` {kind}; rename this method",
                    service.unraw()
                ),
            );
        }

        let mut inputs = sig.inputs.iter();
        let receiver = match inputs.next() {
            Some(FnArg::Receiver(receiver)) => {
                self.check_receiver(receiver);
                Some(receiver.clone())
            }
            _ => {
                self.error(
                    sig.paren_token.span.join(),
                    format_args!(
                        "a service method must take `&self` as its first argument: \
                         write `async fn {}(&self, ...)`",
                        sig.ident
                    ),
                );
                None
            }
        };
        // When the receiver is missing the first input is an ordinary argument: check it too.
        let rest = if receiver.is_some() {
            inputs.collect::<Vec<_>>()
        } else {
            sig.inputs.iter().collect()
        };
        let args: Vec<ArgDef> = rest.into_iter().filter_map(|arg| self.arg(arg)).collect();

        if let Some(variadic) = &sig.variadic {
            self.error(variadic, "a service method can't be variadic");
        }

        let output = match &sig.output {
            ReturnType::Default => syn::parse_quote!(()),
            ReturnType::Type(_, ty) => {
                self.check_owned(ty, "return types");
                (**ty).clone()
            }
        };

        if let Some(body) = &default {
            self.error(
                body.brace_token.span.open(),
                "a service method can't have a default body: \
                 declare it with `;` and implement it in the `impl` of the trait",
            );
        }

        if self.error_count() > before {
            return None;
        }
        Some(MethodDef {
            attrs,
            receiver: receiver?,
            ident: sig.ident,
            args,
            output,
            idempotent,
        })
    }

    /// Splits off `#[stardust(...)]` attributes and reads them.
    fn method_attrs(&mut self, attrs: Vec<Attribute>) -> (Vec<Attribute>, bool) {
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

    /// `async fn name` with nothing else: no `const`, `unsafe`, `extern` or generics.
    fn check_signature_header(&mut self, sig: &Signature) {
        if let Some(constness) = &sig.constness {
            self.error(constness.span, "a service method can't be `const`");
        }
        if let Some(unsafety) = &sig.unsafety {
            self.error(unsafety.span, "a service method can't be `unsafe`");
        }
        if let Some(abi) = &sig.abi {
            self.error(abi, "a service method can't be `extern`");
        }
        if sig.asyncness.is_none() {
            self.error(
                sig.fn_token.span,
                format_args!(
                    "a service method must be an `async fn`: write `async fn {}(&self, ...)`",
                    sig.ident
                ),
            );
        }
        let generics = &sig.generics;
        if generics.lifetimes().next().is_some() {
            self.error(
                generics,
                "a service method can't have lifetime parameters: \
                 its arguments must be owned types, e.g. `String` instead of `&str`",
            );
        } else if !generics.params.is_empty() {
            self.error(
                generics,
                "a service method can't be generic: \
                 its arguments and return type must be concrete types",
            );
        }
        if let Some(where_clause) = &generics.where_clause {
            self.error(where_clause, "a service method can't have a `where` clause");
        }
    }

    /// Only `&self`: calls run concurrently on one shared instance.
    fn check_receiver(&mut self, receiver: &Receiver) {
        const STATE: &str = "calls run concurrently on one shared instance, so keep \
                             mutable state behind a `Mutex` or atomics";
        match (&receiver.reference, &receiver.colon_token) {
            (Some((_, None)), None) if receiver.mutability.is_none() => {}
            (Some((_, Some(lifetime))), None) if receiver.mutability.is_none() => self.error(
                lifetime,
                "a service method's receiver can't name a lifetime: write `&self`",
            ),
            (Some(_), None) => self.error(
                receiver,
                format_args!("a service method must take `&self`, not `&mut self`: {STATE}"),
            ),
            (None, None) => self.error(
                receiver,
                format_args!("a service method must take `&self`, not `self` by value: {STATE}"),
            ),
            (_, Some(_)) => self.error(
                receiver,
                "a service method must take plain `&self`, without a type annotation",
            ),
        }
    }

    /// An argument must be `ident: OwnedType`.
    fn arg(&mut self, arg: &FnArg) -> Option<ArgDef> {
        let FnArg::Typed(typed) = arg else {
            // A second receiver; rustc reports it, but we must not generate from it.
            self.error(arg, "`self` can only be the first argument");
            return None;
        };
        if let Some(attr) = typed.attrs.first() {
            self.error(
                attr,
                "attributes on service method arguments aren't supported",
            );
        }
        let before = self.error_count();
        let ident = match &*typed.pat {
            Pat::Ident(pat)
                if pat.by_ref.is_none() && pat.mutability.is_none() && pat.subpat.is_none() =>
            {
                Some(pat.ident.clone())
            }
            Pat::Ident(pat) if pat.mutability.is_some() => {
                self.error(
                    &typed.pat,
                    format_args!(
                        "service method arguments must be plain identifiers: \
                         remove `mut` here and write `let mut {0} = {0};` in the implementation",
                        pat.ident
                    ),
                );
                None
            }
            Pat::Wild(_) => {
                let ty = &typed.ty;
                self.error(
                    &typed.pat,
                    format_args!(
                        "service method arguments must be named, because the generated client \
                         method takes the same arguments: write e.g. `value: {}`",
                        quote::quote!(#ty)
                    ),
                );
                None
            }
            other => {
                self.error(
                    other,
                    "service method arguments must be plain identifiers, e.g. `point: Point`; \
                     destructure inside the implementation instead",
                );
                None
            }
        };
        self.check_owned(&typed.ty, "arguments");
        if self.error_count() > before {
            return None;
        }
        Some(ArgDef {
            ident: ident?,
            ty: (*typed.ty).clone(),
        })
    }

    /// Rejects types that can't be decoded from the network into a value the handler owns:
    /// references, non-`'static` lifetimes, `impl Trait` and `Self`, anywhere inside the type.
    fn check_owned(&mut self, ty: &Type, what: &str) {
        match ty {
            Type::Reference(_) => self.error(
                ty,
                format_args!("service {what} must be owned types, e.g. `String` instead of `&str`"),
            ),
            Type::ImplTrait(_) => self.error(
                ty,
                format_args!(
                    "service {what} can't use `impl Trait`: name a concrete type, \
                     e.g. `Vec<u8>` instead of `impl AsRef<[u8]>`"
                ),
            ),
            Type::Paren(inner) => self.check_owned(&inner.elem, what),
            Type::Group(inner) => self.check_owned(&inner.elem, what),
            Type::Slice(inner) => self.check_owned(&inner.elem, what),
            Type::Array(inner) => self.check_owned(&inner.elem, what),
            Type::Tuple(tuple) => tuple.elems.iter().for_each(|t| self.check_owned(t, what)),
            Type::Path(path) => {
                if let Some(qself) = &path.qself {
                    self.check_owned(&qself.ty, what);
                }
                if path.qself.is_none() && path.path.segments[0].ident == "Self" {
                    self.error(
                        ty,
                        format_args!("service {what} can't mention `Self`: name the type"),
                    );
                    return;
                }
                for segment in &path.path.segments {
                    let PathArguments::AngleBracketed(args) = &segment.arguments else {
                        continue;
                    };
                    for arg in &args.args {
                        match arg {
                            GenericArgument::Type(t) => self.check_owned(t, what),
                            GenericArgument::AssocType(assoc) => self.check_owned(&assoc.ty, what),
                            GenericArgument::Lifetime(lifetime) if lifetime.ident != "static" => {
                                self.error(
                                    lifetime,
                                    format_args!(
                                        "service {what} must be owned types and can't borrow \
                                         with a lifetime, e.g. `String` instead of `&str`"
                                    ),
                                )
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn error_count(&self) -> usize {
        self.errors.as_ref().map_or(0, |e| e.into_iter().count())
    }
}

/// Where an error points: a single span, or the first to last token of some syntax.
enum SpanOf {
    Span(Span),
    Tokens(TokenStream),
}

impl From<Span> for SpanOf {
    fn from(span: Span) -> Self {
        SpanOf::Span(span)
    }
}

impl<T: quote::ToTokens> From<&T> for SpanOf {
    fn from(tokens: &T) -> Self {
        SpanOf::Tokens(tokens.to_token_stream())
    }
}

/// `MAJOR.MINOR.PATCH`: three decimal numbers without leading zeros (as semver requires).
fn is_semver(version: &str) -> bool {
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

/// The span of the keyword that says what kind of item this is (`struct`, `fn`, ...), so the
/// error for a non-trait points at the part of the item that is wrong.
fn item_keyword_span(item: &Item) -> Span {
    match item {
        Item::Struct(i) => i.struct_token.span,
        Item::Enum(i) => i.enum_token.span,
        Item::Union(i) => i.union_token.span,
        Item::Fn(i) => i.sig.fn_token.span,
        Item::Impl(i) => i.impl_token.span,
        Item::Mod(i) => i.mod_token.span,
        Item::Type(i) => i.type_token.span,
        Item::Const(i) => i.const_token.span,
        Item::Static(i) => i.static_token.span,
        Item::TraitAlias(i) => i.trait_token.span,
        other => other.span(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(args: TokenStream, item: TokenStream) -> ServiceDef {
        match parse_service(args, item) {
            Ok(def) => def,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn parse_err(args: TokenStream, item: TokenStream) -> String {
        match parse_service(args, item) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    #[test]
    fn defaults_come_from_the_trait() {
        let def = parse(
            quote!(),
            quote!(
                trait Calculator {
                    async fn add(&self);
                }
            ),
        );
        assert_eq!(def.name, "Calculator");
        assert_eq!(def.version, "1.0.0");
        assert!(matches!(def.vis, Visibility::Inherited));
    }

    #[test]
    fn raw_identifiers_lose_their_prefix() {
        let def = parse(
            quote!(),
            quote!(
                pub trait r#Match {
                    async fn r#type(&self);
                }
            ),
        );
        assert_eq!(def.name, "Match");
        assert_eq!(def.methods[0].wire_name(), "type");
    }

    #[test]
    fn options_are_read() {
        let options = Options::parse(quote!(name = "calc.Calculator", version = "1.2.0")).unwrap();
        assert_eq!(options.name.unwrap().value(), "calc.Calculator");
        assert_eq!(options.version.unwrap().value(), "1.2.0");

        let options = Options::parse(quote!(version = "0.10.3")).unwrap();
        assert!(options.name.is_none());
        let def = parse(
            quote!(version = "0.10.3"),
            quote!(
                trait A {}
            ),
        );
        assert_eq!((def.name.as_str(), def.version.as_str()), ("A", "0.10.3"));
    }

    #[test]
    fn bad_options_are_rejected() {
        let err = |args| Options::parse(args).err().unwrap().to_string();
        assert!(err(quote!(foo = "x")).contains("unknown service option `foo`"));
        assert!(err(quote!(name = "a", name = "b")).contains("duplicate service option `name`"));
        assert!(err(quote!(version = 1)).contains("must be a string literal"));
        assert!(err(quote!(name)).contains("expected `=`"));
    }

    #[test]
    fn versions_must_be_three_numbers() {
        for ok in ["0.0.0", "1.2.3", "10.20.30"] {
            assert!(is_semver(ok), "{ok}");
        }
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "1.2.x",
            "01.2.3",
            "1..2",
            "1.2.3-beta",
            " 1.2.3",
        ] {
            assert!(!is_semver(bad), "{bad}");
        }
        assert!(
            parse_err(
                quote!(version = "1.2"),
                quote!(
                    trait A {}
                )
            )
            .contains("invalid")
        );
    }

    #[test]
    fn methods_are_modelled_in_order() {
        let def = parse(
            quote!(),
            quote! {
                /// Trait docs.
                pub trait Calc {
                    /// Adds.
                    async fn add(&self, a: i64, b: i64) -> i64;
                    #[stardust(idempotent)]
                    #[allow(dead_code)]
                    async fn ping(&self);
                }
            },
        );
        assert_eq!(def.attrs.len(), 1);
        assert!(matches!(def.vis, Visibility::Public(_)));
        let [add, ping] = &def.methods[..] else {
            panic!("two methods expected");
        };
        assert_eq!(add.wire_name(), "add");
        assert!(!add.idempotent);
        assert_eq!(add.attrs.len(), 1);
        let names: Vec<String> = add.args.iter().map(|a| a.ident.to_string()).collect();
        assert_eq!(names, ["a", "b"]);
        let output = &add.output;
        assert_eq!(quote!(#output).to_string(), "i64");

        assert!(ping.idempotent);
        assert!(ping.args.is_empty());
        // `#[stardust]` is consumed; other attributes stay.
        assert_eq!(ping.attrs.len(), 1);
        assert!(ping.attrs[0].path().is_ident("allow"));
        let output = &ping.output;
        assert_eq!(quote!(#output).to_string(), "()");
    }

    #[test]
    fn all_errors_are_reported_together() {
        let message = parse_err(
            quote!(),
            quote! {
                trait A {
                    fn sync(&self);
                    async fn borrowed(&self, s: &str);
                    async fn connect(&mut self);
                }
            },
        );
        assert!(message.contains("must be an `async fn`"), "{message}");
        assert!(message.contains("must be owned types"), "{message}");
        assert!(message.contains("can't be named `connect`"), "{message}");
        assert!(message.contains("not `&mut self`"), "{message}");
    }

    #[test]
    fn nested_borrows_are_found() {
        for ty in [
            quote!(Vec<&str>),
            quote!(Option<Cow<'a, str>>),
            quote!((u8, &[u8])),
            quote!([impl Copy; 2]),
            quote!(Self),
        ] {
            let item = quote!(trait A { async fn f(&self, x: #ty); });
            let _ = parse_err(quote!(), item);
        }
        let item = quote!(
            trait A {
                async fn f(&self, x: Cow<'static, str>) -> Vec<[u8; 4]>;
            }
        );
        let _ = parse(quote!(), item);
    }

    #[test]
    fn idempotent_attribute_is_strict() {
        let item = |attr: TokenStream| quote!(trait A { #attr async fn f(&self); });
        assert!(
            parse_err(quote!(), item(quote!(#[stardust(retry)])))
                .contains("unknown method attribute `retry`")
        );
        assert!(
            parse_err(quote!(), item(quote!(#[stardust(idempotent, idempotent)])))
                .contains("duplicate")
        );
        assert!(
            parse_err(quote!(), item(quote!(#[stardust(idempotent = true)])))
                .contains("takes no value")
        );
    }

    #[test]
    fn non_traits_are_rejected() {
        assert!(
            parse_err(
                quote!(),
                quote!(
                    struct X;
                )
            )
            .contains("only be applied to a trait")
        );
    }
}
