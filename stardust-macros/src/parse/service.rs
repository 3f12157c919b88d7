//! The trait as a whole: the entry point, the trait's header (generics, supertraits, `unsafe`,
//! ...) and which items it may contain. Each method is then checked by `method`.

use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned;
use syn::{Error, Item, ItemTrait, TraitItem};

use super::ServiceDef;
use super::attrs::Options;
use super::diagnostics::ServiceBuilder;

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

impl ServiceBuilder {
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

        match self.into_errors() {
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
