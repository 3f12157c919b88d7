//! The one error type of the framework.
//!
//! Framework failures (the connection dropped, a deadline passed, the provider does not know the
//! method, ...) are reported as [`Error`]. Application errors are not: a method declared as
//! returning `Result<T, E>` hands its `E` to the caller as the inner `Err` of
//! `Result<Result<T, E>, stardust::Error>`, so the two can never be confused.
//!
//! [`ErrorKind`] is what code matches on; each kind has a stable numeric code that travels in
//! error frames (see `docs/PROTOCOL.md`).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// What went wrong, in a form code can match on.
///
/// The numeric value of each kind (see [`ErrorKind::code`]) is part of the wire protocol and never
/// changes meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An error that fits no other kind, or a code this version does not know.
    Internal,
    /// The provider hosts no service of that name.
    UnknownService,
    /// The service has no method of that name.
    UnknownMethod,
    /// The arguments did not decode as the method's parameter types.
    InvalidArguments,
    /// The call's deadline passed before a response arrived.
    DeadlineExceeded,
    /// The call was cancelled before it completed.
    Cancelled,
    /// The handler panicked; the message carries the panic payload when it was a string.
    Panicked,
    /// The caller did not prove who it is, or its credentials are invalid or expired.
    Unauthorized,
    /// The caller is known but not allowed to make this call.
    PermissionDenied,
    /// The provider is too busy to take the call; it never reached a handler.
    Overloaded,
    /// The provider is shutting down and takes no new calls.
    ShuttingDown,
    /// A frame was larger than the configured limit.
    FrameTooLarge,
    /// The peer broke the wire protocol (garbage bytes, bad handshake, unknown frame kind).
    Protocol,
    /// A value could not be encoded as MessagePack.
    Encode,
    /// A value could not be decoded from MessagePack (the response did not match the expected type).
    Decode,
    /// The connection could not be established.
    Connect,
    /// The connection closed (or was found dead by keepalive) while the call was in flight.
    ///
    /// The call may or may not have run. A balancing client (from
    /// [`Stardust::client`](crate::Stardust::client)) retries such a call on another provider
    /// only when its method is idempotent; otherwise it fails with this kind and a message
    /// starting with `outcome unknown`.
    ConnectionClosed,
    /// No provider of the service is available.
    NoProvider,
    /// An interceptor or the application rejected the call.
    Rejected,
    /// A size or count limit of the receiver was exceeded: call or connection metadata (entries,
    /// key or value length, total size). The message names the limit and its value. Only the
    /// offending request fails; a refused `Hello` closes the connection.
    LimitExceeded,
    /// The local configuration is unusable (a builder left a required choice open, or two
    /// settings contradict each other). Never sent by a peer: fix the code or config named in
    /// the message.
    InvalidConfig,
    /// The peer does not support what the call needs: a streaming call to a provider (or
    /// agent) that did not announce the `call.stream` feature. Nothing was sent; a balancing
    /// client tries another provider.
    Unsupported,
}

impl ErrorKind {
    /// The stable numeric code of this kind, as sent in error frames.
    pub const fn code(self) -> u16 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::UnknownService => 2,
            ErrorKind::UnknownMethod => 3,
            ErrorKind::InvalidArguments => 4,
            ErrorKind::DeadlineExceeded => 5,
            ErrorKind::Cancelled => 6,
            ErrorKind::Panicked => 7,
            ErrorKind::Unauthorized => 8,
            ErrorKind::PermissionDenied => 9,
            ErrorKind::Overloaded => 10,
            ErrorKind::ShuttingDown => 11,
            ErrorKind::FrameTooLarge => 12,
            ErrorKind::Protocol => 13,
            ErrorKind::Encode => 14,
            ErrorKind::Decode => 15,
            ErrorKind::Connect => 16,
            ErrorKind::ConnectionClosed => 17,
            ErrorKind::NoProvider => 18,
            ErrorKind::Rejected => 19,
            ErrorKind::LimitExceeded => 20,
            ErrorKind::InvalidConfig => 21,
            ErrorKind::Unsupported => 22,
        }
    }

    /// The kind for a numeric code; unknown codes map to [`ErrorKind::Internal`].
    pub const fn from_code(code: u16) -> ErrorKind {
        match code {
            2 => ErrorKind::UnknownService,
            3 => ErrorKind::UnknownMethod,
            4 => ErrorKind::InvalidArguments,
            5 => ErrorKind::DeadlineExceeded,
            6 => ErrorKind::Cancelled,
            7 => ErrorKind::Panicked,
            8 => ErrorKind::Unauthorized,
            9 => ErrorKind::PermissionDenied,
            10 => ErrorKind::Overloaded,
            11 => ErrorKind::ShuttingDown,
            12 => ErrorKind::FrameTooLarge,
            13 => ErrorKind::Protocol,
            14 => ErrorKind::Encode,
            15 => ErrorKind::Decode,
            16 => ErrorKind::Connect,
            17 => ErrorKind::ConnectionClosed,
            18 => ErrorKind::NoProvider,
            19 => ErrorKind::Rejected,
            20 => ErrorKind::LimitExceeded,
            21 => ErrorKind::InvalidConfig,
            22 => ErrorKind::Unsupported,
            _ => ErrorKind::Internal,
        }
    }

    /// A short human description of the kind, used as the prefix of [`Error`]'s message.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Internal => "internal error",
            ErrorKind::UnknownService => "unknown service",
            ErrorKind::UnknownMethod => "unknown method",
            ErrorKind::InvalidArguments => "invalid arguments",
            ErrorKind::DeadlineExceeded => "deadline exceeded",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Panicked => "handler panicked",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::ShuttingDown => "shutting down",
            ErrorKind::FrameTooLarge => "frame too large",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Encode => "encode error",
            ErrorKind::Decode => "decode error",
            ErrorKind::Connect => "connect failed",
            ErrorKind::ConnectionClosed => "connection closed",
            ErrorKind::NoProvider => "no provider",
            ErrorKind::Rejected => "rejected",
            ErrorKind::LimitExceeded => "limit exceeded",
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::Unsupported => "unsupported by the peer",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A framework error: a kind to match on, a message for people, and the underlying cause if any.
///
/// `Error` is cheap to clone (one allocation behind a `Box`, the cause behind an `Arc`) because one
/// failure, such as a dropped connection, is handed to every call that was in flight on it.
#[derive(Clone)]
pub struct Error(Box<Inner>);

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// A new error of `kind` with a message saying what happened and, ideally, what to do.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Error {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            source: None,
        }))
    }

    /// Attaches the underlying cause (shown by `source()` and in the `Debug` form).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.0.source = Some(Arc::new(source));
        self
    }

    /// What went wrong, for matching.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The message, without the kind prefix.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// `true` when the call certainly never reached a handler, so it is safe to send it again
    /// even if the method is not idempotent.
    pub fn is_not_delivered(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Connect
                | ErrorKind::Overloaded
                | ErrorKind::ShuttingDown
                | ErrorKind::NoProvider
                | ErrorKind::UnknownService
                | ErrorKind::Unsupported
        )
    }

    pub(crate) fn connection_closed(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(ErrorKind::ConnectionClosed, message)
    }

    pub(crate) fn protocol(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(ErrorKind::Protocol, message)
    }

    pub(crate) fn encode(err: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::new(ErrorKind::Encode, err.to_string()).with_source(err)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.message.is_empty() {
            f.write_str(self.0.kind.as_str())
        } else {
            write!(f, "{}: {}", self.0.kind, self.0.message)
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind)
            .field("message", &self.0.message);
        if let Some(source) = &self.0.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Error {
        Error::new(kind, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        let kinds = [
            ErrorKind::Internal,
            ErrorKind::UnknownService,
            ErrorKind::UnknownMethod,
            ErrorKind::InvalidArguments,
            ErrorKind::DeadlineExceeded,
            ErrorKind::Cancelled,
            ErrorKind::Panicked,
            ErrorKind::Unauthorized,
            ErrorKind::PermissionDenied,
            ErrorKind::Overloaded,
            ErrorKind::ShuttingDown,
            ErrorKind::FrameTooLarge,
            ErrorKind::Protocol,
            ErrorKind::Encode,
            ErrorKind::Decode,
            ErrorKind::Connect,
            ErrorKind::ConnectionClosed,
            ErrorKind::NoProvider,
            ErrorKind::Rejected,
            ErrorKind::LimitExceeded,
            ErrorKind::InvalidConfig,
        ];
        for kind in kinds {
            assert_eq!(ErrorKind::from_code(kind.code()), kind);
        }
        assert_eq!(ErrorKind::from_code(999), ErrorKind::Internal);
    }

    #[test]
    fn display_names_kind_and_message() {
        let e = Error::new(
            ErrorKind::UnknownMethod,
            "calc.Calculator has no method `mul`",
        );
        assert_eq!(
            e.to_string(),
            "unknown method: calc.Calculator has no method `mul`"
        );
        assert_eq!(Error::from(ErrorKind::Cancelled).to_string(), "cancelled");
    }
}
