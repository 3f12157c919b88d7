//! The service on Stardust, used the way the README shows: a trait with `#[stardust::service]`,
//! a `Server` hosting `BenchServer::new(..)`, and the generated `BenchClient` over a `Client`
//! built with default settings (so calls carry the default 30 s deadline, as users' calls do).

use std::any::Any;
use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::service;

#[stardust::service(name = "bench.Bench", version = "1.0.0")]
pub trait Bench {
    async fn add(&self, a: i64, b: i64) -> i64;
    /// `Bytes` both ways: large payloads are neither copied into the request nor out of the
    /// response (Stardust's zero-copy path).
    async fn echo(&self, data: Bytes) -> Bytes;
}

struct Provider;

impl Bench for Provider {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn echo(&self, data: Bytes) -> Bytes {
        data
    }
}

const CERT_ENV: &str = "STARDUST_BENCH_TLS_CERT";
const KEY_ENV: &str = "STARDUST_BENCH_TLS_KEY";

/// The TLS row's certificate (self-signed for 127.0.0.1) and key, as PEM: made once by the
/// client process, handed to the server process through its environment.
fn tls_material() -> &'static (String, String) {
    static MATERIAL: OnceLock<(String, String)> = OnceLock::new();
    MATERIAL.get_or_init(|| match (std::env::var(CERT_ENV), std::env::var(KEY_ENV)) {
        (Ok(cert), Ok(key)) => (cert, key),
        _ => {
            let key = rcgen::KeyPair::generate().expect("TLS key");
            let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
                .expect("certificate parameters");
            let cert = params.self_signed(&key).expect("certificate");
            (cert.pem(), key.serialize_pem())
        }
    })
}

/// The environment a server process needs for the TLS row.
pub fn tls_env() -> [(&'static str, String); 2] {
    let (cert, key) = tls_material();
    [(CERT_ENV, cert.clone()), (KEY_ENV, key.clone())]
}

/// Starts the provider on an OS-chosen loopback port; the returned guard keeps it running.
pub async fn serve(tls: bool) -> Result<(u16, Box<dyn Any>), String> {
    let mut builder = stardust::Server::builder()
        .serve(BenchServer::new(Provider))
        .allow_anonymous();
    if tls {
        let (cert, key) = tls_material();
        builder =
            builder.tls(stardust::tls::ServerTls::from_pem(cert, key).map_err(|e| e.to_string())?);
    }
    let server = builder
        .bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    Ok((server.local_addr().port(), Box::new(server)))
}

/// A development registry and the provider registered there through its own `Stardust`
/// handle: the server side of the agent and balanced rows.
async fn registry_and_provider(
    rules: bool,
) -> Result<
    (
        stardust_registry::RegistryNode,
        stardust::Stardust,
        stardust::Provider,
    ),
    String,
> {
    let mut config = stardust_registry::Config::dev();
    if rules {
        config.rules_file = Some(write_rules()?);
    }
    let registry = stardust_registry::RegistryNode::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("registry: {e}"))?;
    let star = stardust::Stardust::builder()
        .registry(registry.local_addr().to_string())
        .app("bench-provider", "bench-provider-secret")
        .connect()
        .await
        .map_err(|e| format!("provider login: {e}"))?;
    let provider = star
        .serve(
            stardust::Server::builder().serve(BenchServer::new(Provider)),
            "127.0.0.1:0",
        )
        .await
        .map_err(|e| format!("provider: {e}"))?;
    Ok((registry, star, provider))
}

/// Writes the `stardust-rules10` row's rules file: 10 rules for the bench service that a call
/// evaluates (4 routes and 5 faults whose metadata condition it does not meet, then a route
/// that matches it and sends it to every version), so the call pays for matching them all.
fn write_rules() -> Result<std::path::PathBuf, String> {
    let mut text = String::from("revision = 1\n");
    let service = String::from("[[services.\"bench.Bench\".routes]]");
    for i in 0..4 {
        text += &format!(
            "{service}\nname = \"r{i}\"\nto = [{{ weight = 1, subset = \"^1\" }}]\n\
             match = {{ metadata = {{ x-route-{i} = \"*\" }} }}\n"
        );
    }
    text += &format!(
        "{service}\nname = \"all\"\nto = [{{ weight = 99, subset = \"*\" }}, \
         {{ weight = 1, subset = \"*\" }}]\n"
    );
    let faults = String::from("[[services.\"bench.Bench\".faults]]");
    for i in 0..5 {
        text += &format!(
            "{faults}\nname = \"f{i}\"\npercent = 50\nkind = \"delay\"\ndelay_ms = 1000\n\
             match = {{ metadata = {{ x-drill-{i} = \"on\" }} }}\n"
        );
    }
    let path =
        std::env::temp_dir().join(format!("stardust-bench-rules-{}.toml", std::process::id()));
    std::fs::write(&path, text).map_err(|e| format!("rules file: {e}"))?;
    Ok(path)
}

/// The agent row's server side, in one process: a development registry, the provider registered
/// there, and an agent logged in as the consumer's app. The port returned is the agent's, so
/// the consumer is the `stardust` row's client, one hop away from the provider.
pub async fn serve_agent() -> Result<(u16, Box<dyn Any>), String> {
    let (registry, star, provider) = registry_and_provider(false).await?;
    let agent = stardust::agent::Agent::builder()
        .registry(registry.local_addr().to_string())
        .app("bench-consumer", "bench-consumer-secret")
        .listen("127.0.0.1:0")
        .start()
        .await
        .map_err(|e| format!("agent: {e}"))?;
    let port = agent.local_addr().port();
    Ok((port, Box::new((registry, star, provider, agent))))
}

/// The balanced row's server side, in one process: a development registry and the provider
/// registered there. The port returned is the registry's: clients find the provider through it.
pub async fn serve_registered(rules: bool) -> Result<(u16, Box<dyn Any>), String> {
    let (registry, star, provider) = registry_and_provider(rules).await?;
    let port = registry.local_addr().port();
    Ok((port, Box::new((registry, star, provider))))
}

/// A generated client; the balanced row's also keeps its `Stardust` handle (the registry
/// session and the pooled provider connection) alive.
#[derive(Clone)]
pub struct Caller {
    client: BenchClient,
    /// Held, never read: dropping it would end the registry session and its connections.
    _session: Option<std::sync::Arc<stardust::Stardust>>,
}

/// One client, hence one connection.
pub async fn connect(addr: SocketAddr, tls: bool) -> Result<Caller, String> {
    let mut builder = stardust::Client::builder();
    if tls {
        let (cert, _) = tls_material();
        builder =
            builder.tls(stardust::tls::ClientTls::from_ca_pem(cert).map_err(|e| e.to_string())?);
    }
    let client = builder.connect(addr).await.map_err(|e| e.to_string())?;
    Ok(Caller {
        client: BenchClient::new(client),
        _session: None,
    })
}

/// One `Stardust` handle logged in at the registry on `registry`, and its typed proxy: the
/// provider is discovered on the first call and picked per call by the default balancer.
pub async fn connect_balanced(registry: SocketAddr) -> Result<Caller, String> {
    let star = stardust::Stardust::builder()
        .registry(registry.to_string())
        .app("bench-consumer", "bench-consumer-secret")
        .connect()
        .await
        .map_err(|e| format!("consumer login: {e}"))?;
    let client = star.client::<BenchClient>();
    Ok(Caller {
        client,
        _session: Some(std::sync::Arc::new(star)),
    })
}

impl service::Caller for Caller {
    type Data = Bytes;
    type Scratch = bytes::BytesMut;

    /// Built in the caller's reused buffer (see `Payload::bytes_for_call`).
    fn data(payload: &service::Payload, seq: u64, scratch: &mut bytes::BytesMut) -> Bytes {
        payload.bytes_for_call(seq, scratch)
    }

    async fn add(&self, a: i64, b: i64) -> Result<i64, String> {
        self.client.add(a, b).await.map_err(|e| e.to_string())
    }

    // Names its own echo type; the driver sees only `AsRef<[u8]>`.

    #[allow(refining_impl_trait)]
    async fn echo(&self, data: Bytes) -> Result<Bytes, String> {
        self.client.echo(data).await.map_err(|e| e.to_string())
    }
}
