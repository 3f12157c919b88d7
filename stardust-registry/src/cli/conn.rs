//! What the client subcommands share: logging in to a registry as an app, the failures that
//! decide the exit code, and small flag parsers.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use stardust::discovery::api::{RegistryClient, RegistryError};

/// How long connecting and each call to the registry may take.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a command failed, and so its exit code.
pub(crate) enum Failure {
    /// The command line or a file it names is wrong; nothing was sent (exit 2).
    Usage(String),
    /// The registry (or, for `call`, the provider) refused, or could not be reached (exit 1).
    Registry(String),
}

/// The exit code of a command's outcome, its message on stderr.
pub(crate) fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => fail(failure),
    }
}

/// Prints why on stderr; exit 1 or 2.
pub(crate) fn fail(failure: Failure) -> ExitCode {
    match failure {
        Failure::Registry(why) => {
            eprintln!("error: {why}");
            ExitCode::from(1)
        }
        Failure::Usage(why) => {
            eprintln!("error: {why}");
            ExitCode::from(2)
        }
    }
}

/// Where the registry is and whom to log in as.
pub(crate) struct Login<'a> {
    pub(crate) registry: &'a str,
    pub(crate) app: &'a str,
    pub(crate) secret_file: &'a Path,
    pub(crate) tls_ca: Option<&'a PathBuf>,
}

impl Login<'_> {
    /// The app's secret, from its file.
    pub(crate) fn secret(&self) -> Result<String, Failure> {
        crate::read_secret_file(self.secret_file).map_err(|e| Failure::Usage(e.to_string()))
    }
}

/// The CA bundle of `--tls-ca`, if given.
pub(crate) fn client_tls(
    tls_ca: Option<&PathBuf>,
) -> Result<Option<stardust::tls::ClientTls>, Failure> {
    tls_ca
        .map(|ca| {
            stardust::tls::ClientTls::from_ca_pem_file(ca)
                .map_err(|e| Failure::Usage(format!("--tls-ca: {e}")))
        })
        .transpose()
}

/// A runtime for one command.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Registry(format!("cannot start the async runtime: {e}")))
}

/// Connects to the registry, logs in, and runs `call` on the logged-in client.
pub(crate) fn with_registry<T>(
    login: &Login<'_>,
    call: impl AsyncFnOnce(&RegistryClient) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let secret = login.secret()?;
    let tls = client_tls(login.tls_ca)?;
    runtime()?.block_on(async move {
        let registry = log_in(login, secret, tls).await?;
        call(&registry).await
    })
}

/// Connects to the registry and logs in as the app.
pub(crate) async fn log_in(
    login: &Login<'_>,
    secret: String,
    tls: Option<stardust::tls::ClientTls>,
) -> Result<RegistryClient, Failure> {
    let addr = login.registry;
    // Like a session's connection (`stardust::discovery`): the registry binds the token it
    // issues to this key (proof of possession).
    let key = stardust::auth::ProofKey::generate().map_err(|e| Failure::Registry(e.to_string()))?;
    let mut builder = stardust::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .proof_key(key);
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    let client = builder
        .connect(addr)
        .await
        .map_err(|e| Failure::Registry(format!("cannot reach the registry at {addr}: {e}")))?;
    let registry = RegistryClient::new(client);
    match registry.login(login.app.to_owned(), secret).await {
        Ok(Ok(_)) => Ok(registry),
        Ok(Err(e)) => Err(Failure::Registry(format!(
            "the registry at {addr} refused the login as `{}`: {e}",
            login.app
        ))),
        Err(e) => Err(Failure::Registry(format!(
            "logging in to the registry at {addr} failed: {e}"
        ))),
    }
}

/// The outcome of a registry call: its answer, or why not (exit 1).
pub(crate) fn answer<T>(
    reply: Result<Result<T, RegistryError>, stardust::Error>,
) -> Result<T, Failure> {
    reply
        .map_err(|e| Failure::Registry(format!("the call to the registry failed: {e}")))?
        .map_err(|e| Failure::Registry(refusal(&e)))
}

/// A registry's refusal, as printed.
pub(crate) fn refusal(e: &RegistryError) -> String {
    format!("the registry refused: {e}")
}

/// `KEY=VALUE`, split at the first `=`.
pub(crate) fn parse_meta(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!(
            "`{text}` is not KEY=VALUE (e.g. `x-canary=1`, or `x-canary=*` for any value)"
        )),
    }
}
