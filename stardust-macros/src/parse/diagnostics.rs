//! Error collection for validation: every problem in a trait is recorded rather than returned at
//! once, so the user sees them all in one build instead of fixing them one compile at a time.

use proc_macro2::{Span, TokenStream};
use syn::Error;

/// Collects every error found while validating, so the user sees them all in one build. The
/// checks themselves are its methods, written next to what they check (`service`, `method`, ...).
#[derive(Default)]
pub(super) struct ServiceBuilder {
    errors: Option<Error>,
}

impl ServiceBuilder {
    /// Records `message` at `span`: a span, or any syntax (pointing from its first to last token).
    pub(super) fn error(&mut self, span: impl Into<SpanOf>, message: impl std::fmt::Display) {
        self.push(match span.into() {
            SpanOf::Span(span) => Error::new(span, message),
            SpanOf::Tokens(tokens) => Error::new_spanned(tokens, message),
        });
    }

    /// Records an error made elsewhere (e.g. by syn while reading an attribute).
    pub(super) fn push(&mut self, error: Error) {
        match &mut self.errors {
            Some(errors) => errors.combine(error),
            None => self.errors = Some(error),
        }
    }

    /// Everything recorded, combined into one error; `None` when the trait is valid.
    pub(super) fn into_errors(self) -> Option<Error> {
        self.errors
    }

    /// How many errors have been recorded so far (to tell whether a part added any).
    pub(super) fn error_count(&self) -> usize {
        self.errors.as_ref().map_or(0, |e| e.into_iter().count())
    }
}

/// Where an error points: a single span, or the first to last token of some syntax.
pub(super) enum SpanOf {
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
