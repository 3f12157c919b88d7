//! TLS for Stardust connections, with [rustls](https://docs.rs/rustls) (no OpenSSL).
//!
//! A provider (or the registry) takes a [`ServerTls`]: its certificate chain and private key,
//! and optionally a CA bundle to require client certificates from (mutual TLS). A client takes
//! a [`ClientTls`]: the CA bundle it trusts, and optionally its own certificate for mutual TLS.
//!
//! ```no_run
//! use stardust::tls::{ClientTls, ServerTls};
//! # async fn run(svc: impl stardust::Service) -> Result<(), stardust::Error> {
//! let server = stardust::Server::builder()
//!     .serve(svc)
//!     .allow_anonymous()
//!     .tls(ServerTls::from_pem_files("provider.crt", "provider.key")?)
//!     .bind("0.0.0.0:7000")
//!     .await?;
//!
//! let client = stardust::Client::builder()
//!     .tls(ClientTls::from_ca_pem_file("ca.crt")?)
//!     .connect("10.0.0.7:7000")
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The server's certificate must name what the client dials: the IP address when connecting by
//! address, or the host name of a registered `host:port` endpoint. [`ClientTls::server_name`]
//! overrides it for every connection.
//!
//! With a [`Stardust`](crate::Stardust) handle, [`StardustBuilder::tls`](crate::StardustBuilder::tls)
//! secures the connection to the registry; providers served with a `ServerTls` are registered
//! as speaking TLS, and consumers connect to each provider the way the registry says it speaks.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::{Error, ErrorKind};
use crate::transport::Stream;

/// The cryptography behind every TLS config Stardust builds (rustls's `ring` provider), chosen
/// explicitly so another crate enabling a second provider cannot make the choice ambiguous.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(what: impl fmt::Display) -> Error {
    Error::new(ErrorKind::Internal, format!("TLS configuration: {what}"))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| config_error(format!("cannot read {what} {}: {e}", path.display())))
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(config_error(format!("{what}: no PEM certificate found")));
    }
    Ok(certs)
}

fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    // Never echo the key's bytes: the error names the problem only.
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| config_error(format!("private key: no usable PEM private key ({e})")))
}

fn parse_roots(pem: &[u8], what: &str) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(pem, what)? {
        roots
            .add(cert)
            .map_err(|e| config_error(format!("{what}: {e}")))?;
    }
    Ok(roots)
}

/// A server's TLS identity: what a provider or the registry presents to clients.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    mutual: bool,
}

impl ServerTls {
    /// A server identity from PEM text: the certificate chain (leaf first) and its private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(
        cert_chain: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
    ) -> Result<ServerTls, Error> {
        Self::build(cert_chain.as_ref(), key.as_ref(), None)
    }

    /// [`ServerTls::from_pem`] reading PEM files.
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<ServerTls, Error> {
        let certs = read_file(cert_chain.as_ref(), "certificate chain")?;
        let key = read_file(key.as_ref(), "private key")?;
        Self::build(&certs, &key, None)
    }

    /// Mutual TLS: a server identity that also requires every client to present a certificate
    /// issued by a CA in `client_ca` (PEM). Clients without one fail the TLS handshake.
    pub fn mutual_from_pem(
        cert_chain: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
        client_ca: impl AsRef<[u8]>,
    ) -> Result<ServerTls, Error> {
        let roots = parse_roots(client_ca.as_ref(), "client CA bundle")?;
        Self::build(cert_chain.as_ref(), key.as_ref(), Some(roots))
    }

    /// [`ServerTls::mutual_from_pem`] reading PEM files.
    pub fn mutual_from_pem_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
        client_ca: impl AsRef<Path>,
    ) -> Result<ServerTls, Error> {
        let certs = read_file(cert_chain.as_ref(), "certificate chain")?;
        let key = read_file(key.as_ref(), "private key")?;
        let ca = read_file(client_ca.as_ref(), "client CA bundle")?;
        Self::mutual_from_pem(certs, key, ca)
    }

    /// A server identity from a rustls config built by hand (custom verifiers, key logging,
    /// session caches...). `mutual` says whether it requires client certificates; it is only
    /// reported, not enforced.
    pub fn from_rustls(config: Arc<rustls::ServerConfig>, mutual: bool) -> ServerTls {
        ServerTls {
            acceptor: TlsAcceptor::from(config),
            mutual,
        }
    }

    fn build(
        cert_chain: &[u8],
        key: &[u8],
        client_roots: Option<RootCertStore>,
    ) -> Result<ServerTls, Error> {
        let certs = parse_certs(cert_chain, "certificate chain")?;
        let key = parse_key(key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?;
        let mutual = client_roots.is_some();
        let builder = match client_roots {
            Some(roots) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| config_error(format!("client CA bundle: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| config_error(format!("certificate and key: {e}")))?;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            mutual,
        })
    }

    /// Performs the server side of the TLS handshake.
    pub(crate) async fn accept(&self, tcp: TcpStream) -> std::io::Result<Stream> {
        let tls = self.acceptor.accept(tcp).await?;
        Ok(Stream::Tls(Box::new(tls.into())))
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("ServerTls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

/// What a client trusts (and, for mutual TLS, who it is) when it connects over TLS.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl ClientTls {
    /// Trusts the CA certificates in `ca_bundle` (PEM; one or more), and only those.
    pub fn from_ca_pem(ca_bundle: impl AsRef<[u8]>) -> Result<ClientTls, Error> {
        let roots = parse_roots(ca_bundle.as_ref(), "CA bundle")?;
        Self::build(roots, None)
    }

    /// [`ClientTls::from_ca_pem`] reading a PEM file.
    pub fn from_ca_pem_file(ca_bundle: impl AsRef<Path>) -> Result<ClientTls, Error> {
        Self::from_ca_pem(read_file(ca_bundle.as_ref(), "CA bundle")?)
    }

    /// Mutual TLS: trusts `ca_bundle` and presents `cert_chain` (leaf first) with its private
    /// `key` to servers that ask for a client certificate (all PEM).
    pub fn mutual_from_pem(
        ca_bundle: impl AsRef<[u8]>,
        cert_chain: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
    ) -> Result<ClientTls, Error> {
        let roots = parse_roots(ca_bundle.as_ref(), "CA bundle")?;
        let certs = parse_certs(cert_chain.as_ref(), "client certificate chain")?;
        let key = parse_key(key.as_ref())?;
        Self::build(roots, Some((certs, key)))
    }

    /// [`ClientTls::mutual_from_pem`] reading PEM files.
    pub fn mutual_from_pem_files(
        ca_bundle: impl AsRef<Path>,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<ClientTls, Error> {
        Self::mutual_from_pem(
            read_file(ca_bundle.as_ref(), "CA bundle")?,
            read_file(cert_chain.as_ref(), "client certificate chain")?,
            read_file(key.as_ref(), "private key")?,
        )
    }

    /// A client config built by hand with rustls.
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> ClientTls {
        ClientTls {
            connector: TlsConnector::from(config),
            server_name: None,
        }
    }

    /// Expects every server to present a certificate for `name` (a DNS name or an IP address),
    /// whatever address is dialled.
    pub fn server_name(mut self, name: &str) -> Result<ClientTls, Error> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| config_error(format!("server name `{name}`: {e}")))?;
        self.server_name = Some(name);
        Ok(self)
    }

    fn build(
        roots: RootCertStore,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<ClientTls, Error> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(roots);
        let config = match identity {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| config_error(format!("client certificate and key: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Self::from_rustls(Arc::new(config)))
    }

    /// This config for dialling `endpoint` (`host:port`): unless a server name is set, a host
    /// name in the endpoint becomes the name to verify.
    pub(crate) fn for_endpoint(&self, endpoint: &str) -> ClientTls {
        let mut tls = self.clone();
        if tls.server_name.is_none() {
            tls.server_name =
                dns_host(endpoint).and_then(|h| ServerName::try_from(h.to_owned()).ok());
        }
        tls
    }

    /// The name to verify the server's certificate against: the configured one, else `host`
    /// (a registered endpoint's host) when given, else the dialled IP address.
    fn name_for(
        &self,
        host: Option<&str>,
        addr: std::net::SocketAddr,
    ) -> Result<ServerName<'static>, Error> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        match host {
            Some(host) => ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            )
            .map_err(|e| {
                Error::new(
                    ErrorKind::Connect,
                    format!("`{host}` is not a valid TLS server name: {e}"),
                )
            }),
            None => Ok(ServerName::IpAddress(addr.ip().into())),
        }
    }

    /// Performs the client side of the TLS handshake with the server at `addr`.
    pub(crate) async fn connect(
        &self,
        tcp: TcpStream,
        host: Option<&str>,
        addr: std::net::SocketAddr,
    ) -> Result<Stream, Error> {
        let name = self.name_for(host, addr)?;
        match self.connector.connect(name.clone(), tcp).await {
            Ok(tls) => Ok(Stream::Tls(Box::new(tls.into()))),
            Err(e) => {
                if is_plaintext_answer(&e) {
                    return Err(Error::new(
                        ErrorKind::Connect,
                        format!(
                            "TLS handshake with {addr} failed: the server answered in plaintext, \
                             it does not speak TLS (connect without ClientTls, or configure \
                             ServerBuilder::tls on the server)"
                        ),
                    )
                    .with_source(e));
                }
                let hint = if is_certificate_error(&e) {
                    format!(
                        " (the server's certificate was checked against the CA bundle given in \
                         ClientTls and the name `{}`)",
                        name.to_str()
                    )
                } else {
                    String::new()
                };
                Err(Error::new(
                    ErrorKind::Connect,
                    format!("TLS handshake with {addr} failed: {e}{hint}"),
                )
                .with_source(e))
            }
        }
    }
}

/// The host of a `host:port` endpoint when it is a name (what its TLS certificate must carry);
/// `None` for an IP address, which is checked as dialled.
pub(crate) fn dns_host(endpoint: &str) -> Option<&str> {
    let (host, _port) = endpoint.rsplit_once(':')?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        None
    } else {
        Some(host)
    }
}

/// Whether a failed handshake was about the server's certificate (wrong CA, wrong name,
/// expired), as opposed to the network.
fn is_certificate_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}

/// Whether a TLS handshake failed because the server's first bytes were not a TLS record (a
/// plaintext server answering with a Stardust frame).
fn is_plaintext_answer(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
            )
        })
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field(
                "server_name",
                &self.server_name.as_ref().map(|n| n.to_str()),
            )
            .finish_non_exhaustive()
    }
}
