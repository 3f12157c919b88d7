//! `stardust-registry`: run the registry, hash app secrets, rotate signing keys, run a sidecar
//! agent, change a registry's traffic rules (`route`, `fault`: `cli/rules.rs`), see and call
//! what is registered (`services`, `describe`: `cli/tools.rs`; `call`: `cli/call.rs`), print
//! shell completions.

mod cli;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use stardust::agent::{Agent, DEFAULT_LISTEN as AGENT_LISTEN, DEFAULT_MAX_SERVICES};
use stardust_registry::config::{DEFAULT_HTTP_LISTEN, DEFAULT_LISTEN};
use stardust_registry::{Config, HttpListen, RegistryNode, StoreConfig};

/// The Stardust registry: apps log in here, providers register their services, consumers
/// discover them.
///
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug or RUST_LOG=stardust_registry=debug)
/// to change what is shown (default: info).
#[derive(Debug, Parser)]
#[command(name = "stardust-registry", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registry until Ctrl-C or SIGTERM. Once bound, prints one line on stdout,
    /// `listening registry=ADDR http=ADDR|off` (the ports the OS chose for `:0`).
    Serve {
        /// Address to listen on, `host:port` [default: the config's `listen`, else
        /// 127.0.0.1:7600].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Where to serve monitoring over HTTP: the web console at `/`, Prometheus metrics at
        /// `/metrics`, JSON at `/api/...`; `off` to serve none. Unauthenticated: keep it on
        /// loopback or restrict access [default: the config's `http_listen`, else
        /// 127.0.0.1:7601].
        #[arg(long, value_name = "ADDR|off")]
        http_listen: Option<String>,
        /// TOML config file: key file, TTLs, apps and their permissions. Required unless --dev.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Development mode: unknown apps are created on their first login (their first secret
        /// sticks until restart). Without --config, signing keys live in memory only. Never
        /// use it on a network others can reach.
        #[arg(long)]
        dev: bool,
        /// Where registrations, dev apps and public keys live: `memory` (one node), or
        /// `etcd://host:port[,host:port...][/prefix]` to share them with every registry node on
        /// that etcd and prefix (needs a build with `--features etcd`) [default: the config's
        /// `store`, else memory].
        #[arg(long, value_name = "URL")]
        store: Option<String>,
    },
    /// Read a secret (from stdin, or a no-echo prompt on a terminal) and print its argon2id
    /// PHC hash, for an app's `secret_hash` in the config.
    ///
    /// A single trailing newline on stdin is not part of the secret.
    HashSecret,
    /// Add a new signing key and make it the one that signs; older keys keep verifying until
    /// the tokens they signed have expired, then are pruned. A running registry picks up the
    /// change by itself.
    RotateKey {
        /// The key file to rotate (created if missing) [default: the config's `key_file`].
        #[arg(long, value_name = "FILE", required_unless_present = "config")]
        key_file: Option<PathBuf>,
        /// Registry config to take the key file and the token TTL from.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Token lifetime the registry issues tokens with: retired keys are kept this long
        /// [default: the config's `token_ttl`, else 1h].
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        token_ttl: Option<Duration>,
    },
    /// Run a sidecar agent until Ctrl-C or SIGTERM: applications on this host call every
    /// service their app may use through it, over loopback, without credentials
    /// (`Stardust::builder().via_agent(ADDR)` in Rust). The agent logs in to the registry as
    /// the app, resolves providers, presents the app's token to them, balances, fails over and
    /// reports status.
    ///
    /// Security: any process on this host can call through the agent with the app's rights.
    /// It listens on loopback only and turns away connections from other addresses; keep the
    /// secret file readable by the agent's user alone.
    ///
    /// The agent is the runtime's `stardust::agent` (in the `stardust` crate, `src/agent/`);
    /// this command only reads its settings. Once listening, it prints one line on stdout,
    /// `listening agent=ADDR`.
    Agent {
        /// Registry address, `host:port`; repeat the flag for several (tried in turn).
        #[arg(long = "registry", value_name = "ADDR", required = true)]
        registries: Vec<String>,
        /// The app to log in as.
        #[arg(long, value_name = "ID")]
        app: String,
        /// File holding the app's secret; whitespace around it (a trailing newline) is ignored.
        /// The secret is never logged.
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
        /// Where local applications connect: a loopback address, `host:port`.
        #[arg(long, value_name = "ADDR", default_value = AGENT_LISTEN)]
        listen: String,
        /// CA bundle (PEM) to verify the registry's and TLS providers' certificates with, for
        /// registries and providers that speak TLS.
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
        /// How each service's calls are spread over its providers.
        #[arg(long, value_enum, default_value_t = BalancerArg::LeastLoaded)]
        balancer: BalancerArg,
        /// Most services tracked at once; beyond it the least recently called one is dropped
        /// (and looked up again when called again).
        #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SERVICES)]
        max_services: usize,
        /// The calls made through the agent take no injected faults (the delays and aborts of
        /// the registry's traffic rules, `stardust-registry fault`); routes still apply.
        #[arg(long)]
        no_faults: bool,
    },
    /// Traffic routes: which instances of a service its calls go to (by version or tag, by
    /// weight), for which callers, methods and metadata. Kept by the registry, applied by every
    /// consumer and agent calling the service.
    ///
    /// Changing routes needs an app with the `admin` role (`roles = ["admin"]` under
    /// `[apps.NAME]` in the registry's config); any app may list them. Exit codes: 0 done, 1 the
    /// registry refused or could not be reached (its message on stderr), 2 a usage error or an
    /// invalid rule (nothing sent).
    #[command(subcommand)]
    Route(cli::rules::RouteCommand),
    /// Injected faults, for drills: delays and aborts of a share of a service's calls, for
    /// which callers, methods and metadata. Kept by the registry, applied by every consumer and
    /// agent calling the service (unless it opted out: `agent --no-faults`).
    ///
    /// Changing faults needs an app with the `admin` role (`roles = ["admin"]` under
    /// `[apps.NAME]` in the registry's config); any app may list them. Exit codes: 0 done, 1 the
    /// registry refused or could not be reached (its message on stderr), 2 a usage error or an
    /// invalid rule (nothing sent).
    #[command(subcommand)]
    Fault(cli::rules::FaultCommand),
    /// The services with live instances that the app may call: their versions with instance
    /// counts, and their instances' health.
    ///
    /// Exit codes: 0 done, 1 the registry refused or could not be reached (its message on
    /// stderr), 2 a usage error.
    Services(cli::tools::ServicesArgs),
    /// A service's methods, per registered version, as its providers declared them: signatures
    /// (Rust types as written), docs, which are idempotent or stream, and a conflict if two
    /// providers of one version declared different methods.
    ///
    /// `call` takes JSON shaped as serde encodes those types (structs as maps with field names;
    /// docs/PROTOCOL.md §12, §12.1). Exit codes: 0 done, 1 the registry refused (e.g. permission
    /// denied: the app may not call the service) or could not be reached, 2 a usage error.
    Describe(cli::tools::DescribeArgs),
    /// Call any method of any service by name: arguments as a JSON array in, the result as JSON
    /// out (`describe` shows what a method takes).
    ///
    /// Three ways to reach a provider: through the registry as an app (--app, --secret-file;
    /// the app must be allowed to consume the service), through a local agent (--agent ADDR),
    /// or straight at a provider that takes anonymous callers (--addr ADDR). Exit codes: 0 ok,
    /// 1 the call failed (framework error on stderr), 2 usage error, 3 the method's typed error
    /// (as JSON on stdout).
    #[command(after_long_help = cli::call::EXIT_CODES)]
    Call(cli::call::CallArgs),
    /// Print a completion script for SHELL on stdout, e.g.
    /// `stardust-registry completions bash > /etc/bash_completion.d/stardust-registry`, or
    /// `source <(stardust-registry completions bash)`.
    Completions {
        /// The shell.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

/// The balancers an agent can use (`stardust::balance`).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum BalancerArg {
    /// The less loaded of two random providers (calls in flight × latency).
    LeastLoaded,
    /// Each provider in turn.
    RoundRobin,
    /// At random, in proportion to registry weights.
    WeightedRandom,
}

/// Everything `stardust-registry agent` is told.
struct AgentArgs {
    registries: Vec<String>,
    app: String,
    secret_file: PathBuf,
    listen: String,
    tls_ca: Option<PathBuf>,
    balancer: BalancerArg,
    max_services: usize,
    no_faults: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The servers log what they do; the client commands print their outcome, and log only
    // what went wrong (unless RUST_LOG says otherwise).
    let level = match cli.command {
        Command::Serve { .. } | Command::Agent { .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Serve {
            listen,
            http_listen,
            config,
            dev,
            store,
        } => serve(listen, http_listen, config, dev, store),
        Command::HashSecret => hash_secret(),
        Command::RotateKey {
            key_file,
            config,
            token_ttl,
        } => rotate_key(key_file, config, token_ttl),
        Command::Agent {
            registries,
            app,
            secret_file,
            listen,
            tls_ca,
            balancer,
            max_services,
            no_faults,
        } => agent(AgentArgs {
            registries,
            app,
            secret_file,
            listen,
            tls_ca,
            balancer,
            max_services,
            no_faults,
        }),
        Command::Route(command) => return cli::rules::route(command),
        Command::Fault(command) => return cli::rules::fault(command),
        Command::Services(args) => return cli::tools::services(args),
        Command::Describe(args) => return cli::tools::describe(args),
        Command::Call(args) => return cli::call::call(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(
                shell,
                &mut command,
                "stardust-registry",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn serve(
    listen: Option<String>,
    http_listen: Option<String>,
    config: Option<PathBuf>,
    dev: bool,
    store: Option<String>,
) -> Result<()> {
    let mut cfg = match (&config, dev) {
        (Some(path), _) => Config::load(path)?,
        (None, true) => Config::dev(),
        (None, false) => {
            return Err(
                "pass --config FILE (or --dev for a throwaway development registry)".into(),
            );
        }
    };
    if dev {
        cfg.dev = true;
    }
    if let Some(http) = http_listen {
        cfg = cfg.with_http_listen(http);
    }
    if let Some(store) = store {
        cfg = cfg.with_store(StoreConfig::parse(&store)?);
    }
    cfg.http_listen
        .get_or_insert_with(|| HttpListen::On(DEFAULT_HTTP_LISTEN.to_owned()));
    let addr = listen
        .or_else(|| cfg.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Before the node binds: its own log line says it is listening, and a script may signal
        // the process as soon as it reads that line, not only the announcement below.
        let stop = shutdown_signal();
        let node = RegistryNode::builder().config(cfg).bind(addr).await?;
        let http = node
            .http_addr()
            .map_or_else(|| "off".to_owned(), |a| a.to_string());
        announce(&format!("registry={} http={http}", node.local_addr()));
        stop.await;
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}

/// The one line on stdout a script reads to learn the bound addresses (with `--listen
/// 127.0.0.1:0`, the port the OS chose): `listening registry=ADDR http=ADDR|off`, or
/// `listening agent=ADDR`. Logs go to stderr; this line's shape is stable.
fn announce(addrs: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening {addrs}");
    let _ = out.flush();
}

/// Installs the handlers of Ctrl-C (SIGINT) and SIGTERM now, and returns what resolves on the
/// first of them. Called before anything says the process is listening (its log lines or the
/// announcement): a script that signals the process as soon as it reads one must find the
/// handlers in place and the receivers subscribed. Without a handler the default action kills
/// the process without a graceful stop; worse, a signal that arrives after tokio installs its
/// handler but before the receiver subscribes is dropped (tokio broadcasts to the receivers
/// that exist), and the process would then wait for a stop that never comes.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                (Ok(mut int), Err(_)) => {
                    int.recv().await;
                }
                (Err(_), _) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn agent(args: AgentArgs) -> Result<()> {
    let secret = read_secret_file(&args.secret_file)?;
    let mut builder = Agent::builder()
        .app(args.app, secret)
        .listen(args.listen)
        .max_services(args.max_services);
    for registry in args.registries {
        builder = builder.registry(registry);
    }
    if let Some(ca) = &args.tls_ca {
        builder = builder.tls(stardust::tls::ClientTls::from_ca_pem_file(ca)?);
    }
    builder = match args.balancer {
        BalancerArg::LeastLoaded => builder.balancer(stardust::balance::LeastLoaded::new),
        BalancerArg::RoundRobin => builder.balancer(stardust::balance::RoundRobin::new),
        BalancerArg::WeightedRandom => builder.balancer(stardust::balance::WeightedRandom::new),
    };
    if args.no_faults {
        builder = builder.session(|b| b.faults(false));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Before the agent starts, for the reason given in `serve`.
        let stop = shutdown_signal();
        let agent = builder.start().await?;
        announce(&format!("agent={}", agent.local_addr()));
        stop.await;
        tracing::info!("shutting down");
        agent.shutdown().await;
        Ok(())
    })
}

/// An app secret from a file: trimmed, not empty. Warns when others may read the file.
fn read_secret_file(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("the secret file {} is empty", path.display()).into());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %path.display(),
                "the secret file is readable by other users; make it readable by the agent's \
                 user only (chmod 600)"
            );
        }
    }
    Ok(secret.to_owned())
}

fn hash_secret() -> Result<()> {
    let secret = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Secret: ")?;
        let again = rpassword::prompt_password("Repeat: ")?;
        if first != again {
            return Err("the two entries differ".into());
        }
        first
    } else {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the secret from stdin: {e}"))?;
        if let Some(t) = text.strip_suffix('\n') {
            text.truncate(t.strip_suffix('\r').unwrap_or(t).len());
        }
        text
    };
    let hash = stardust_registry::hash_secret(&secret)?;
    println!("{hash}");
    Ok(())
}

fn rotate_key(
    key_file: Option<PathBuf>,
    config: Option<PathBuf>,
    token_ttl: Option<Duration>,
) -> Result<()> {
    let cfg = config.as_ref().map(Config::load).transpose()?;
    let path = key_file
        .or_else(|| cfg.as_ref().and_then(|c| c.key_file.clone()))
        .ok_or("the config has no key_file; pass --key-file FILE")?;
    let ttl = token_ttl
        .or_else(|| cfg.as_ref().map(|c| c.token_ttl))
        .unwrap_or(stardust_registry::config::DEFAULT_TOKEN_TTL);
    let kid = stardust_registry::rotate_key_file(&path, ttl)?;
    println!("{kid}");
    eprintln!(
        "new signing key {kid} in {}; running registries pick it up on their next login",
        path.display()
    );
    Ok(())
}
