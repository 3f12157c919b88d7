//! Service descriptions: what a provider tells the registry about the services it registers
//! (methods, their signatures as written in Rust, docs), for operators' tools
//! (`stardust-registry services|describe|call`, the console).

use serde::{Deserialize, Serialize};

/// A service's methods and docs, as its trait declares them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDescription {
    /// The trait's doc comment.
    #[serde(default)]
    pub docs: String,
    /// The methods, in declaration order.
    #[serde(default)]
    pub methods: Vec<MethodDescription>,
}

/// One method: its name, signature (Rust types as written) and flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodDescription {
    /// The method's name, as calls name it.
    pub name: String,
    /// The arguments, in order (an input stream included, last).
    #[serde(default)]
    pub args: Vec<ArgDescription>,
    /// The return type as written (`()` when there is none).
    #[serde(default)]
    pub returns: String,
    /// The method's doc comment.
    #[serde(default)]
    pub docs: String,
    /// Repeating a call is harmless (it may be retried or hedged).
    #[serde(default)]
    pub idempotent: bool,
    /// It takes a stream of items from the caller.
    #[serde(default)]
    pub input_stream: bool,
    /// It returns a stream of items.
    #[serde(default)]
    pub output_stream: bool,
}

/// One argument: its name and type as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgDescription {
    /// The argument's name.
    pub name: String,
    /// Its type as written, e.g. `Vec<Item>`.
    pub ty: String,
}

impl MethodDescription {
    /// The signature as written: `add(a: i64, b: i64) -> i64`.
    pub fn signature(&self) -> String {
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| format!("{}: {}", a.name, a.ty))
            .collect();
        match self.returns.as_str() {
            "" | "()" => format!("{}({})", self.name, args.join(", ")),
            returns => format!("{}({}) -> {returns}", self.name, args.join(", ")),
        }
    }
}

/// A service with live instances, as `services` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// The service's name.
    pub name: String,
    /// Its live instances by version, lowest version first.
    pub versions: Vec<VersionSummary>,
    /// Its live instances by health (`healthy`, `erroring`, `stale`, `unreachable`), with
    /// how many are in each (only the ones with some).
    pub health: Vec<(String, u32)>,
}

/// The live instances of one version of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSummary {
    /// The version.
    pub version: String,
    /// How many instances of it are live.
    pub instances: u32,
}

/// What the registry knows of one version of a service, as `describe` answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionDescription {
    /// The version.
    pub version: String,
    /// The methods and docs the first provider of this version registered (`None`: it sent
    /// none, e.g. an older provider).
    pub description: Option<ServiceDescription>,
    /// The app that registered it first.
    pub app: String,
    /// Set when a later provider of the same version registered a different description: who,
    /// and that the first one is kept.
    pub conflict: Option<String>,
}
