//! `stardust-registry route|fault set|list|rm`: the registry's traffic rules
//! ([`stardust::traffic`]) from the command line.
//!
//! Each command logs in to one registry as an app (changing rules needs the `admin` role; any
//! app may list them), makes one call, and prints the outcome. A rule given on the command line
//! or in a file is validated here first, so a mistake is named before anything is sent; the
//! registry validates it again.
//!
//! Exit codes: 0 done; 1 the registry refused (its message is printed) or could not be reached;
//! 2 the command line, or a file it names, is wrong (nothing was sent).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use stardust::traffic::{Fallback, Fault, FaultAction, Match, Route, Rules, RulesEdit, Weighted};
use stardust_registry::config::DEFAULT_LISTEN;

mod render;

use super::conn::{Failure, Login, finish, parse_meta, refusal, with_registry};

use render::{FAULT_KEYS, ROUTE_KEYS, as_toml, only, read_rule};

const ROUTE_SET_EXAMPLES: &str = "\
Examples:
  # 95% of calls to versions ^1.4, 5% to instances tagged canary
  stardust-registry route set calc.Calculator canary \\
      --to 95:^1.4 --to 5:tag:canary \\
      --registry 127.0.0.1:7600 --app ops --secret-file ops.secret

  # Only calls from app `web` carrying metadata x-beta (any value) go to 2.x; fail if none is up
  stardust-registry route set calc.Calculator beta --to 1:^2 \\
      --caller web --meta x-beta='*' --fallback fail --app ops --secret-file ops.secret

  # The same route from a file (what `route list` prints), only if nobody changed the rules
  # since revision 7
  stardust-registry route set calc.Calculator --file canary.toml --if-revision 7 \\
      --app ops --secret-file ops.secret

A route file:
  name = \"canary\"
  to = [{ weight = 95, subset = \"^1.4\" }, { weight = 5, subset = \"tag:canary\" }]
  fallback = \"all\"        # or \"fail\"
  [match]                  # optional; every condition given must hold
  callers = [\"web\"]
  methods = [\"add\"]
  metadata = { x-canary = \"*\" }";

const FAULT_SET_EXAMPLES: &str = "\
Examples:
  # Delay 10% of the calls to calc.Calculator by 250 ms
  stardust-registry fault set calc.Calculator slow --percent 10 --delay 250ms \\
      --registry 127.0.0.1:7600 --app ops --secret-file ops.secret

  # Fail half of billing's calls of `div` with Overloaded
  stardust-registry fault set calc.Calculator drill --percent 50 --abort Overloaded \\
      --caller billing --method div --app ops --secret-file ops.secret

  # The same fault from a file (what `fault list` prints)
  stardust-registry fault set calc.Calculator --file drill.toml --app ops --secret-file ops.secret

A fault file:
  name = \"drill\"
  percent = 50.0
  kind = \"abort\"           # or kind = \"delay\" with delay_ms = 250
  error = \"Overloaded\"
  [match]                  # optional; every condition given must hold
  callers = [\"billing\"]
  methods = [\"div\"]
  metadata = { x-drill = \"*\" }";

const LIST_EXAMPLES: &str = "\
Examples:
  stardust-registry route list calc.Calculator --app ops --secret-file ops.secret
  stardust-registry fault list --output json --app ops --secret-file ops.secret

The text output is TOML: each rule is a block that `set SERVICE --file FILE` accepts as it is,
under comments naming its service and the rules' revision (for --if-revision).";

const RM_EXAMPLES: &str = "\
Examples:
  stardust-registry route rm calc.Calculator canary --app ops --secret-file ops.secret
  stardust-registry fault rm calc.Calculator drill --if-revision 8 --app ops --secret-file ops.secret";

/// How to reach the registry, as whom, and how to print the outcome.
#[derive(Debug, Args)]
pub(crate) struct Conn {
    /// Registry address, `host:port`.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    registry: String,
    /// The app to log in as. Changing rules needs an app with the `admin` role (`roles =
    /// ["admin"]` under `[apps.NAME]` in the registry's config); any app may list them.
    #[arg(long, value_name = "NAME")]
    app: String,
    /// File holding the app's secret; whitespace around it (a trailing newline) is ignored.
    /// The secret is never printed.
    #[arg(long, value_name = "FILE")]
    secret_file: PathBuf,
    /// CA bundle (PEM) to verify the registry's certificate with, for a registry that speaks
    /// TLS.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// What to print: `text` (TOML for lists, `revision N` for changes) or `json`.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Human-readable; lists are TOML that `set --file` accepts.
    Text,
    /// JSON.
    Json,
}

/// Which calls a rule applies to (every condition given must hold; none: every call).
#[derive(Debug, Args)]
pub(crate) struct MatchArgs {
    /// Only calls from this app (its registry app name); repeat for several.
    #[arg(long = "caller", value_name = "APP", conflicts_with = "file")]
    callers: Vec<String>,
    /// Only calls of this method; repeat for several.
    #[arg(long = "method", value_name = "METHOD", conflicts_with = "file")]
    methods: Vec<String>,
    /// Only calls carrying this metadata key with this value (`*`: any value); repeat for
    /// several (all must hold).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta, conflicts_with = "file")]
    metadata: Vec<(String, String)>,
}

impl Conn {
    fn login(&self) -> Login<'_> {
        Login {
            registry: &self.registry,
            app: &self.app,
            secret_file: &self.secret_file,
            tls_ca: self.tls_ca.as_ref(),
        }
    }
}

impl MatchArgs {
    fn into_match(self) -> Match {
        Match {
            callers: self.callers,
            methods: self.methods,
            metadata: self.metadata.into_iter().collect(),
        }
    }
}

/// `route ...`
#[derive(Debug, Subcommand)]
pub(crate) enum RouteCommand {
    /// Add a route to a service's routes, or replace its route of the same name where it
    /// stands; prints the rules' new revision (`revision 7`).
    ///
    /// Routes are tried in order; the first that matches a call sends it to one of its
    /// destinations, drawn by weight, and the balancer picks an instance within it.
    #[command(after_long_help = ROUTE_SET_EXAMPLES)]
    Set(RouteSet),
    /// Print the routes of one service, or of every service.
    #[command(after_long_help = LIST_EXAMPLES)]
    List(ListArgs),
    /// Remove a service's route by name; prints the rules' new revision.
    #[command(after_long_help = RM_EXAMPLES)]
    Rm(RmArgs),
}

/// `fault ...`
#[derive(Debug, Subcommand)]
pub(crate) enum FaultCommand {
    /// Add a fault to a service's faults, or replace its fault of the same name where it
    /// stands; prints the rules' new revision (`revision 7`).
    ///
    /// Faults are tried in order; the first that matches a call and whose roll hits delays it
    /// before it is sent, or fails it unsent. Consumers and agents started with faults off
    /// (`agent --no-faults`) never take them.
    #[command(after_long_help = FAULT_SET_EXAMPLES)]
    Set(FaultSet),
    /// Print the faults of one service, or of every service.
    #[command(after_long_help = LIST_EXAMPLES)]
    List(ListArgs),
    /// Remove a service's fault by name; prints the rules' new revision.
    #[command(after_long_help = RM_EXAMPLES)]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RouteSet {
    /// The service whose calls the route steers, e.g. `calc.Calculator`.
    #[arg(value_name = "SERVICE")]
    service: String,
    /// The route's name (unique among the service's routes).
    #[arg(
        value_name = "NAME",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    name: Option<String>,
    /// A destination, `WEIGHT:SUBSET`: a share (at least 1, relative to the other
    /// destinations) and the instances, a version requirement (`^1.4`, `=2.0.1`, `*`) or a
    /// tag (`tag:NAME`, `tag:NAME=VALUE`). Repeat for several.
    #[arg(
        long = "to",
        value_name = "WEIGHT:SUBSET",
        value_parser = parse_weighted,
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    to: Vec<Weighted>,
    #[command(flatten)]
    matches: MatchArgs,
    /// What a call does when the destination drawn for it has no live instance: `all` goes
    /// to any instance of the service, `fail` fails with NoProvider [default: all].
    #[arg(long, value_enum, value_name = "all|fail", conflicts_with = "file")]
    fallback: Option<FallbackArg>,
    /// Read the route from a TOML file instead (`name`, `match`, `to`, `fallback`: what
    /// `route list` prints for one route).
    #[arg(long, value_name = "ROUTE.toml")]
    file: Option<PathBuf>,
    /// Change the rules only if they are still at this revision (as `route list` showed
    /// them); refused otherwise, nothing changed.
    #[arg(long, value_name = "N")]
    if_revision: Option<u64>,
    #[command(flatten)]
    conn: Conn,
}

/// A route's fallback, as flags name it.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum FallbackArg {
    /// Any instance of the service.
    All,
    /// Fail with NoProvider, naming the route.
    Fail,
}

#[derive(Debug, Args)]
// One of --delay and --abort, unless --file (checked when building the fault: a required group
// would stay required next to --file).
#[command(group(clap::ArgGroup::new("action").args(["delay", "abort"])))]
pub(crate) struct FaultSet {
    /// The service whose calls the fault hits, e.g. `calc.Calculator`.
    #[arg(value_name = "SERVICE")]
    service: String,
    /// The fault's name (unique among the service's faults).
    #[arg(
        value_name = "NAME",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    name: Option<String>,
    /// The share of matching calls it hits, in percent, 0 to 100 (fractions allowed: 0.5).
    #[arg(
        long,
        value_name = "P",
        value_parser = parse_percent,
        allow_negative_numbers = true,
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    percent: Option<f64>,
    /// Hold each call it hits this long before sending it (`250ms`, `2s`).
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = humantime::parse_duration,
        conflicts_with = "file"
    )]
    delay: Option<Duration>,
    /// Fail each call it hits, unsent, with this error kind (`Overloaded`, `Internal`,
    /// `DeadlineExceeded`, ...).
    #[arg(long, value_name = "KIND", conflicts_with = "file")]
    abort: Option<String>,
    #[command(flatten)]
    matches: MatchArgs,
    /// Read the fault from a TOML file instead (`name`, `match`, `percent`, `kind = "delay"`
    /// with `delay_ms`, or `kind = "abort"` with `error`: what `fault list` prints for one
    /// fault).
    #[arg(long, value_name = "FAULT.toml", conflicts_with = "action")]
    file: Option<PathBuf>,
    /// Change the rules only if they are still at this revision (as `fault list` showed
    /// them); refused otherwise, nothing changed.
    #[arg(long, value_name = "N")]
    if_revision: Option<u64>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only this service's rules [default: every service's].
    #[arg(value_name = "SERVICE")]
    service: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Args)]
pub(crate) struct RmArgs {
    /// The service.
    #[arg(value_name = "SERVICE")]
    service: String,
    /// The rule's name.
    #[arg(value_name = "NAME")]
    name: String,
    /// Change the rules only if they are still at this revision; refused otherwise, nothing
    /// changed.
    #[arg(long, value_name = "N")]
    if_revision: Option<u64>,
    #[command(flatten)]
    conn: Conn,
}

/// Runs `stardust-registry route ...`.
pub(crate) fn route(command: RouteCommand) -> ExitCode {
    finish(match command {
        RouteCommand::Set(args) => route_set(args),
        RouteCommand::List(args) => list(args, Kind::Route),
        RouteCommand::Rm(args) => remove(args, Kind::Route),
    })
}

/// Runs `stardust-registry fault ...`.
pub(crate) fn fault(command: FaultCommand) -> ExitCode {
    finish(match command {
        FaultCommand::Set(args) => fault_set(args),
        FaultCommand::List(args) => list(args, Kind::Fault),
        FaultCommand::Rm(args) => remove(args, Kind::Fault),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Route,
    Fault,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Route => "route",
            Kind::Fault => "fault",
        }
    }
}

fn route_set(args: RouteSet) -> Result<(), Failure> {
    let route = match &args.file {
        Some(path) => read_rule::<Route>(path, ROUTE_KEYS)?,
        None => Route {
            name: args.name.unwrap_or_default(),
            matches: args.matches.into_match(),
            to: args.to,
            fallback: match args.fallback {
                None | Some(FallbackArg::All) => Fallback::All,
                Some(FallbackArg::Fail) => Fallback::Fail,
            },
        },
    };
    let edit = RulesEdit::SetRoute {
        service: args.service,
        route,
    };
    edit_rules(&args.conn, edit, args.if_revision)
}

fn fault_set(args: FaultSet) -> Result<(), Failure> {
    let fault = match &args.file {
        Some(path) => read_rule::<Fault>(path, FAULT_KEYS)?,
        None => Fault {
            name: args.name.unwrap_or_default(),
            matches: args.matches.into_match(),
            percent: args.percent.unwrap_or_default(),
            action: match (args.delay, args.abort) {
                (Some(delay), _) => FaultAction::Delay {
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                },
                (None, Some(error)) => FaultAction::Abort { error },
                (None, None) => {
                    return Err(Failure::Usage(
                        "say what the fault does: --delay DURATION or --abort KIND (or give the \
                         whole fault with --file FAULT.toml)"
                            .into(),
                    ));
                }
            },
        },
    };
    let edit = RulesEdit::SetFault {
        service: args.service,
        fault,
    };
    edit_rules(&args.conn, edit, args.if_revision)
}

fn remove(args: RmArgs, kind: Kind) -> Result<(), Failure> {
    let (service, name) = (args.service, args.name);
    let edit = match kind {
        Kind::Route => RulesEdit::RemoveRoute { service, name },
        Kind::Fault => RulesEdit::RemoveFault { service, name },
    };
    edit_rules(&args.conn, edit, args.if_revision)
}

/// Validates `edit` here, then sends it and prints the new revision.
fn edit_rules(conn: &Conn, edit: RulesEdit, if_revision: Option<u64>) -> Result<(), Failure> {
    // A set is checked against empty rules: its own fields are what can be wrong here (a
    // removal is only wrong against the registry's rules, which it checks).
    if matches!(
        edit,
        RulesEdit::SetRoute { .. } | RulesEdit::SetFault { .. }
    ) {
        Rules::default()
            .edited(&edit)
            .map_err(|e| Failure::Usage(format!("invalid rule, nothing sent: {}", e.message())))?;
    }
    let revision = with_registry(&conn.login(), async |registry| {
        registry
            .edit_rules(edit, if_revision)
            .await
            .map_err(|e| Failure::Registry(format!("the call to the registry failed: {e}")))?
            .map_err(|e| Failure::Registry(refusal(&e)))
    })?;
    match conn.output {
        Output::Text => println!("revision {revision}"),
        Output::Json => println!("{}", serde_json::json!({ "revision": revision })),
    }
    Ok(())
}

fn list(args: ListArgs, kind: Kind) -> Result<(), Failure> {
    let rules = with_registry(&args.conn.login(), async |registry| {
        registry
            .rules()
            .await
            .map_err(|e| Failure::Registry(format!("the call to the registry failed: {e}")))?
            .map_err(|e| Failure::Registry(refusal(&e)))
    })?;
    let rules = only(rules, kind, args.service.as_deref());
    match args.conn.output {
        Output::Json => {
            let json = serde_json::to_string_pretty(&rules)
                .map_err(|e| Failure::Registry(format!("cannot print the rules as JSON: {e}")))?;
            println!("{json}");
        }
        Output::Text => print!("{}", as_toml(&rules, kind, args.service.as_deref())?),
    }
    Ok(())
}

/// `WEIGHT:SUBSET`, split at the first `:` (a subset may hold more: `5:tag:canary`).
fn parse_weighted(text: &str) -> Result<Weighted, String> {
    let (weight, subset) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not WEIGHT:SUBSET (e.g. `95:^1.4`, `5:tag:canary`)"))?;
    let weight = weight.trim().parse::<u32>().map_err(|_| {
        format!("`{weight}` in `{text}` is not a weight (a whole number, at least 1)")
    })?;
    Ok(Weighted {
        weight,
        subset: subset.to_owned(),
    })
}

/// A percentage, with or without a trailing `%`. Its range is checked with the rest of the
/// rule (naming the field).
fn parse_percent(text: &str) -> Result<f64, String> {
    let number = text.strip_suffix('%').unwrap_or(text).trim();
    match number.parse::<f64>() {
        Ok(p) if p.is_finite() => Ok(p),
        _ => Err(format!("`{text}` is not a number (e.g. 10, 0.5)")),
    }
}
