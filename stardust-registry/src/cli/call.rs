//! `stardust-registry call SERVICE METHOD ARGS_JSON`: one call (or many, `--repeat`) of any
//! service's method by name, arguments given as JSON and the result printed as JSON
//! (`stardust_registry::json`, `Client::call_dynamic`).
//!
//! Exit codes: see [`EXIT_CODES`].

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use stardust::discovery::api::{MethodDescription, VersionDescription};
use stardust::{Client, Stardust};
use stardust_registry::config::DEFAULT_LISTEN;
use stardust_registry::json::{BytesOut, args_to_msgpack, from_msgpack};

use super::conn::{Failure, Login, answer, client_tls, fail, log_in, parse_meta, runtime};
use super::tools::{Output, pretty};

pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0  the call succeeded; its result is on stdout (for a method returning Result<T, E>: T)
  1  the call failed in the framework: no provider, refused (e.g. permission denied), timed
     out, unreachable, the registry refused; the message is on stderr
  2  a usage error: bad flags, ARGS_JSON not a JSON array or not what the method takes (nothing
     was sent)
  3  the method returned its typed error, Err(e) of a Result<T, E>: e as JSON on stdout

A Result is recognised by the method's declared return type (`describe`, through the registry);
without it (--agent, --addr) by the reply's shape, a one-key {\"Ok\": ..} or {\"Err\": ..}.
With --repeat, the exit code is 1 if any call failed, else 3 if any returned its error.

Examples:
  stardust-registry call calc.Calculator add '[1, 2]' --app ops --secret-file ops.secret
  stardust-registry call shop.Orders place '[{\"item\": \"tea\", \"qty\": 2}]' --agent 127.0.0.1:7700
  stardust-registry call blob.Store put '[\"k\", {\"$base64\": \"AQID\"}]' --addr 127.0.0.1:6600
  stardust-registry call calc.Calculator add '[1, 2]' --repeat 1000 --concurrency 8 \\
      --app ops --secret-file ops.secret";

/// From this many calls on, `--repeat` shows its progress on a terminal.
const PROGRESS_FROM: u64 = 100;

#[derive(Debug, Args)]
pub(crate) struct CallArgs {
    /// The service, e.g. `calc.Calculator`.
    #[arg(value_name = "SERVICE")]
    service: String,
    /// The method, e.g. `add`.
    #[arg(value_name = "METHOD")]
    method: String,
    /// The arguments: a JSON array, one element per argument (`[1, 2]`; `[]` for none); `-`
    /// reads it from stdin. `describe` shows what each takes.
    #[arg(value_name = "ARGS_JSON")]
    args: String,
    /// Registry address, `host:port` (to call through the registry, as --app).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    registry: String,
    /// The app to log in to the registry as; it must be allowed to consume the service.
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present_any = ["agent", "addr"],
        conflicts_with_all = ["agent", "addr"]
    )]
    app: Option<String>,
    /// File holding the app's secret; whitespace around it is ignored.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present_any = ["agent", "addr"],
        conflicts_with_all = ["agent", "addr"]
    )]
    secret_file: Option<PathBuf>,
    /// Call through the local agent at ADDR (`stardust-registry agent`), which holds the
    /// credentials, instead of logging in to the registry.
    #[arg(long, value_name = "ADDR", conflicts_with = "addr")]
    agent: Option<String>,
    /// Call the provider at ADDR directly, without registry or credentials: only providers
    /// that accept anonymous callers answer.
    #[arg(long, value_name = "ADDR")]
    addr: Option<String>,
    /// CA bundle (PEM) to verify the registry's and providers' certificates with (TLS).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The call's deadline (`500ms`, `10s`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Metadata sent with the call, `KEY=VALUE`; repeat for several.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
    /// The call's hash key (for a consistent-hash balancer).
    #[arg(long, value_name = "KEY")]
    hash_key: Option<String>,
    /// Mark the call idempotent (it may be retried when lost after sending), or not with
    /// `--idempotent=false` [default: as the method is declared, through the registry; else
    /// false].
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    idempotent: Option<bool>,
    /// How MessagePack bytes (bin) show in the JSON result: {"$base64": ..} or {"$hex": ..}.
    #[arg(long, value_enum, default_value_t = BytesArg::Base64)]
    bytes: BytesArg,
    /// Make the call N times and print a summary instead of the result: how many, errors by
    /// kind, latency p50/p99/max.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,
    /// With --repeat: how many calls are in flight at once.
    #[arg(long, value_name = "C", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// What to print: `text` (the result as indented JSON) or `json` (on one line).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// `--bytes`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum BytesArg {
    /// {"$base64": "AQID"}
    Base64,
    /// {"$hex": "010203"}
    Hex,
}

/// What a call's reply is, and its exit code.
enum Outcome {
    /// The result (exit 0).
    Ok(Value),
    /// A method's typed error (exit 3).
    AppError(Value),
}

/// What is known of the method's return type.
#[derive(Clone, Copy)]
enum Returns {
    Result,
    Plain,
    Unknown,
}

/// Runs `stardust-registry call ...`.
pub(crate) fn call(args: CallArgs) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(failure) => fail(failure),
    }
}

fn run(args: CallArgs) -> Result<ExitCode, Failure> {
    let text = match args.args.as_str() {
        "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Failure::Usage(format!("cannot read ARGS_JSON from stdin: {e}")))?;
            text
        }
        text => text.to_owned(),
    };
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Failure::Usage(format!("ARGS_JSON is not JSON: {e}")))?;
    let body = args_to_msgpack(&json).map_err(|e| Failure::Usage(format!("ARGS_JSON: {e}")))?;
    let count = json.as_array().map_or(0, Vec::len);
    let tls = client_tls(args.tls_ca.as_ref())?;
    let secret = match (&args.app, &args.secret_file) {
        (Some(app), Some(file)) => Some(login(&args, app, file).secret()?),
        _ => None,
    };
    runtime()?.block_on(async move {
        let Reach {
            client,
            method,
            _star,
        } = connect(&args, secret, tls).await?;
        if let Some(m) = &method {
            check(&args, m, count)?;
        }
        let returns = match &method {
            Some(m) if is_result(&m.returns) => Returns::Result,
            Some(_) => Returns::Plain,
            None => Returns::Unknown,
        };
        let idempotent = args
            .idempotent
            .unwrap_or_else(|| method.as_ref().is_some_and(|m| m.idempotent));
        let mut client = client.with_timeout(args.timeout);
        for (key, value) in &args.meta {
            client = client.with_metadata(key, value);
        }
        if let Some(key) = &args.hash_key {
            client = client.with_hash_key(key);
        }
        let bytes = match args.bytes {
            BytesArg::Base64 => BytesOut::Base64,
            BytesArg::Hex => BytesOut::Hex,
        };
        let call = Call {
            client,
            service: args.service.clone(),
            method: args.method.clone(),
            body: body.into(),
            idempotent,
            returns,
            bytes,
        };
        if args.repeat == 1 {
            let outcome = call.once().await.map_err(|e| match e {
                CallFailure::Framework(e) => {
                    Failure::Registry(format!("{}.{} failed: {e}", args.service, args.method))
                }
                CallFailure::Reply(why) => Failure::Registry(why),
            })?;
            let (value, code) = match outcome {
                Outcome::Ok(v) => (v, ExitCode::SUCCESS),
                Outcome::AppError(e) => (e, ExitCode::from(3)),
            };
            match args.output {
                Output::Text => println!("{}", pretty(&value)),
                Output::Json => println!("{value}"),
            }
            return Ok(code);
        }
        Ok(repeat(Arc::new(call), args.repeat, args.concurrency, args.output).await)
    })
}

fn login<'a>(args: &'a CallArgs, app: &'a str, file: &'a std::path::Path) -> Login<'a> {
    Login {
        registry: &args.registry,
        app,
        secret_file: file,
        tls_ca: args.tls_ca.as_ref(),
    }
}

/// How the calls reach the service.
struct Reach {
    client: Client,
    /// The method's declaration, when the registry has one.
    method: Option<MethodDescription>,
    /// The session (or the agent's connection) the client's calls go through: it ends with
    /// the handle.
    _star: Option<Stardust>,
}

/// A client reaching the service the way the flags say, and the method's description when the
/// registry has one.
async fn connect(
    args: &CallArgs,
    secret: Option<String>,
    tls: Option<stardust::tls::ClientTls>,
) -> Result<Reach, Failure> {
    if let Some(agent) = &args.agent {
        let star = Stardust::builder()
            .via_agent(agent.as_str())
            .timeout(args.timeout)
            .connect()
            .await
            .map_err(|e| Failure::Registry(format!("cannot reach the agent at {agent}: {e}")))?;
        return Ok(Reach {
            client: star.client_for(&args.service, "*"),
            method: None,
            _star: Some(star),
        });
    }
    if let Some(addr) = &args.addr {
        let mut builder = Client::builder()
            .timeout(args.timeout)
            .connect_timeout(args.timeout);
        if let Some(tls) = tls {
            builder = builder.tls(tls);
        }
        let client = builder
            .connect(addr.as_str())
            .await
            .map_err(|e| Failure::Registry(format!("cannot reach {addr}: {e}")))?;
        return Ok(Reach {
            client,
            method: None,
            _star: None,
        });
    }
    let (Some(app), Some(file), Some(secret)) = (&args.app, &args.secret_file, secret) else {
        return Err(Failure::Usage(
            "say how to reach the service: --app and --secret-file (through the registry), \
             --agent ADDR or --addr ADDR"
                .into(),
        ));
    };
    // The method's declaration first: it says whether a call is idempotent and returns a
    // Result, and a service the app may not call is refused here.
    let registry = log_in(&login(args, app, file), secret.clone(), tls.clone()).await?;
    let versions = answer(registry.describe(args.service.clone()).await)?;
    drop(registry);
    let method = find_method(&versions, &args.service, &args.method)?;
    let mut builder = Stardust::builder()
        .registry(args.registry.as_str())
        .app(app.as_str(), secret)
        .timeout(args.timeout);
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    let star = builder.connect().await.map_err(|e| {
        Failure::Registry(format!(
            "cannot log in to the registry at {} as `{app}`: {e}",
            args.registry
        ))
    })?;
    Ok(Reach {
        client: star.client_for(&args.service, "*"),
        method,
        _star: Some(star),
    })
}

/// `method` as the newest described version declares it. `None` when no version has a
/// description; a usage error when every described version lacks it.
fn find_method(
    versions: &[VersionDescription],
    service: &str,
    method: &str,
) -> Result<Option<MethodDescription>, Failure> {
    let mut described: Vec<_> = versions
        .iter()
        .filter_map(|v| {
            Some((
                semver::Version::parse(&v.version).ok(),
                v.description.as_ref()?,
            ))
        })
        .collect();
    described.sort_by(|a, b| b.0.cmp(&a.0));
    if described.is_empty() {
        return Ok(None);
    }
    if let Some(m) = described
        .iter()
        .find_map(|(_, d)| d.methods.iter().find(|m| m.name == method))
    {
        return Ok(Some(m.clone()));
    }
    let names: Vec<&str> = described[0]
        .1
        .methods
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    Err(Failure::Usage(format!(
        "{service} has no method `{method}` (its methods: {}); nothing sent",
        names.join(", ")
    )))
}

/// What can be checked before sending: a method the command line can call, with as many
/// arguments as it takes.
fn check(args: &CallArgs, m: &MethodDescription, count: usize) -> Result<(), Failure> {
    if m.input_stream || m.output_stream {
        return Err(Failure::Usage(format!(
            "{}.{} streams its {}; `call` makes unary calls only",
            args.service,
            m.name,
            if m.input_stream { "input" } else { "output" }
        )));
    }
    if count != m.args.len() {
        return Err(Failure::Usage(format!(
            "{}.{} takes {} argument(s), ARGS_JSON has {count}: {}; nothing sent",
            args.service,
            m.name,
            m.args.len(),
            m.signature()
        )));
    }
    Ok(())
}

/// One call, ready to be made any number of times.
struct Call {
    client: Client,
    service: String,
    method: String,
    body: Box<[u8]>,
    idempotent: bool,
    returns: Returns,
    bytes: BytesOut,
}

enum CallFailure {
    /// The framework's error (its kind counts in `--repeat`'s summary).
    Framework(stardust::Error),
    /// The reply could not be shown as JSON.
    Reply(String),
}

impl Call {
    async fn once(&self) -> Result<Outcome, CallFailure> {
        let reply = self
            .client
            .call_dynamic(&self.service, &self.method, &self.body, self.idempotent)
            .await
            .map_err(CallFailure::Framework)?;
        let value = from_msgpack(&reply, self.bytes)
            .map_err(|e| CallFailure::Reply(format!("the reply cannot be shown as JSON: {e}")))?;
        Ok(classify(value, self.returns))
    }
}

/// Whether a return type as written is a `Result<T, E>` (also spelt with its path).
fn is_result(returns: &str) -> bool {
    let returns = returns.trim_start_matches("::");
    ["", "std::result::", "core::result::"]
        .iter()
        .any(|path| returns.starts_with(&format!("{path}Result<")))
}

/// Unwraps a Result's `{"Ok": v}` / `{"Err": e}`.
fn classify(value: Value, returns: Returns) -> Outcome {
    if matches!(returns, Returns::Plain) {
        return Outcome::Ok(value);
    }
    match value {
        Value::Object(map) if map.len() == 1 => {
            let (key, inner) = map.into_iter().next().expect("one entry");
            match key.as_str() {
                "Ok" => Outcome::Ok(inner),
                "Err" => Outcome::AppError(inner),
                _ => Outcome::Ok(Value::Object([(key, inner)].into_iter().collect())),
            }
        }
        value => Outcome::Ok(value),
    }
}

/// What the calls of `--repeat` came to.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    framework: bool,
    app_errors: bool,
}

/// Makes `call` `n` times, `concurrency` at once; prints the summary.
async fn repeat(call: Arc<Call>, n: u64, concurrency: u64, output: Output) -> ExitCode {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let progress = std::io::stderr().is_terminal() && n >= PROGRESS_FROM;
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.min(n))
        .map(|_| {
            let (call, next, done) = (call.clone(), next.clone(), done.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let start = Instant::now();
                    let outcome = call.once().await;
                    tally.latencies.push(start.elapsed());
                    let kind = match outcome {
                        Ok(Outcome::Ok(_)) => None,
                        Ok(Outcome::AppError(_)) => {
                            tally.app_errors = true;
                            Some("Err (typed)".to_owned())
                        }
                        Err(CallFailure::Framework(e)) => {
                            tally.framework = true;
                            Some(format!("{:?}", e.kind()))
                        }
                        Err(CallFailure::Reply(_)) => {
                            tally.framework = true;
                            Some("InvalidReply".to_owned())
                        }
                    };
                    if let Some(kind) = kind {
                        *tally.errors.entry(kind).or_default() += 1;
                    }
                    let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if progress && (finished % 10 == 0 || finished == n) {
                        let mut err = std::io::stderr().lock();
                        let _ = write!(err, "\r{finished}/{n} calls");
                        let _ = err.flush();
                    }
                }
                tally
            })
        })
        .collect();
    let mut all = Tally::default();
    for worker in workers {
        let Ok(tally) = worker.await else {
            all.framework = true;
            continue;
        };
        all.latencies.extend(tally.latencies);
        for (kind, count) in tally.errors {
            *all.errors.entry(kind).or_default() += count;
        }
        all.framework |= tally.framework;
        all.app_errors |= tally.app_errors;
    }
    if progress {
        eprintln!();
    }
    let elapsed = started.elapsed();
    print_summary(&mut all, elapsed, output);
    if all.framework {
        ExitCode::from(1)
    } else if all.app_errors {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_summary(all: &mut Tally, elapsed: Duration, output: Output) {
    all.latencies.sort_unstable();
    let calls = all.latencies.len() as u64;
    let failed: u64 = all.errors.values().sum();
    let at = |p: f64| percentile(&all.latencies, p);
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "calls": calls,
                "ok": calls - failed,
                "errors": all.errors,
                "latency_ms": { "p50": ms(at(0.5)), "p99": ms(at(0.99)), "max": ms(at(1.0)) },
                "elapsed_ms": ms(elapsed),
            })
        ),
        Output::Text => {
            println!(
                "calls {calls}, ok {}, errors {failed} in {elapsed:.2?}",
                calls - failed
            );
            for (kind, count) in &all.errors {
                println!("  {kind}: {count}");
            }
            println!(
                "latency p50 {:.2?}, p99 {:.2?}, max {:.2?}",
                at(0.5),
                at(0.99),
                at(1.0)
            );
        }
    }
}

/// The nearest-rank percentile `p` (0..=1) of sorted `values`.
fn percentile(values: &[Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_recognised_and_unwrapped() {
        assert!(is_result("Result<u64, E>") && is_result("std::result::Result<(), E>"));
        assert!(!is_result("u64") && !is_result("Vec<Result<u8, E>>"));
        let err = json!({ "Err": { "OutOfStock": 1 } });
        assert!(
            matches!(classify(err.clone(), Returns::Result), Outcome::AppError(e) if e == json!({ "OutOfStock": 1 }))
        );
        assert!(matches!(classify(err.clone(), Returns::Plain), Outcome::Ok(v) if v == err));
        assert!(matches!(classify(json!({ "Ok": 3 }), Returns::Unknown), Outcome::Ok(v) if v == 3));
        let other = json!({ "Circle": 2 });
        assert!(matches!(classify(other.clone(), Returns::Unknown), Outcome::Ok(v) if v == other));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&ms, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&ms, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
