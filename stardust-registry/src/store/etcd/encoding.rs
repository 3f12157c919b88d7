//! How the registry's state is laid out in etcd: the key of each entry and its JSON value.
//!
//! The layout (the table in the [module docs](super)) is what every node of one registry
//! shares, and what an operator reads with `etcdctl get --prefix`; keeping every key and value
//! shape in this one file keeps the code that writes an entry and the code that reads it back
//! from drifting apart. A malformed entry is logged and skipped, never fatal: another node (or a
//! person) wrote it, and this node should keep serving the rest.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use etcd_client::KeyValue;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use stardust::discovery::api::{Instance, PublicKey, ServiceDescription};
use stardust::traffic::Rules;

use super::Inner;
use crate::config::AppConfig;
use crate::store::Record;

/// A registration's value.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredInstance {
    pub(super) instance: Instance,
    pub(super) node: String,
    pub(super) session: u64,
}

/// An app definition's value (the same fields as a config file's `[apps.NAME]`).
#[derive(Serialize, Deserialize)]
pub(super) struct StoredApp {
    pub(super) secret_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) provide: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) consume: Option<Vec<String>>,
    /// Absent in entries written before roles existed: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) roles: Vec<String>,
}

impl StoredApp {
    /// A config app's value.
    pub(super) fn of(app: &AppConfig) -> StoredApp {
        StoredApp {
            secret_hash: app.secret_hash.clone(),
            provide: app.provide.clone(),
            consume: app.consume.clone(),
            roles: app.roles.clone(),
        }
    }
}

/// A public key's value.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredKey {
    /// URL-safe base64 of the 32-byte Ed25519 public key.
    pub(super) key: String,
    pub(super) node: String,
}

/// A service description's value: the first one registered for its (service, version), and
/// the app that registered it.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredDescription {
    pub(super) app: String,
    pub(super) description: ServiceDescription,
}

/// Largest description value read (or written): a bigger one is ignored, whoever wrote it.
pub(super) const MAX_DESCRIPTION_VALUE: usize = 256 * 1024;

impl Inner {
    /// Like an instance key, the service name as it is (it may hold `/`; the version never
    /// does, so the key splits at its last `/`).
    pub(super) fn description_key(&self, service: &str, version: &str) -> String {
        format!("{}{DESCRIPTIONS}/{service}/{version}", self.root)
    }

    pub(super) fn instance_key(&self, service: &str, endpoint: &str) -> String {
        format!("{}instances/{service}/{endpoint}", self.root)
    }

    /// The one key holding the traffic rules.
    pub(super) fn rules_key(&self) -> String {
        format!("{}{RULES}", self.root)
    }

    /// Decodes one key of the prefix into the table (registrations) or what was learnt.
    pub(super) fn decode(&self, kv: &KeyValue) -> Option<Decoded> {
        if is_rules_key(&self.root, kv.key()) {
            return match decode_rules(kv.value()) {
                Ok(rules) => Some(Decoded::Rules(rules, kv.mod_revision())),
                Err(e) => {
                    tracing::warn!(key = %self.rules_key(), revision = kv.mod_revision(), error = %e, "ignoring malformed traffic rules in the registry's etcd prefix: this node keeps serving the rules it had, and refuses rule edits until valid rules are stored there");
                    None
                }
            };
        }
        let (key, kind, name) = split_key(&self.root, kv.key())?;
        let parsed = match kind {
            "instances" => serde_json::from_slice::<StoredInstance>(kv.value())
                .map(|s| {
                    Decoded::Instance(Record {
                        instance: s.instance,
                        node: s.node,
                        session: s.session,
                        revision: kv.mod_revision(),
                    })
                })
                .map_err(|e| e.to_string()),
            "apps" => serde_json::from_slice::<StoredApp>(kv.value())
                .map(|a| {
                    Decoded::App(
                        name.to_owned(),
                        AppConfig {
                            secret_hash: a.secret_hash,
                            provide: a.provide,
                            consume: a.consume,
                            roles: a.roles,
                        },
                    )
                })
                .map_err(|e| e.to_string()),
            "dev-apps" => serde_json::from_slice::<StoredApp>(kv.value())
                .map(|a| Decoded::DevApp(name.to_owned(), a.secret_hash))
                .map_err(|e| e.to_string()),
            DESCRIPTIONS => decode_description(name, kv.value()),
            "keys" => serde_json::from_slice::<StoredKey>(kv.value())
                .map_err(|e| e.to_string())
                .and_then(|k| {
                    let bytes = URL_SAFE_NO_PAD.decode(&k.key).map_err(|e| e.to_string())?;
                    Ok(Decoded::Key(
                        PublicKey {
                            kid: name.to_owned(),
                            key: ByteBuf::from(bytes),
                        },
                        k.node,
                    ))
                }),
            _ => return None,
        };
        match parsed {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(key, error = %e, "ignoring a malformed entry in the registry's etcd prefix");
                None
            }
        }
    }

    /// Which registration or learnt entry a deleted key was.
    pub(super) fn deleted(&self, key: &[u8]) -> Option<Deleted> {
        deleted(&self.root, key)
    }
}

/// The kind of the service descriptions' keys, `{prefix}/descriptions/{service}/{version}`.
const DESCRIPTIONS: &str = "descriptions";

/// A description's value, `name` being the key's `{service}/{version}`.
pub(super) fn decode_description(name: &str, value: &[u8]) -> Result<Decoded, String> {
    let (service, version) = name
        .rsplit_once('/')
        .ok_or_else(|| "the key names no version".to_owned())?;
    if value.len() > MAX_DESCRIPTION_VALUE {
        return Err(format!(
            "{} bytes, more than the {MAX_DESCRIPTION_VALUE} a description may take",
            value.len()
        ));
    }
    let stored: StoredDescription = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    Ok(Decoded::Description {
        service: service.to_owned(),
        version: version.to_owned(),
        app: stored.app,
        description: stored.description,
    })
}

/// The rules' key under the prefix (one key: every node reads and writes the whole set).
const RULES: &str = "rules";

fn is_rules_key(root: &str, key: &[u8]) -> bool {
    key.strip_prefix(root.as_bytes()) == Some(RULES.as_bytes())
}

/// The rules' value: [`Rules`] as JSON.
pub(super) fn encode_rules(rules: &Rules) -> Vec<u8> {
    serde_json::to_vec(rules).expect("serialisable")
}

/// Reads the rules' value, refusing rules that could not be applied (as a rules file would be).
fn decode_rules(value: &[u8]) -> Result<Rules, String> {
    let rules: Rules = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    rules.validate().map_err(|e| e.message().to_owned())?;
    Ok(rules)
}

/// A key under `root` as `(key, kind, name)`: `kind` is `instances`, `apps`, `dev-apps`,
/// `keys` or `descriptions`; `name` the rest.
fn split_key<'a>(root: &str, key: &'a [u8]) -> Option<(&'a str, &'a str, &'a str)> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(root)?;
    let (kind, name) = rest.split_once('/')?;
    Some((key, kind, name))
}

/// Which registration or learnt entry a deleted key under `root` was (a delete event carries
/// the key only).
fn deleted(root: &str, key: &[u8]) -> Option<Deleted> {
    if is_rules_key(root, key) {
        return Some(Deleted::Rules);
    }
    let (_, kind, name) = split_key(root, key)?;
    Some(match kind {
        "instances" => {
            // Endpoints are `host:port` (no `/`); service names may hold `/`.
            let (service, endpoint) = name.rsplit_once('/')?;
            Deleted::Instance(service.to_owned(), endpoint.to_owned())
        }
        "apps" => Deleted::App(name.to_owned()),
        "dev-apps" => Deleted::DevApp(name.to_owned()),
        "keys" => Deleted::Key(name.to_owned()),
        // A description deleted by hand: nodes keep showing the one they recorded (as they do
        // once its version's last instance is gone).
        DESCRIPTIONS => return None,
        _ => return None,
    })
}

pub(super) enum Decoded {
    Instance(Record),
    App(String, AppConfig),
    DevApp(String, String),
    Key(PublicKey, String),
    /// The traffic rules, with the key's revision.
    Rules(Rules, i64),
    /// The first description of a (service, version), and the app that registered it.
    Description {
        service: String,
        version: String,
        app: String,
        description: ServiceDescription,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Deleted {
    Instance(String, String),
    App(String),
    DevApp(String),
    Key(String),
    Rules,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_what_they_hold() {
        let root = "team/registry/";
        assert_eq!(
            deleted(
                root,
                b"team/registry/instances/calc.Calculator/10.0.0.1:9000"
            ),
            Some(Deleted::Instance(
                "calc.Calculator".into(),
                "10.0.0.1:9000".into()
            ))
        );
        // A service name with `/` in it: the endpoint never has one.
        assert_eq!(
            deleted(root, b"team/registry/instances/a/b/[::1]:7"),
            Some(Deleted::Instance("a/b".into(), "[::1]:7".into()))
        );
        assert_eq!(
            deleted(root, b"team/registry/apps/web"),
            Some(Deleted::App("web".into()))
        );
        assert_eq!(
            deleted(root, b"team/registry/dev-apps/web"),
            Some(Deleted::DevApp("web".into()))
        );
        assert_eq!(
            deleted(root, b"team/registry/keys/kid1"),
            Some(Deleted::Key("kid1".into()))
        );
        // Another registry's prefix, an unknown kind, or a key that is not UTF-8: not ours.
        assert_eq!(deleted(root, b"team/other/apps/web"), None);
        assert_eq!(deleted(root, b"team/registry/rules"), Some(Deleted::Rules));
        assert_eq!(deleted(root, b"team/registry/leader"), None);
        assert_eq!(deleted(root, b"team/registry/rules/x"), None);
        assert_eq!(deleted(root, b"team/registry/queues/x"), None);
        assert_eq!(deleted(root, b"team/registry/apps/\xff"), None);
    }

    #[test]
    fn descriptions_are_keyed_by_service_and_version() {
        let description = ServiceDescription {
            docs: "A calculator.".into(),
            methods: Vec::new(),
        };
        let value = serde_json::to_vec(&StoredDescription {
            app: "calc".into(),
            description: description.clone(),
        })
        .unwrap();
        // A service name with `/` in it: the version never has one.
        match decode_description("a/b/1.2.0", &value) {
            Ok(Decoded::Description {
                service,
                version,
                app,
                description: d,
            }) => {
                assert_eq!((service.as_str(), version.as_str()), ("a/b", "1.2.0"));
                assert_eq!((app.as_str(), d), ("calc", description));
            }
            _ => panic!("not a description"),
        }
        // No version, not JSON, or too big: refused, saying why.
        assert!(decode_description("a", &value).is_err());
        assert!(decode_description("a/1.0.0", b"not json").is_err());
        let mut big = value.clone();
        big.resize(MAX_DESCRIPTION_VALUE + 1, b' ');
        let Err(err) = decode_description("a/1.0.0", &big) else {
            panic!("an oversized description was read");
        };
        assert!(err.contains("more than"), "{err}");
        // Deleting one by hand changes nothing in the nodes' tables.
        assert_eq!(
            deleted("team/registry/", b"team/registry/descriptions/a/1.0.0"),
            None
        );
    }

    #[test]
    fn values_are_readable_json() {
        let stored = StoredInstance {
            instance: Instance {
                app: "calc".into(),
                service: "calc.Calculator".into(),
                version: "1.2.0".into(),
                endpoint: "127.0.0.1:9000".into(),
                weight: 100,
                tags: Default::default(),
                tls: false,
            },
            node: "node-1".into(),
            session: 7,
        };
        let json = serde_json::to_string(&stored).unwrap();
        assert!(json.contains("\"endpoint\":\"127.0.0.1:9000\""), "{json}");
        let back: StoredInstance = serde_json::from_str(&json).unwrap();
        assert_eq!(back.instance, stored.instance);
        assert_eq!((back.node.as_str(), back.session), ("node-1", 7));
        // App definitions are the config file's fields; absent lists stay absent.
        let app: StoredApp = serde_json::from_str(r#"{"secret_hash":"h"}"#).unwrap();
        assert_eq!((app.provide, app.consume), (None, None));
        // Entries from before roles existed have none; roles travel when there are some.
        assert!(app.roles.is_empty());
        let admin = AppConfig::new("h").roles(["admin"]);
        let json = serde_json::to_string(&StoredApp::of(&admin)).unwrap();
        assert_eq!(json, r#"{"secret_hash":"h","roles":["admin"]}"#);
        let back: StoredApp = serde_json::from_str(&json).unwrap();
        assert_eq!(back.roles, ["admin"]);
    }

    #[test]
    fn rules_round_trip_as_json() {
        use stardust::traffic::{Fallback, Fault, FaultAction, Match, Route, RulesEdit, Weighted};
        use std::collections::BTreeMap;
        let matches = Match {
            callers: vec!["web".into()],
            methods: vec!["add".into()],
            metadata: BTreeMap::from([("x-env".to_owned(), "*".to_owned())]),
        };
        let edits = [
            RulesEdit::SetRoute {
                service: "calc.Calculator".into(),
                route: Route {
                    name: "canary".into(),
                    matches: matches.clone(),
                    to: vec![
                        Weighted {
                            weight: 95,
                            subset: "^1.4".into(),
                        },
                        Weighted {
                            weight: 5,
                            subset: "tag:canary=yes".into(),
                        },
                    ],
                    fallback: Fallback::Fail,
                },
            },
            RulesEdit::SetFault {
                service: "calc.Calculator".into(),
                fault: Fault {
                    name: "slow".into(),
                    matches,
                    percent: 12.5,
                    action: FaultAction::Delay { delay_ms: 250 },
                },
            },
            RulesEdit::SetFault {
                service: "other.Svc".into(),
                fault: Fault {
                    name: "broken".into(),
                    matches: Match::default(),
                    percent: 100.0,
                    action: FaultAction::Abort {
                        error: "Overloaded".into(),
                    },
                },
            },
        ];
        let mut rules = Rules::default();
        for edit in &edits {
            rules = rules.edited(edit).unwrap();
        }
        let json = encode_rules(&rules);
        let text = std::str::from_utf8(&json).unwrap();
        // The fault's action sits flat in the fault, tagged by `kind`.
        assert!(text.contains(r#""kind":"delay","delay_ms":250"#), "{text}");
        assert!(
            text.contains(r#""kind":"abort","error":"Overloaded""#),
            "{text}"
        );
        assert_eq!(decode_rules(&json), Ok(rules));
        assert_eq!(decode_rules(b"{}"), Ok(Rules::default()));
        // Not JSON, or rules that cannot be applied: refused, saying why.
        assert!(decode_rules(b"not json").is_err());
        let bad = text.replace("12.5", "120");
        let err = decode_rules(bad.as_bytes()).unwrap_err();
        assert!(err.contains("percent"), "{err}");
    }
}
