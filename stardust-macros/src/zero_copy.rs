//! `Bytes` arguments and results: the generated code wraps them in
//! `::stardust::__private::ZeroCopy`, which the runtime sends and receives without copying
//! large payloads (see `stardust::protocol::zero_copy`). The wire format is the same `bin` as
//! without the wrapper. A type is treated so when it is written `Bytes` (any path ending in a
//! plain `Bytes`, e.g. `bytes::Bytes`); it must then be `bytes::Bytes` itself.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, PathArguments, Type};

/// Whether `ty` is written as `Bytes` (possibly with a path in front).
pub fn is_bytes(ty: &Type) -> bool {
    match ty {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Bytes" && matches!(s.arguments, PathArguments::None)),
        Type::Group(g) => is_bytes(&g.elem),
        Type::Paren(p) => is_bytes(&p.elem),
        _ => false,
    }
}

/// An argument as the client puts it in the argument tuple.
pub fn client_arg(ident: &Ident, ty: &Type) -> TokenStream {
    if is_bytes(ty) {
        quote_spanned!(ty.span()=> ::stardust::__private::ZeroCopy(#ident))
    } else {
        ident.to_token_stream()
    }
}

/// An argument's type as the server decodes it.
pub fn server_arg_type(ty: &Type) -> TokenStream {
    if is_bytes(ty) {
        quote_spanned!(ty.span()=> ::stardust::__private::ZeroCopy)
    } else {
        ty.to_token_stream()
    }
}

/// Statements turning the decoded wrappers back into the arguments' own types.
pub fn server_unwrap<'a>(args: impl IntoIterator<Item = (&'a Ident, &'a Type)>) -> TokenStream {
    args.into_iter()
        .filter(|(_, ty)| is_bytes(ty))
        .map(|(ident, ty)| quote_spanned!(ty.span()=> let #ident: #ty = #ident.0;))
        .collect()
}

/// The handler's output as the server encodes it.
pub fn server_output(output: &Type, value: TokenStream) -> TokenStream {
    if is_bytes(output) {
        quote_spanned!(output.span()=> ::stardust::__private::ZeroCopy(#value))
    } else {
        value
    }
}

/// The client's call of a unary method, decoding a `Bytes` result through the wrapper.
/// Spanned at `span` (the method's name), where errors about the call's bounds point.
pub fn client_call(
    output: &Type,
    index: &TokenStream,
    call_args: &TokenStream,
    span: Span,
) -> TokenStream {
    if is_bytes(output) {
        quote_spanned! {span=>
            self.client
                .call::<_, ::stardust::__private::ZeroCopy>(Self::DESCRIPTOR, #index, &#call_args)
                .await
                .map(|bytes| bytes.0)
        }
    } else {
        quote_spanned!(span=> self.client.call(Self::DESCRIPTOR, #index, &#call_args).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_is_recognised_by_its_last_segment() {
        for yes in ["Bytes", "bytes::Bytes", "::bytes::Bytes", "(Bytes)"] {
            assert!(is_bytes(&syn::parse_str(yes).unwrap()), "{yes}");
        }
        for no in [
            "Vec<u8>",
            "ByteBuf",
            "Bytes<u8>",
            "&Bytes",
            "BytesMut",
            "[u8; 4]",
        ] {
            assert!(!is_bytes(&syn::parse_str(no).unwrap()), "{no}");
        }
    }
}
