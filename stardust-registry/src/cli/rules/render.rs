//! Rules as the CLI shows and reads them: TOML blocks, one per rule, that `--file` takes back.

use std::path::Path;

use stardust::traffic::Rules;

use super::{Failure, Kind};

/// `rules` with only the rules of `kind`, of `service` if given (services left without any
/// dropped).
pub(super) fn only(mut rules: Rules, kind: Kind, service: Option<&str>) -> Rules {
    rules.services.retain(|name, r| {
        match kind {
            Kind::Route => r.faults.clear(),
            Kind::Fault => r.routes.clear(),
        }
        service.is_none_or(|s| s == name) && !(r.routes.is_empty() && r.faults.is_empty())
    });
    rules
}

/// The rules as TOML blocks, one per rule, each what `set --file` takes, under comments.
pub(super) fn as_toml(rules: &Rules, kind: Kind, service: Option<&str>) -> Result<String, Failure> {
    let word = kind.word();
    let mut out = String::new();
    if rules.services.is_empty() {
        let whose = service.map_or_else(|| "any service".to_owned(), |s| format!("`{s}`"));
        out.push_str(&format!(
            "# no {word}s for {whose} (rules revision {})\n",
            rules.revision
        ));
        return Ok(out);
    }
    for (name, service_rules) in &rules.services {
        let items: Result<Vec<String>, _> = match kind {
            Kind::Route => service_rules
                .routes
                .iter()
                .map(|r| rule_toml(r, ROUTE_KEYS))
                .collect(),
            Kind::Fault => service_rules
                .faults
                .iter()
                .map(|f| rule_toml(f, FAULT_KEYS))
                .collect(),
        };
        let items =
            items.map_err(|e| Failure::Registry(format!("cannot print a {word} as TOML: {e}")))?;
        for (i, item) in items.iter().enumerate() {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!(
                "# service {name}, {word} {} of {}, rules revision {}\n",
                i + 1,
                items.len(),
                rules.revision,
            ));
            out.push_str(&format!(
                "# stardust-registry {word} set {name} --file FILE --if-revision {}\n",
                rules.revision
            ));
            out.push_str(item);
        }
    }
    Ok(out)
}

/// One rule as TOML: its fields in `order` (then any other), values inline (`to = [{ weight
/// = 95, subset = "^1.4" }]`), and its `[match]` table last, left out when empty.
pub(super) fn rule_toml<T: serde::Serialize>(
    rule: &T,
    order: &[&str],
) -> Result<String, toml::ser::Error> {
    let value = toml::Value::try_from(rule)?;
    let Some(table) = value.as_table() else {
        return toml::to_string(rule);
    };
    let mut out = String::new();
    let rest = table
        .keys()
        .map(String::as_str)
        .filter(|k| !order.contains(k));
    for key in order.iter().copied().chain(rest) {
        match table.get(key) {
            // Every call: nothing to print.
            Some(toml::Value::Table(m)) if key == "match" && m.is_empty() => {}
            Some(toml::Value::Table(m)) if key == "match" => {
                out.push_str("\n[match]\n");
                for (k, v) in m {
                    out.push_str(&format!("{k} = {v}\n"));
                }
            }
            Some(v) => out.push_str(&format!("{key} = {v}\n")),
            None => {}
        }
    }
    Ok(out)
}

/// The keys a route file may hold (top level, then under `[match]`).
pub(super) const ROUTE_KEYS: &[&str] = &["name", "to", "fallback", "match"];
/// The keys a fault file may hold.
pub(super) const FAULT_KEYS: &[&str] = &["name", "percent", "kind", "delay_ms", "error", "match"];
pub(super) const MATCH_KEYS: &[&str] = &["callers", "methods", "metadata"];

/// One rule from a TOML file; a key it does not know (a typo) is an error, not ignored.
pub(super) fn read_rule<T: serde::de::DeserializeOwned>(
    path: &Path,
    keys: &[&str],
) -> Result<T, Failure> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read {shown}: {e}")))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| Failure::Usage(format!("{shown} is not valid TOML: {e}")))?;
    let unknown = |key: &str, known: &[&str]| {
        Failure::Usage(format!(
            "{shown}: unknown key `{key}` (a rule has {})",
            known.join(", ")
        ))
    };
    for (key, value) in &table {
        if !keys.contains(&key.as_str()) {
            return Err(unknown(key, keys));
        }
        if key == "match"
            && let Some(m) = value.as_table()
            && let Some(bad) = m.keys().find(|k| !MATCH_KEYS.contains(&k.as_str()))
        {
            return Err(unknown(&format!("match.{bad}"), MATCH_KEYS));
        }
    }
    toml::from_str(&text).map_err(|e| Failure::Usage(format!("{shown}: {e}")))
}
