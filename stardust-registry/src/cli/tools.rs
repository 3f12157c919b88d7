//! `stardust-registry services|describe`: what is registered, and what its methods look like,
//! as the registry tells an app that may call it (`Registry::services`, `Registry::describe`).
//!
//! Exit codes: 0 done; 1 the registry refused (its message is printed) or could not be
//! reached; 2 the command line, or a file it names, is wrong (nothing was sent).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use stardust::discovery::api::{ServiceSummary, VersionDescription};
use stardust_registry::config::DEFAULT_LISTEN;

use super::conn::{Failure, Login, answer, finish, with_registry};

/// What `describe` says about the shape of `call`'s arguments.
pub(crate) const SHAPES: &str = "Signatures are Rust types as written in the service's trait; \
`call` takes a JSON array with one element per argument, each shaped as serde encodes it \
(structs as maps with field names, enums as serde writes them, bytes as {\"$base64\": \"..\"} \
or {\"$hex\": \"..\"}): docs/PROTOCOL.md §12 and §12.1.";

/// How to reach the registry and as whom.
#[derive(Debug, Args)]
pub(crate) struct RegistryArgs {
    /// Registry address, `host:port`.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub(crate) registry: String,
    /// The app to log in as; only the services it may call are shown.
    #[arg(long, value_name = "NAME")]
    pub(crate) app: String,
    /// File holding the app's secret; whitespace around it (a trailing newline) is ignored.
    /// The secret is never printed.
    #[arg(long, value_name = "FILE")]
    pub(crate) secret_file: PathBuf,
    /// CA bundle (PEM) to verify the registry's certificate with, for a registry that speaks
    /// TLS.
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_ca: Option<PathBuf>,
}

impl RegistryArgs {
    pub(crate) fn login(&self) -> Login<'_> {
        Login {
            registry: &self.registry,
            app: &self.app,
            secret_file: &self.secret_file,
            tls_ca: self.tls_ca.as_ref(),
        }
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// For people.
    Text,
    /// JSON, for scripts.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct ServicesArgs {
    #[command(flatten)]
    conn: RegistryArgs,
    /// What to print: `text` (a table) or `json`.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Args)]
pub(crate) struct DescribeArgs {
    /// The service, e.g. `calc.Calculator`.
    #[arg(value_name = "SERVICE")]
    service: String,
    #[command(flatten)]
    conn: RegistryArgs,
    /// What to print: `text` or `json` (the registry's description of each version, every
    /// method with its `signature`).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Runs `stardust-registry services`.
pub(crate) fn services(args: ServicesArgs) -> ExitCode {
    finish((|| {
        let list = with_registry(&args.conn.login(), async |registry| {
            answer(registry.services().await)
        })?;
        match args.output {
            Output::Json => println!("{}", pretty(&services_json(&list))),
            Output::Text if list.is_empty() => {
                eprintln!(
                    "no services with live instances that `{}` may call",
                    args.conn.app
                )
            }
            Output::Text => print!("{}", services_table(&list)),
        }
        Ok(())
    })())
}

/// `[{"name": .., "versions": [{"version": .., "instances": N}], "health": {"healthy": N}}]`.
fn services_json(list: &[ServiceSummary]) -> Value {
    list.iter()
        .map(|s| {
            let health: serde_json::Map<String, Value> = s
                .health
                .iter()
                .map(|(state, n)| (state.clone(), json!(n)))
                .collect();
            json!({ "name": s.name, "versions": s.versions, "health": health })
        })
        .collect()
}

fn services_table(list: &[ServiceSummary]) -> String {
    let rows: Vec<[String; 3]> = list
        .iter()
        .map(|s| {
            let versions: Vec<String> = s
                .versions
                .iter()
                .map(|v| format!("{} ({})", v.version, v.instances))
                .collect();
            let health: Vec<String> = s.health.iter().map(|(h, n)| format!("{h} {n}")).collect();
            [s.name.clone(), versions.join(", "), health.join(", ")]
        })
        .collect();
    let head = ["SERVICE", "VERSIONS (INSTANCES)", "HEALTH"].map(str::to_owned);
    let widths: Vec<usize> = (0..2)
        .map(|i| {
            rows.iter()
                .chain([&head])
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in [&head].into_iter().chain(&rows) {
        let line = format!(
            "{:w0$}  {:w1$}  {}",
            row[0],
            row[1],
            row[2],
            w0 = widths[0],
            w1 = widths[1]
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// Runs `stardust-registry describe SERVICE`.
pub(crate) fn describe(args: DescribeArgs) -> ExitCode {
    finish((|| {
        let service = args.service.clone();
        let versions = with_registry(&args.conn.login(), async |registry| {
            answer(registry.describe(service).await)
        })?;
        match args.output {
            Output::Json => println!("{}", pretty(&describe_json(&args.service, &versions)?)),
            Output::Text => print!("{}", describe_text(&args.service, &versions)),
        }
        Ok(())
    })())
}

/// `{"service": .., "versions": [VersionDescription, with each method's "signature"], "note":
/// SHAPES}`.
fn describe_json(service: &str, versions: &[VersionDescription]) -> Result<Value, Failure> {
    let mut list = serde_json::to_value(versions)
        .map_err(|e| Failure::Registry(format!("cannot print the description as JSON: {e}")))?;
    for (json, version) in list.as_array_mut().into_iter().flatten().zip(versions) {
        let methods = json
            .pointer_mut("/description/methods")
            .and_then(Value::as_array_mut);
        let described = version.description.iter().flat_map(|d| &d.methods);
        for (m, method) in methods.into_iter().flatten().zip(described) {
            if let Value::Object(m) = m {
                m.insert("signature".into(), json!(method.signature()));
            }
        }
    }
    Ok(json!({ "service": service, "versions": list, "note": SHAPES }))
}

fn describe_text(service: &str, versions: &[VersionDescription]) -> String {
    let mut out = String::new();
    if versions.is_empty() {
        let _ = writeln!(
            out,
            "{service}: no version registered since the registry started"
        );
    }
    for v in versions {
        let _ = writeln!(
            out,
            "{service} {} (registered by app `{}`)",
            v.version, v.app
        );
        if let Some(conflict) = &v.conflict {
            let _ = writeln!(out, "  conflict: {conflict}");
        }
        let Some(d) = &v.description else {
            let _ = writeln!(out, "  (its provider sent no description)");
            continue;
        };
        indented(&mut out, &d.docs, "  ");
        for m in &d.methods {
            let mut flags = Vec::new();
            if m.idempotent {
                flags.push("idempotent");
            }
            if m.input_stream {
                flags.push("input stream");
            }
            if m.output_stream {
                flags.push("output stream");
            }
            let flags = match flags.is_empty() {
                true => String::new(),
                false => format!("  [{}]", flags.join(", ")),
            };
            let _ = writeln!(out, "\n  {}{flags}", m.signature());
            indented(&mut out, &m.docs, "      ");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "{}", wrap(SHAPES, 96));
    out
}

/// `text`'s lines, each after `indent` (none for empty text).
fn indented(out: &mut String, text: &str, indent: &str) {
    for line in text.trim_end().lines() {
        let _ = writeln!(out, "{}", format!("{indent}{line}").trim_end());
    }
}

/// `text` broken into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split(' ') {
        if line > 0 && line + 1 + word.len() > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.len();
    }
    out
}

pub(crate) fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}
