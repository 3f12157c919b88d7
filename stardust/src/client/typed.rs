//! [`ServiceClient`]: what every generated consumer proxy (`XxxClient`) implements.

use super::Client;
use crate::service::ServiceDescriptor;

/// The typed consumer proxy generated for a service (`XxxClient`). Lets code that only knows the
/// type (such as a registry-aware client factory) build proxies and look up descriptors.
pub trait ServiceClient: Sized {
    /// The service's descriptor.
    const DESCRIPTOR: &'static ServiceDescriptor;

    /// Wraps an untyped [`Client`] as this typed proxy.
    fn from_client(client: Client) -> Self;

    /// The untyped client underneath.
    fn client(&self) -> &Client;
}
