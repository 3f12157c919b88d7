//! Code generation: the rewritten trait, the `XxxServer` wrapper and the typed `XxxClient`.
//!
//! The generated code is meant to be read (`cargo expand`), so it stays plain: the runtime does
//! the work, and the macro only writes the glue a person would otherwise write by hand.
//!
//! Rules the output follows:
//! - Only `::stardust`, `::core` and `::std` paths, so a crate depending on nothing but
//!   `stardust` (and `serde` for its own types) can declare services.
//! - Every path is absolute and every trait call fully qualified, so user items named `Result`,
//!   `Arc`, `Clone`, ... or user methods named `clone` can't change what the glue means.
//! - Locals the macro introduces next to user arguments (`method`, `args`, `inner`) have
//!   `Span::mixed_site()` hygiene: a user argument with the same name is a different variable.

use proc_macro2::{Ident, Literal, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use crate::describe;
use crate::local;
use crate::parse::{MethodDef, ServiceDef};
use crate::zero_copy;

/// Generates everything `#[stardust::service]` expands to.
pub(crate) fn expand(def: &ServiceDef) -> TokenStream {
    let names = Names::new(def);
    let service_trait = expand_trait(def);
    let type_checks = expand_type_checks(def);
    let local_trait =
        local::expand_local_trait(def, &names.local, &names.server, &names.implementation);
    let server = expand_server(def, &names);
    let client = expand_client(def, &names);
    quote! {
        #service_trait
        #type_checks
        #local_trait
        #server
        #client
    }
}

/// Identifiers shared by the server and client halves.
struct Names {
    server: Ident,
    client: Ident,
    /// The server's type parameter (the user's implementation). Usually `T`, renamed when a
    /// method's argument types mention a type called `T`, which the parameter would shadow.
    implementation: Ident,
    /// The hidden object-safe twin of the trait for in-process calls.
    local: Ident,
}

impl Names {
    fn new(def: &ServiceDef) -> Names {
        let mut used = Vec::new();
        used.push(def.ident.to_string());
        for arg in def.methods.iter().flat_map(|m| &m.args) {
            collect_idents(arg.ty.to_token_stream(), &mut used);
        }
        let implementation = std::iter::once("T".to_owned())
            .chain((0..).map(|i| format!("__StardustT{i}")))
            .find(|name| !used.contains(name))
            .expect("an unused name exists");
        Names {
            server: format_ident!("{}Server", def.ident),
            client: format_ident!("{}Client", def.ident),
            local: format_ident!("__{}Local", def.ident),
            implementation: Ident::new(&implementation, Span::call_site()),
        }
    }
}

fn collect_idents(tokens: TokenStream, out: &mut Vec<String>) {
    for token in tokens {
        match token {
            TokenTree::Ident(ident) => out.push(ident.to_string()),
            TokenTree::Group(group) => collect_idents(group.stream(), out),
            _ => {}
        }
    }
}

/// The trait, with `async fn` turned into `fn -> impl Future + Send` so the server can spawn
/// calls on a multi-threaded runtime. Implementations still write plain `async fn`.
fn expand_trait(def: &ServiceDef) -> TokenStream {
    let ServiceDef {
        attrs, vis, ident, ..
    } = def;
    let methods = def.methods.iter().map(|method| {
        let MethodDef {
            attrs,
            receiver,
            ident,
            args,
            output,
            ..
        } = method;
        let args = args.iter().map(|arg| {
            let (ident, ty) = (&arg.ident, &arg.ty);
            quote!(#ident: #ty)
        });
        quote! {
            #(#attrs)*
            fn #ident(#receiver #(, #args)*)
                -> impl ::core::future::Future<Output = #output> + ::core::marker::Send;
        }
    });
    quote! {
        #(#attrs)*
        #vis trait #ident: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#methods)*
        }
    }
}

/// Static assertions that every argument and return type can cross the network: the client
/// encodes arguments (`Serialize`) and decodes results (`DeserializeOwned`), the server the
/// reverse. Each check is spanned at the type as the user wrote it and its bounds carry messages
/// about the service, so a type that misses a trait is reported at the trait, naming the type and
/// the bound, rather than as a bound of `Client::call` on a tuple of arguments somewhere inside
/// the runtime. A type used in several places is checked once per role, at its first occurrence.
///
/// The checks sit in a function that is never called, so they cost nothing at run time. It
/// returns `impl Sized` because rustc type-checks the body of such a function (like that of an
/// `async fn`, such as the client's methods) together with the item signatures, ahead of plain
/// bodies: declared before the server and client, these errors come first.
fn expand_type_checks(def: &ServiceDef) -> TokenStream {
    let mut checked: Vec<(&str, String)> = Vec::new();
    let mut checks = Vec::new();
    for method in &def.methods {
        let args = method
            .value_args()
            .iter()
            .map(|arg| ("assert_argument", &arg.ty));
        let input = method
            .input_item
            .iter()
            .map(|item| ("assert_input_item", item));
        // A stream is checked by its items; `()` (also what a method without `->` returns)
        // needs no check.
        let output = match &method.output_item {
            Some(item) => Some(("assert_output_item", item)),
            None => (!is_unit(&method.output)).then_some(("assert_return", &method.output)),
        };
        // What the trait writes `Stream<..>` / `Streaming<..>` must be Stardust's own.
        let streams = method
            .stream_arg()
            .map(|arg| &arg.ty)
            .into_iter()
            .chain(method.output_item.as_ref().map(|_| &method.output))
            .map(|ty| ("assert_stardust_stream", ty));
        for (check, ty) in args.chain(input).chain(output).chain(streams) {
            let key = (check, ty.to_token_stream().to_string());
            if checked.contains(&key) {
                continue;
            }
            checked.push(key);
            let check = Ident::new(check, ty.span());
            checks.push(quote_spanned!(ty.span()=> ::stardust::__private::#check::<#ty>();));
        }
    }
    if checks.is_empty() {
        return TokenStream::new();
    }
    quote! {
        const _: () = {
            /// Compile-time checks (never called): every argument and return type can be
            /// encoded and decoded.
            #[allow(dead_code)]
            fn type_checks() -> impl ::core::marker::Sized {
                #(#checks)*
            }
        };
    }
}

fn is_unit(ty: &syn::Type) -> bool {
    matches!(ty, syn::Type::Tuple(tuple) if tuple.elems.is_empty())
}

/// `XxxServer<T>`: turns `(method index, argument bytes)` into a call of the user's `T`.
fn expand_server(def: &ServiceDef, names: &Names) -> TokenStream {
    let ServiceDef {
        vis,
        ident: trait_ident,
        ..
    } = def;
    let Names {
        server,
        client,
        implementation: t,
        local,
    } = names;

    let method = Ident::new("method", Span::mixed_site());
    let inner = Ident::new("inner", Span::mixed_site());
    // Unused (and so named `_args`) when no method takes arguments in its array.
    let takes_args = def.methods.iter().any(|m| !m.value_args().is_empty());
    let args = Ident::new(
        if takes_args { "args" } else { "_args" },
        Span::mixed_site(),
    );

    let arms = def.methods.iter().enumerate().map(|(index, m)| {
        let index = Literal::usize_unsuffixed(index);
        let name = &m.ident;
        let arg_names: Vec<&Ident> = m.args.iter().map(|a| &a.ident).collect();
        let value_args = m.value_args();
        let decode = if value_args.is_empty() {
            TokenStream::new()
        } else {
            let pattern = tuple(value_args.iter().map(|a| &a.ident), Span::call_site());
            let types = tuple(
                value_args.iter().map(|a| zero_copy::server_arg_type(&a.ty)),
                types_span(m),
            );
            let arity = Literal::usize_unsuffixed(value_args.len());
            let unwrap = zero_copy::server_unwrap(value_args.iter().map(|a| (&a.ident, &a.ty)));
            // Spanned at the arguments, so "`X: Deserialize` is not satisfied" points there
            // rather than at the attribute.
            quote_spanned! {types_span(m)=>
                let #pattern = ::stardust::__private::decode_args::<#types>(#args, #arity)?;
                #unwrap
            }
        };
        // The input stream is not in the argument array: the server hands it over.
        let input = match (m.stream_arg(), &m.input_item) {
            (Some(arg), Some(item)) => {
                let ident = &arg.ident;
                quote_spanned! {arg.ty.span()=>
                    let #ident = ::stardust::__private::input::<#item>()?;
                }
            }
            _ => TokenStream::new(),
        };
        // Spanned at the return type, which is what must be `Serialize` (the constructor's
        // name too: rustc points there for "required by a bound introduced by this call").
        let wrap = Ident::new(
            if m.output_item.is_some() {
                "streaming"
            } else {
                "new"
            },
            m.output.span(),
        );
        let output = zero_copy::server_output(
            &m.output,
            quote_spanned!(m.output.span()=> <#t as #trait_ident>::#name(&#inner #(, #arg_names)*).await),
        );
        let call = quote_spanned! {m.output.span()=>
            ::stardust::Call::#wrap(async move { #output })
        };
        quote! {
            #index => {
                #decode
                #input
                let #inner = ::std::sync::Arc::clone(&self.inner);
                ::core::result::Result::Ok(#call)
            }
        }
    });

    let doc = doc_lines(&format!(
        "Serves an implementation of [`{trait_ident}`]: pass `{server}::new(your_impl)` to a\n\
         `stardust::Server`.\n\
         \n\
         Calls run concurrently on one shared instance (kept in an `Arc`), which is why the\n\
         trait's methods take `&self`."
    ));
    quote! {
        #doc
        #vis struct #server<T> {
            inner: ::std::sync::Arc<T>,
        }

        impl<T: #trait_ident> #server<T> {
            /// Wraps `service` so a `stardust::Server` can host it.
            pub fn new(service: T) -> Self {
                Self::from_arc(::std::sync::Arc::new(service))
            }

            /// Wraps a service that is already shared, e.g. with other parts of the program.
            pub fn from_arc(service: ::std::sync::Arc<T>) -> Self {
                Self { inner: service }
            }
        }

        impl<T> ::core::clone::Clone for #server<T> {
            fn clone(&self) -> Self {
                Self { inner: ::std::sync::Arc::clone(&self.inner) }
            }
        }

        impl<T> ::core::fmt::Debug for #server<T> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#server)).finish_non_exhaustive()
            }
        }

        impl<#t: #trait_ident> ::stardust::Service for #server<#t> {
            fn descriptor(&self) -> &'static ::stardust::ServiceDescriptor {
                #client::DESCRIPTOR
            }

            fn call(
                &self,
                #method: usize,
                #args: &[u8],
            ) -> ::core::result::Result<::stardust::Call, ::stardust::Error> {
                match #method {
                    #(#arms)*
                    _ => ::core::result::Result::Err(
                        ::stardust::__private::unknown_method(#client::DESCRIPTOR, #method),
                    ),
                }
            }

            fn local(&self) -> ::core::option::Option<::stardust::local::LocalImpl> {
                let server: ::std::sync::Arc<Self> = ::std::sync::Arc::new(
                    Self { inner: ::std::sync::Arc::clone(&self.inner) },
                );
                let local: ::std::sync::Arc<dyn #local> = server;
                ::core::option::Option::Some(
                    ::stardust::local::LocalImpl::new(#client::DESCRIPTOR, local),
                )
            }
        }
    }
}

/// `XxxClient`: one `async fn` per method, each a typed wrapper over `stardust::Client::call`.
fn expand_client(def: &ServiceDef, names: &Names) -> TokenStream {
    let ServiceDef {
        vis,
        ident: trait_ident,
        name,
        version,
        ..
    } = def;
    let client = &names.client;
    let local_trait = &names.local;

    let method_descriptors = def.methods.iter().map(|m| {
        let name = m.wire_name();
        let idempotent = m.idempotent;
        let input_stream = m.input_item.is_some();
        let output_stream = m.output_item.is_some();
        let args = m.args.iter().map(|a| {
            let arg = syn::ext::IdentExt::unraw(&a.ident).to_string();
            let ty = describe::type_text(&a.ty);
            quote!(::stardust::ArgDescriptor { name: #arg, ty: #ty })
        });
        let returns = describe::type_text(&m.output);
        let docs = describe::doc_text(&m.attrs);
        quote! {
            ::stardust::MethodDescriptor {
                name: #name,
                idempotent: #idempotent,
                input_stream: #input_stream,
                output_stream: #output_stream,
                args: &[#(#args),*],
                returns: #returns,
                docs: #docs,
            }
        }
    });
    let service_docs = describe::doc_text(&def.attrs);

    let methods = def.methods.iter().enumerate().map(|(index, m)| {
        let index = Literal::usize_unsuffixed(index);
        let MethodDef {
            ident,
            args,
            output,
            ..
        } = m;
        let docs: Vec<_> = m
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .collect();
        let default_doc = docs.is_empty().then(|| {
            let doc = format!(" Calls `{}` on the remote service.", m.wire_name());
            quote!(#[doc = #doc])
        });
        // The consumer sends the input stream as a `Stream` and receives the output as a
        // `Streaming`: the mirror image of what the handler sees.
        let params = args.iter().map(|arg| {
            let ident = &arg.ident;
            match (m.stream_arg(), &m.input_item) {
                (Some(stream), Some(item)) if stream.ident == *ident => {
                    quote!(#ident: ::stardust::Stream<#item>)
                }
                _ => {
                    let ty = &arg.ty;
                    quote!(#ident: #ty)
                }
            }
        });
        let value_args = m.value_args();
        let call_args = if value_args.is_empty() {
            quote!(::stardust::__private::NoArgs)
        } else {
            tuple(
                value_args
                    .iter()
                    .map(|a| zero_copy::client_arg(&a.ident, &a.ty)),
                types_span(m),
            )
        };
        let returns = match &m.output_item {
            Some(item) => quote!(::stardust::Streaming<#item>),
            None => quote!(#output),
        };
        let input = m.stream_arg().map(|arg| &arg.ident);
        // Spanned at the method: the bounds on `call` are about its arguments and output.
        let arg_names = args.iter().map(|a| &a.ident);
        let unary =
            zero_copy::client_call(output, &index.to_token_stream(), &call_args, ident.span());
        let call = match (&m.output_item, input) {
            (None, None) => quote_spanned! {ident.span()=>
                if let ::core::option::Option::Some((imp, local)) = self.local.get() {
                    return ::stardust::__private::call_local(
                        &self.client, local, #index, imp.#ident(#(#arg_names),*),
                    )
                    .await;
                }
                #unary
            },
            (None, Some(input)) => quote_spanned! {ident.span()=>
                self.client
                    .call_with_stream(Self::DESCRIPTOR, #index, &#call_args, #input)
                    .await
            },
            (Some(_), input) => {
                let input = match input {
                    Some(input) => quote!(::core::option::Option::Some(#input)),
                    None => quote!(::core::option::Option::<::stardust::Stream<()>>::None),
                };
                quote_spanned! {ident.span()=>
                    self.client
                        .call_streaming(Self::DESCRIPTOR, #index, &#call_args, #input)
                        .await
                }
            }
        };
        quote! {
            #(#docs)*
            #default_doc
            pub async fn #ident(&self #(, #params)*)
                -> ::core::result::Result<#returns, ::stardust::Error>
            {
                #call
            }
        }
    });

    let doc = doc_lines(&format!(
        "A typed client for the [`{trait_ident}`] service (`{name}` version {version}).\n\
         \n\
         Each method sends one call and returns the remote method's output, or a\n\
         `stardust::Error` when the call itself failed. Cloning is cheap and shares the\n\
         connection."
    ));
    quote! {
        #doc
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #vis struct #client {
            client: ::stardust::Client,
            /// The implementation, when calls go to it in-process (`stardust::local`).
            local: ::stardust::__private::Local<dyn #local_trait>,
        }

        impl #client {
            /// The service's descriptor: name, version, methods.
            pub const DESCRIPTOR: &'static ::stardust::ServiceDescriptor =
                &::stardust::ServiceDescriptor {
                    name: #name,
                    version: #version,
                    methods: &[#(#method_descriptors),*],
                    docs: #service_docs,
                };

            /// Connects to a provider of the service at `addr`.
            pub async fn connect<A: ::stardust::__private::ToSocketAddrs>(
                addr: A,
            ) -> ::core::result::Result<Self, ::stardust::Error> {
                ::core::result::Result::Ok(Self::new(::stardust::Client::connect(addr).await?))
            }

            /// Wraps an existing `stardust::Client`, e.g. one built with `ClientBuilder`.
            pub fn new(client: ::stardust::Client) -> Self {
                Self { client, local: ::stardust::__private::Local::none() }
            }

            /// A client that calls `service` (an implementation wrapped for serving) in this
            /// process: no socket, no serializer (see `stardust::local`). Its unary methods
            /// only; a streaming method fails with `Connect`.
            pub fn in_process<S: ::stardust::Service>(service: &S) -> Self {
                let client = ::stardust::Client::builder().in_process();
                match ::stardust::Service::local(service) {
                    ::core::option::Option::Some(imp) => {
                        let local = ::stardust::local::LocalService::from(imp);
                        <Self as ::stardust::ServiceClient>::with_local(client, &local)
                    }
                    ::core::option::Option::None => Self::new(client),
                }
            }

            /// The untyped client underneath.
            pub fn client(&self) -> &::stardust::Client {
                &self.client
            }

            /// A client sharing this one's connection whose calls time out after `timeout`.
            pub fn with_timeout(&self, timeout: ::core::time::Duration) -> Self {
                Self {
                    client: self.client.with_timeout(timeout),
                    local: ::core::clone::Clone::clone(&self.local),
                }
            }

            #(#methods)*
        }

        impl ::stardust::ServiceClient for #client {
            // Names the inherent constant: inherent items win over trait items in paths.
            const DESCRIPTOR: &'static ::stardust::ServiceDescriptor = #client::DESCRIPTOR;

            fn from_client(client: ::stardust::Client) -> Self {
                Self::new(client)
            }

            fn client(&self) -> &::stardust::Client {
                &self.client
            }

            fn with_local(
                client: ::stardust::Client,
                local: &::stardust::local::LocalService,
            ) -> Self {
                Self { client, local: ::stardust::__private::Local::of(local) }
            }
        }
    }
}

/// One `#[doc]` attribute per line, which `cargo expand` shows as ordinary `///` comments.
fn doc_lines(text: &str) -> TokenStream {
    text.lines()
        .map(|line| {
            let line = if line.is_empty() {
                String::new()
            } else {
                format!(" {line}")
            };
            quote!(#[doc = #line])
        })
        .collect()
}

/// Where to report a problem with a method's arguments as a whole: the only argument's type, or
/// the method's name when there are several.
fn types_span(method: &MethodDef) -> Span {
    match method.value_args() {
        [only] => only.ty.span(),
        _ => method.ident.span(),
    }
}

/// `(a, b)`, or `(a,)` for one element so it stays a tuple. The parentheses get `span`, which is
/// where rustc points when the tuple as a whole misses a trait (e.g. an element isn't `Serialize`).
fn tuple<T: ToTokens>(items: impl IntoIterator<Item = T>, span: Span) -> TokenStream {
    let items: Vec<T> = items.into_iter().collect();
    if items.len() == 1 {
        let item = &items[0];
        quote_spanned!(span=> (#item,))
    } else {
        quote_spanned!(span=> (#(#items),*))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn type_checks(item: TokenStream) -> String {
        let def = crate::parse::parse_service(TokenStream::new(), item).expect("a valid service");
        expand_type_checks(&def).to_string()
    }

    #[test]
    fn each_type_is_checked_once_per_role() {
        let checks = type_checks(quote! {
            trait Store {
                async fn put(&self, id: u64, item: Item) -> u64;
                async fn replace(&self, id: u64, old: Item, new: Item) -> Option<Item>;
                async fn ping(&self);
            }
        });
        let count = |needle: &str| checks.matches(needle).count();
        assert_eq!(count("assert_argument :: < u64 >"), 1, "{checks}");
        assert_eq!(count("assert_argument :: < Item >"), 1, "{checks}");
        assert_eq!(count("assert_return :: < u64 >"), 1, "{checks}");
        assert_eq!(count("assert_return :: < Option < Item > >"), 1, "{checks}");
        // `ping` returns `()`: nothing to check.
        assert_eq!(count("assert_"), 4, "{checks}");
    }

    #[test]
    fn no_checks_without_types() {
        let checks = type_checks(quote! {
            trait Ping {
                async fn ping(&self);
            }
        });
        assert!(checks.is_empty(), "{checks}");
    }
}
