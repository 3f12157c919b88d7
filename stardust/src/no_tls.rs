//! What stands in for [`tls`](crate::tls) in a build without the `tls` feature (no rustls):
//! the two configuration types, with no value at all. The server's and clients' plumbing keeps
//! carrying an `Option` of them, which is always `None`, so it needs no `cfg` of its own; only
//! the public ways to set one (the `.tls(..)` builder methods) are left out.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::error::Error;
use crate::transport::Stream;

/// A provider's TLS configuration: none can exist without the `tls` feature.
#[derive(Clone, Debug)]
pub(crate) enum ServerTls {}

impl ServerTls {
    pub(crate) async fn accept(&self, _tcp: TcpStream) -> std::io::Result<Stream> {
        match *self {}
    }
}

/// A client's TLS configuration: none can exist without the `tls` feature.
#[derive(Clone, Debug)]
pub(crate) enum ClientTls {}

impl ClientTls {
    pub(crate) fn for_endpoint(&self, _endpoint: &str) -> ClientTls {
        match *self {}
    }

    pub(crate) async fn connect(
        &self,
        _tcp: TcpStream,
        _host: Option<&str>,
        _addr: SocketAddr,
    ) -> Result<Stream, Error> {
        match *self {}
    }
}

/// The host name a TLS certificate would have to carry: nothing to check without TLS.
pub(crate) fn dns_host(_endpoint: &str) -> Option<&str> {
    None
}
