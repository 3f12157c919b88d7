//! Parsing and validation: turns the attribute arguments and the annotated trait into a small
//! [`ServiceDef`] that [`crate::expand`] can generate code from without checking anything again.
//!
//! Every rule the generated code relies on is checked here, so that a mistake is reported at the
//! offending token with a message saying what to write instead, rather than as a confusing type
//! error somewhere inside generated code. All problems in a trait are reported at once.
//!
//! This file holds the model; the checks are split by what they look at:
//! - `service`: the entry point and the trait as a whole (its header, what items it may hold);
//! - `method`: one method's signature, receiver and arguments;
//! - `types`: the rule that argument and return types are owned;
//! - `attrs`: the options of the service attribute and `#[stardust(...)]` on methods;
//! - `diagnostics`: collecting every error so they are all reported in one build.

use syn::ext::IdentExt;
use syn::{Attribute, Ident, Receiver, Type, Visibility};

mod attrs;
mod diagnostics;
mod method;
mod service;
mod streams;
#[cfg(test)]
mod tests;
mod types;

pub(crate) use streams::{StreamKind, stream_type};

pub(crate) use service::parse_service;

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
    /// Every argument as declared, the input stream included (it is the last one).
    pub args: Vec<ArgDef>,
    /// The declared return type; `()` when there is none.
    pub output: Type,
    pub idempotent: bool,
    /// The item type of the `Streaming<T>` argument (always the last), if the method takes one.
    pub input_item: Option<Type>,
    /// The item type of the `Stream<T>` return type, if the method returns one.
    pub output_item: Option<Type>,
}

impl MethodDef {
    /// The method name as it travels on the wire (without a raw identifier's `r#`).
    pub fn wire_name(&self) -> String {
        self.ident.unraw().to_string()
    }

    /// The arguments that travel in the request's argument array: all but the input stream.
    pub fn value_args(&self) -> &[ArgDef] {
        match self.input_item {
            Some(_) => &self.args[..self.args.len() - 1],
            None => &self.args,
        }
    }

    /// The input stream's argument, if the method takes one.
    pub fn stream_arg(&self) -> Option<&ArgDef> {
        self.input_item.as_ref().and_then(|_| self.args.last())
    }
}

/// One method argument: a plain identifier and an owned type.
pub(crate) struct ArgDef {
    pub ident: Ident,
    pub ty: Type,
}
