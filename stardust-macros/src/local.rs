//! Code for in-process calls (`stardust::local`): a hidden object-safe twin of the service
//! trait, so a client can hold any implementation behind one pointer, and what the server and
//! client halves add to use it.
//!
//! The twin (`__XxxLocal`) has one method per unary method of the trait, returning the
//! implementation's future boxed; `XxxServer<T>` implements it (not `T` itself: code that has
//! both traits in scope, say through a glob import, must still be able to call `imp.add(..)`
//! on its implementation without ambiguity). Streaming methods have none: they always go over
//! the network.

use proc_macro2::TokenStream;
use quote::quote;

use crate::parse::{MethodDef, ServiceDef};

/// Whether calls of `m` can be made in-process (no stream either way).
pub(crate) fn is_local(m: &MethodDef) -> bool {
    m.input_item.is_none() && m.output_item.is_none()
}

/// The hidden trait and its impl for the server wrapper.
pub(crate) fn expand_local_trait(
    def: &ServiceDef,
    local: &proc_macro2::Ident,
    server: &proc_macro2::Ident,
    t: &proc_macro2::Ident,
) -> TokenStream {
    let ServiceDef {
        vis,
        ident: trait_ident,
        ..
    } = def;
    let unary: Vec<&MethodDef> = def.methods.iter().filter(|m| is_local(m)).collect();
    let signatures = unary.iter().map(|m| {
        let ident = &m.ident;
        let output = &m.output;
        let args = m.args.iter().map(|a| {
            let (ident, ty) = (&a.ident, &a.ty);
            quote!(#ident: #ty)
        });
        quote! {
            fn #ident<'__stardust>(&'__stardust self #(, #args)*)
                -> ::stardust::__private::LocalFuture<'__stardust, #output>
        }
    });
    let declarations = signatures.clone().map(|s| quote!(#s;));
    let bodies = signatures.zip(&unary).map(|(signature, m)| {
        let ident = &m.ident;
        let args = m.args.iter().map(|a| &a.ident);
        quote! {
            #signature {
                ::std::boxed::Box::pin(<#t as #trait_ident>::#ident(&self.inner #(, #args)*))
            }
        }
    });
    let doc = format!(
        " `{trait_ident}`'s unary methods with boxed futures, so a client can hold any\n \
         implementation for in-process calls (`stardust::local`). Not a public API."
    );
    quote! {
        #[doc = #doc]
        #[doc(hidden)]
        #vis trait #local: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#declarations)*
        }

        impl<#t: #trait_ident> #local for #server<#t> {
            #(#bodies)*
        }
    }
}
