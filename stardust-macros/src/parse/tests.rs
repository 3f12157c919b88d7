//! Unit tests of parsing and validation; the messages as users see them are covered by the
//! trybuild cases in `tests/ui/fail`.

use super::attrs::{Options, is_semver};
use super::*;
use proc_macro2::TokenStream;
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

fn ty(tokens: TokenStream) -> Type {
    syn::parse2(tokens).expect("a type")
}

fn text(ty: &Type) -> String {
    quote!(#ty).to_string()
}

#[test]
fn streams_are_recognised_by_name_and_path() {
    for (written, kind, item) in [
        (quote!(Stream<Line>), StreamKind::Stream, "Line"),
        (quote!(stardust::Stream<Line>), StreamKind::Stream, "Line"),
        (quote!(::stardust::Stream<Line>), StreamKind::Stream, "Line"),
        (quote!(Streaming<u8>), StreamKind::Streaming, "u8"),
        (quote!(stardust::Streaming<u8>), StreamKind::Streaming, "u8"),
        (
            quote!(::stardust::Streaming<u8>),
            StreamKind::Streaming,
            "u8",
        ),
        (
            quote!(Stream<Result<Line, E>>),
            StreamKind::Stream,
            "Result < Line , E >",
        ),
    ] {
        let written = ty(written);
        let Some((found, found_item)) = stream_type(&written) else {
            panic!("{} is a stream", text(&written));
        };
        assert_eq!(found, kind, "{}", text(&written));
        assert_eq!(text(found_item), item);
    }
    for other in [
        quote!(other::Stream<Line>),
        quote!(self::Stream<Line>),
        quote!(crate::Stream<Line>),
        quote!(::Stream<Line>),
        quote!(stardust::stream::Stream<Line>),
        quote!(futures::stream::Stream<Line>),
        quote!(<X as Y>::Stream<Line>),
        quote!(Stream),
        quote!(Stream<A, B>),
        quote!(Stream<'static>),
        quote!(Stream<N = u8>),
        quote!(stardust<X>::Stream<Line>),
        quote!(Streams<Line>),
        quote!(Vec<Stream<Line>>),
        quote!(&Stream<Line>),
    ] {
        let other = ty(other);
        assert!(stream_type(&other).is_none(), "{}", text(&other));
    }
}

#[test]
fn streaming_methods_are_modelled() {
    let def = parse(
        quote!(),
        quote! {
            trait Logs {
                async fn tail(&self, file: String) -> stardust::Stream<Line>;
                async fn upload(&self, name: String, chunks: ::stardust::Streaming<Chunk>) -> u64;
                async fn chat(&self, input: Streaming<Msg>) -> Stream<Result<Msg, E>>;
                async fn batch(&self, lines: other::Streaming<Line>) -> other::Stream<Line>;
            }
        },
    );
    let [tail, upload, chat, batch] = &def.methods[..] else {
        panic!("four methods expected");
    };
    let item = |t: &Option<Type>| t.as_ref().map(text);

    assert_eq!(item(&tail.output_item).as_deref(), Some("Line"));
    assert!(tail.input_item.is_none() && tail.stream_arg().is_none());
    assert_eq!(tail.value_args().len(), 1);

    assert_eq!(item(&upload.input_item).as_deref(), Some("Chunk"));
    assert!(upload.output_item.is_none());
    assert_eq!(upload.stream_arg().unwrap().ident, "chunks");
    let values: Vec<String> = upload
        .value_args()
        .iter()
        .map(|a| a.ident.to_string())
        .collect();
    assert_eq!(values, ["name"]);
    // The trait keeps every argument, the stream included.
    assert_eq!(upload.args.len(), 2);

    assert_eq!(item(&chat.input_item).as_deref(), Some("Msg"));
    assert_eq!(
        item(&chat.output_item).as_deref(),
        Some("Result < Msg , E >")
    );
    assert!(chat.value_args().is_empty());

    // Other paths are plain values.
    assert!(batch.input_item.is_none() && batch.output_item.is_none());
    assert_eq!(batch.value_args().len(), 1);
}

#[test]
fn misplaced_streams_are_rejected() {
    let err = |method: TokenStream| parse_err(quote!(), quote!(trait A { #method }));

    let message = err(quote!(
        async fn f(&self, s: Streaming<u8>, n: u32);
    ));
    assert!(
        message.contains("must be the method's last argument: move `s`"),
        "{message}"
    );

    let message = err(quote!(
        async fn f(&self, a: Streaming<u8>, b: stardust::Streaming<u8>);
    ));
    assert!(message.contains("at most one `Streaming<T>`"), "{message}");
    assert!(message.contains("merge `a` and `b`"), "{message}");
    // One error for the pair, not also "must be the last".
    assert_eq!(message.lines().count(), 1, "{message}");
    let message = err(quote!(
        async fn f(&self, a: Streaming<u8>, b: Streaming<u8>, c: Streaming<u8>);
    ));
    assert!(message.contains("merge `a`, `b` and `c`"), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");

    let message = err(quote!(
        async fn f(&self, s: stardust::Stream<Vec<u8>>);
    ));
    assert!(
        message.contains("write `s: stardust::Streaming<Vec<u8>>`"),
        "{message}"
    );

    let message = err(quote!(
        async fn f(&self) -> ::stardust::Streaming<Line>;
    ));
    assert!(
        message.contains("write `-> ::stardust::Stream<Line>`"),
        "{message}"
    );

    for nested in [
        quote!(
            async fn f(&self, s: Option<Streaming<u8>>);
        ),
        quote!(
            async fn f(&self, s: (u8, stardust::Stream<u8>));
        ),
        quote!(
            async fn f(&self, s: Streaming<Streaming<u8>>);
        ),
        quote!(
            async fn f(&self) -> Result<Stream<u8>, E>;
        ),
        quote!(
            async fn f(&self) -> Vec<::stardust::Stream<u8>>;
        ),
        quote!(
            async fn f(&self) -> Stream<Option<Stream<u8>>>;
        ),
        quote!(
            async fn f(&self) -> [Streaming<u8>; 2];
        ),
    ] {
        let message = err(nested.clone());
        assert!(message.contains("can't be nested"), "{nested}: {message}");
    }

    let message = err(quote!(
        async fn f(&self) -> Stream<&str>;
    ));
    assert!(
        message.contains("service stream items must be owned"),
        "{message}"
    );
    let message = err(quote!(
        async fn f(&self, s: Streaming<Cow<'a, str>>);
    ));
    assert!(
        message.contains("service stream items must be owned"),
        "{message}"
    );
}

#[test]
fn types_are_written_as_people_write_them() {
    for (written, expected) in [
        (quote!(Vec<Vec<u8>>), "Vec<Vec<u8>>"),
        (
            quote!(::stardust::Stream<Result<Line, E>>),
            "::stardust::Stream<Result<Line, E>>",
        ),
        (quote!(Option<&'static [u8; 4]>), "Option<&'static [u8; 4]>"),
        (quote!((u8, String)), "(u8, String)"),
    ] {
        assert_eq!(streams::type_text(&ty(written)), expected);
    }
}
