//! One method's signature: `async fn name(&self, arg: Type, ...) -> Output` and nothing else.
//! Checks the qualifiers, the receiver and each argument's pattern, and builds the
//! [`MethodDef`]; whether the types are owned is `types`' job.

use syn::ext::IdentExt;
use syn::{FnArg, Ident, Pat, Receiver, ReturnType, Signature, TraitItemFn};

use super::diagnostics::ServiceBuilder;
use super::{ArgDef, MethodDef, StreamKind, stream_type};

/// Names a service method can't have, because the generated `XxxClient` already has an
/// associated item of that name and the two would collide.
const RESERVED_METHOD_NAMES: &[&str] = &["connect", "new", "client", "with_timeout", "DESCRIPTOR"];

impl ServiceBuilder {
    /// Validates one trait method; `None` when it had errors (already recorded).
    pub(super) fn method(&mut self, service: &Ident, method: TraitItemFn) -> Option<MethodDef> {
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
        let input_item = self.input_stream(&args);

        if let Some(variadic) = &sig.variadic {
            self.error(variadic, "a service method can't be variadic");
        }

        let output = match &sig.output {
            ReturnType::Default => syn::parse_quote!(()),
            ReturnType::Type(_, ty) => {
                match stream_type(ty) {
                    Some((_, item)) => self.check_owned(item, "stream items"),
                    None => self.check_owned(ty, "return types"),
                }
                (**ty).clone()
            }
        };
        self.check_not_nested(&output, "return type");
        let output_item = match stream_type(&output) {
            Some((StreamKind::Stream, item)) => Some(item.clone()),
            Some((StreamKind::Streaming, _)) => {
                self.streaming_as_return(&output);
                None
            }
            None => None,
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
            input_item,
            output_item,
        })
    }

    /// The item type of the method's input stream: a `Streaming<T>` argument, which must be
    /// the last one. Reports streams anywhere else among the arguments.
    fn input_stream(&mut self, args: &[ArgDef]) -> Option<syn::Type> {
        let streams: Vec<&ArgDef> = args
            .iter()
            .filter(|arg| matches!(stream_type(&arg.ty), Some((StreamKind::Streaming, _))))
            .collect();
        if let [first, _, ..] = streams[..] {
            let idents: Vec<&Ident> = streams.iter().map(|arg| &arg.ident).collect();
            self.several_input_streams(&first.ty, &idents);
        }
        let mut item = None;
        for (i, arg) in args.iter().enumerate() {
            self.check_not_nested(&arg.ty, "method argument");
            match stream_type(&arg.ty) {
                Some((StreamKind::Stream, _)) => self.stream_as_argument(&arg.ty, &arg.ident),
                // With several, the error above says it all.
                Some((StreamKind::Streaming, _)) if i + 1 < args.len() && streams.len() == 1 => {
                    self.streaming_not_last(&arg.ty, &arg.ident)
                }
                Some((StreamKind::Streaming, _)) if i + 1 < args.len() => {}
                Some((StreamKind::Streaming, t)) => item = Some(t.clone()),
                None => {}
            }
        }
        item
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
        match stream_type(&typed.ty) {
            Some((_, item)) => self.check_owned(item, "stream items"),
            None => self.check_owned(&typed.ty, "arguments"),
        }
        if self.error_count() > before {
            return None;
        }
        Some(ArgDef {
            ident: ident?,
            ty: (*typed.ty).clone(),
        })
    }
}
