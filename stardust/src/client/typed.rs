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

    /// Wraps `client`, calling `local` in-process instead ([`crate::local`]) for the methods
    /// that can be (unary ones; streams still use `client`). The default ignores `local`: a
    /// hand-written proxy calls over the network.
    fn with_local(client: Client, local: &crate::local::LocalService) -> Self {
        let _ = local;
        Self::from_client(client)
    }
}
