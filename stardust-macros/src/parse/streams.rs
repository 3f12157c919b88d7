//! Streams in a method's signature: `Streaming<T>` as the last argument (items the consumer
//! sends), `Stream<T>` as the return type (items the handler sends), and nowhere else.
//!
//! The macro cannot resolve types, so it recognises the two by how they are written: `Stream`
//! or `Streaming` with one type argument, bare or as `stardust::…` / `::stardust::…`. The
//! generated code checks at compile time that what is written so is Stardust's own type (a
//! type of the user's named `Stream` is written with another path to stay a plain value).

use syn::{GenericArgument, PathArguments, Type};

use super::diagnostics::ServiceBuilder;

/// Which of the two stream types a type is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum StreamKind {
    /// `Stream<T>`: items this side sends.
    Stream,
    /// `Streaming<T>`: items this side receives.
    Streaming,
}

impl StreamKind {
    fn name(self) -> &'static str {
        match self {
            StreamKind::Stream => "Stream",
            StreamKind::Streaming => "Streaming",
        }
    }
}

/// `Some((kind, item type))` when `ty` is written as one of the stream types.
pub(crate) fn stream_type(ty: &Type) -> Option<(StreamKind, &Type)> {
    let Type::Path(path) = ty else {
        return None;
    };
    if path.qself.is_some() {
        return None;
    }
    let segments: Vec<_> = path.path.segments.iter().collect();
    let last = *segments.last()?;
    let prefix_ok = match &segments[..segments.len() - 1] {
        [] => path.path.leading_colon.is_none(),
        [krate] => krate.ident == "stardust" && krate.arguments.is_none(),
        _ => false,
    };
    if !prefix_ok {
        return None;
    }
    let kind = if last.ident == "Stream" {
        StreamKind::Stream
    } else if last.ident == "Streaming" {
        StreamKind::Streaming
    } else {
        return None;
    };
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.iter().collect::<Vec<_>>()[..] {
        [GenericArgument::Type(item)] => Some((kind, item)),
        _ => None,
    }
}

/// The first stream type anywhere inside `ty` (not `ty` itself).
fn nested_stream(ty: &Type) -> Option<(StreamKind, &Type)> {
    let inner: Vec<&Type> = match ty {
        Type::Paren(t) => vec![&t.elem],
        Type::Group(t) => vec![&t.elem],
        Type::Slice(t) => vec![&t.elem],
        Type::Array(t) => vec![&t.elem],
        Type::Tuple(t) => t.elems.iter().collect(),
        Type::Path(p) => p
            .path
            .segments
            .iter()
            .filter_map(|s| match &s.arguments {
                PathArguments::AngleBracketed(a) => Some(a.args.iter()),
                _ => None,
            })
            .flatten()
            .filter_map(|a| match a {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    inner.into_iter().find_map(find_stream)
}

/// `ty` itself when it is a stream type, or the first one inside it.
fn find_stream(ty: &Type) -> Option<(StreamKind, &Type)> {
    match stream_type(ty) {
        Some((kind, _)) => Some((kind, ty)),
        None => nested_stream(ty),
    }
}

impl ServiceBuilder {
    /// Checks that no stream hides inside `ty` (an argument's or the return type).
    pub(super) fn check_not_nested(&mut self, ty: &Type, position: &str) {
        let inside = match stream_type(ty) {
            Some((_, item)) => find_stream(item),
            None => nested_stream(ty),
        };
        if let Some((kind, at)) = inside {
            let advice = match position {
                "return type" => {
                    "return `Stream<T>` itself, with errors in the items if need be: \
                     `Stream<Result<T, E>>`"
                }
                _ => {
                    "take `Streaming<T>` itself as the last argument (a consumer with \
                     nothing to send sends an empty stream)"
                }
            };
            self.error(
                at,
                format_args!(
                    "a `{}<T>` can't be nested inside another type in a {position}: {advice}",
                    kind.name()
                ),
            );
        }
    }

    /// A `Stream<T>` where an argument goes.
    pub(super) fn stream_as_argument(&mut self, ty: &Type, ident: &syn::Ident) {
        self.error(
            ty,
            format_args!(
                "a method receives a stream of items as `Streaming<T>` (`Stream<T>` is what a \
                 method returns): write `{ident}: {}`",
                renamed(ty, "Streaming")
            ),
        );
    }

    /// A `Streaming<T>` argument that is not the last one.
    pub(super) fn streaming_not_last(&mut self, ty: &Type, ident: &syn::Ident) {
        self.error(
            ty,
            format_args!(
                "a `Streaming<T>` argument must be the method's last argument: move `{ident}` \
                 after the others"
            ),
        );
    }

    /// More than one `Streaming<T>` argument: reported once, at the first.
    pub(super) fn several_input_streams(&mut self, ty: &Type, idents: &[&syn::Ident]) {
        let names: Vec<String> = idents.iter().map(|ident| format!("`{ident}`")).collect();
        let names = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => names.concat(),
        };
        self.error(
            ty,
            format_args!(
                "a method takes at most one `Streaming<T>` argument, as its last: merge {names} \
                 into one `Streaming<T>` whose items say which stream they belong to (e.g. an \
                 enum)"
            ),
        );
    }

    /// A `Streaming<T>` as the return type.
    pub(super) fn streaming_as_return(&mut self, ty: &Type) {
        self.error(
            ty,
            format_args!(
                "a method returns a stream of items as `Stream<T>` (`Streaming<T>` is what a \
                 method receives): write `-> {}`",
                renamed(ty, "Stream")
            ),
        );
    }
}

/// `ty`, a stream type, as the user wrote it but with the other stream type's name: what to
/// write instead, e.g. `stardust::Streaming<Chunk>` for `stardust::Stream<Chunk>`.
fn renamed(ty: &Type, name: &str) -> String {
    let mut ty = ty.clone();
    if let Type::Path(path) = &mut ty
        && let Some(last) = path.path.segments.last_mut()
    {
        last.ident = syn::Ident::new(name, last.ident.span());
    }
    type_text(&ty)
}

/// A type as source text: tokens joined as a person writes them (`Vec<u8>`, not `Vec < u8 >`).
pub(crate) fn type_text(ty: &Type) -> String {
    let mut text = quote::quote!(#ty).to_string();
    for (from, to) in [
        (" :: ", "::"),
        (":: ", "::"),
        (" < ", "<"),
        ("< ", "<"),
        (" <", "<"),
        (" >", ">"),
        (" ,", ","),
        (" ;", ";"),
        ("& ", "&"),
    ] {
        text = text.replace(from, to);
    }
    text
}
