//! `stardust-registry route|fault set|list|rm`: the built binary against a registry embedded in
//! the test, on loopback.

#[path = "common/binary.rs"]
mod binary;

use binary::{BOUND, run, strings, text};

use std::process::Output;

use stardust::traffic::{Fallback, Match, Route, Weighted};
use stardust_registry::{AppConfig, Config, RegistryNode};

/// A registry on 127.0.0.1:0 with `ops` (admin) and `web` (no role), and their secret files.
struct Registry {
    runtime: tokio::runtime::Runtime,
    node: Option<RegistryNode>,
    addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::dev()
            .with_dev(false)
            .with_key_file(dir.path().join("keys.toml"))
            .with_app(
                "ops",
                AppConfig::with_secret("ops-secret")
                    .unwrap()
                    .roles(["admin"]),
            )
            .with_app("web", AppConfig::with_secret("web-secret").unwrap());
        for (app, secret) in [("ops", "ops-secret\n"), ("web", "  web-secret \n")] {
            let path = dir.path().join(format!("{app}.secret"));
            std::fs::write(&path, secret).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let node = runtime.block_on(async {
            tokio::time::timeout(
                BOUND,
                RegistryNode::builder().config(config).bind("127.0.0.1:0"),
            )
            .await
            .expect("the registry starts in time")
            .expect("the registry starts")
        });
        let addr = node.local_addr().to_string();
        Registry {
            runtime,
            node: Some(node),
            addr,
            dir,
        }
    }

    /// Runs `args` as `app`, against this registry.
    fn cli(&self, app: &str, args: &[&str]) -> Output {
        let mut all = strings(args);
        let secret = self.dir.path().join(format!("{app}.secret"));
        all.extend(strings(&[
            "--registry",
            &self.addr,
            "--app",
            app,
            "--secret-file",
            secret.to_str().unwrap(),
        ]));
        run(&all)
    }

    /// Runs `args` as `ops`, expecting success; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli("ops", args);
        assert!(
            out.status.success(),
            "`{}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `route|fault list --output json`, parsed.
    fn json(&self, kind: &str) -> serde_json::Value {
        let out = self.ok(&[kind, "list", "--output", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            self.runtime.block_on(async {
                let _ = tokio::time::timeout(BOUND, node.shutdown()).await;
            });
        }
    }
}

#[test]
fn rules_round_trip_through_flags_toml_files_and_json() {
    let reg = Registry::start();
    // A route from flags.
    let out = reg.ok(&[
        "route",
        "set",
        "calc.Calculator",
        "canary",
        "--to",
        "95:^1.4",
        "--to",
        "5:tag:canary",
        "--caller",
        "web",
        "--method",
        "add",
        "--method",
        "div",
        "--meta",
        "x-canary=*",
        "--fallback",
        "fail",
    ]);
    assert_eq!(out.trim(), "revision 1");

    // Listed as TOML: comments naming the service and the revision, then the route itself.
    let listed = reg.ok(&["route", "list", "calc.Calculator"]);
    assert!(
        listed.contains("# service calc.Calculator") && listed.contains("rules revision 1"),
        "{listed}"
    );
    let route: Route = toml::from_str(&listed).unwrap_or_else(|e| panic!("{e}:\n{listed}"));
    assert_eq!(
        route,
        Route {
            name: "canary".into(),
            matches: Match {
                callers: vec!["web".into()],
                methods: vec!["add".into(), "div".into()],
                metadata: [("x-canary".to_owned(), "*".to_owned())].into(),
            },
            to: vec![
                Weighted {
                    weight: 95,
                    subset: "^1.4".into()
                },
                Weighted {
                    weight: 5,
                    subset: "tag:canary".into()
                },
            ],
            fallback: Fallback::Fail,
        }
    );

    // The listing fed back, as it is, for another service.
    let file = reg.path("canary.toml");
    std::fs::write(&file, &listed).unwrap();
    let out = reg.ok(&["route", "set", "calc.Other", "--file", &file]);
    assert_eq!(out.trim(), "revision 2");

    // A fault from flags (the delay as a duration), and back through a file.
    let out = reg.ok(&[
        "fault",
        "set",
        "calc.Calculator",
        "slow",
        "--percent",
        "12.5",
        "--delay",
        "250ms",
        "--meta",
        "x-drill=yes",
    ]);
    assert_eq!(out.trim(), "revision 3");
    let out = reg.ok(&[
        "fault",
        "set",
        "calc.Calculator",
        "drill",
        "--percent",
        "50",
        "--abort",
        "Overloaded",
    ]);
    assert_eq!(out.trim(), "revision 4");
    let listed = reg.ok(&["fault", "list", "calc.Calculator"]);
    assert!(listed.contains("delay_ms = 250"), "{listed}");
    assert!(listed.contains("percent = 12.5"), "{listed}");
    // Two faults: two blocks, each what --file takes.
    let blocks: Vec<&str> = listed.split("\n\n# ").collect();
    assert_eq!(blocks.len(), 2, "{listed}");
    for (i, block) in blocks.iter().enumerate() {
        let file = reg.path(&format!("fault{i}.toml"));
        let block = if i == 0 {
            block.to_string()
        } else {
            format!("# {block}")
        };
        std::fs::write(&file, block).unwrap();
        let out = reg.ok(&["fault", "set", "calc.Other", "--file", &file]);
        assert_eq!(out.trim(), format!("revision {}", 5 + i));
    }

    // JSON: both services carry the same rules, in the same order; each list shows one kind.
    let routes = reg.json("route");
    assert_eq!(routes["revision"], 6);
    let services = &routes["services"];
    assert_eq!(
        services["calc.Calculator"]["routes"],
        services["calc.Other"]["routes"]
    );
    assert_eq!(services["calc.Calculator"]["routes"][0]["name"], "canary");
    assert!(
        services["calc.Calculator"].get("faults").is_none(),
        "{routes}"
    );
    let faults = reg.json("fault");
    let services = &faults["services"];
    assert_eq!(
        services["calc.Calculator"]["faults"],
        services["calc.Other"]["faults"]
    );
    assert_eq!(services["calc.Other"]["faults"][0]["delay_ms"], 250);
    assert_eq!(services["calc.Other"]["faults"][1]["error"], "Overloaded");
    assert!(services["calc.Other"].get("routes").is_none(), "{faults}");

    // rm: gone from the lists; the other kind stays.
    assert_eq!(
        reg.ok(&["route", "rm", "calc.Calculator", "canary"]).trim(),
        "revision 7"
    );
    let listed = reg.ok(&["route", "list", "calc.Calculator"]);
    assert!(
        listed.starts_with("# no routes for `calc.Calculator`"),
        "{listed}"
    );
    let routes = reg.json("route");
    assert!(routes["services"].get("calc.Calculator").is_none());
    assert!(routes["services"].get("calc.Other").is_some());
    assert_eq!(
        reg.ok(&["fault", "rm", "calc.Calculator", "slow", "--output", "json"])
            .trim(),
        r#"{"revision":8}"#
    );
    let faults = reg.json("fault");
    assert_eq!(
        faults["services"]["calc.Calculator"]["faults"][0]["name"],
        "drill"
    );
    assert_eq!(
        faults["services"]["calc.Calculator"]["faults"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Removing what is not there: the registry says so.
    let out = reg.cli("ops", &["route", "rm", "calc.Calculator", "canary"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no route named `canary`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_stale_if_revision_is_refused_and_changes_nothing() {
    let reg = Registry::start();
    reg.ok(&["route", "set", "calc.Calculator", "a", "--to", "1:^1"]);
    let before = reg.json("route");
    assert_eq!(before["revision"], 1);

    let out = reg.cli(
        "ops",
        &[
            "route",
            "set",
            "calc.Calculator",
            "b",
            "--to",
            "1:^2",
            "--if-revision",
            "0",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("revision 1, not 0"), "{err}");
    assert!(text(&out.stdout).is_empty());
    let out = reg.cli(
        "ops",
        &["route", "rm", "calc.Calculator", "a", "--if-revision", "7"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(reg.json("route"), before);

    // At the current revision it goes through.
    let out = reg.ok(&[
        "fault",
        "set",
        "calc.Calculator",
        "f",
        "--percent",
        "1",
        "--abort",
        "Internal",
        "--if-revision",
        "1",
    ]);
    assert_eq!(out.trim(), "revision 2");
}

#[test]
fn an_app_without_the_admin_role_may_list_but_not_change() {
    let reg = Registry::start();
    reg.ok(&["route", "set", "calc.Calculator", "a", "--to", "1:^1"]);
    for args in [
        &["route", "set", "calc.Calculator", "b", "--to", "1:^2"][..],
        &["route", "rm", "calc.Calculator", "a"],
        &[
            "fault",
            "set",
            "calc.Calculator",
            "f",
            "--percent",
            "5",
            "--delay",
            "1s",
        ],
    ] {
        let out = reg.cli("web", args);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains("permission denied"), "{err}");
        assert!(!err.contains("web-secret"), "{err}");
    }
    let out = reg.cli("web", &["route", "list", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["revision"], 1);
    assert_eq!(
        listed["services"]["calc.Calculator"]["routes"][0]["name"],
        "a"
    );

    // A wrong secret: refused at login, exit 1, the secret not echoed.
    let wrong = reg.path("wrong.secret");
    std::fs::write(&wrong, "not-the-secret\n").unwrap();
    let out = run(&strings(&[
        "route",
        "list",
        "--registry",
        &reg.addr,
        "--app",
        "ops",
        "--secret-file",
        &wrong,
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("refused the login"), "{err}");
    assert!(!err.contains("not-the-secret"), "{err}");
}

#[test]
fn a_bad_rule_is_refused_naming_the_field_before_anything_is_sent() {
    let reg = Registry::start();
    let out = reg.cli(
        "ops",
        &[
            "fault",
            "set",
            "calc.Calculator",
            "f",
            "--percent",
            "120",
            "--abort",
            "Overloaded",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("faults[0].percent") && err.contains("120"),
        "{err}"
    );

    // The same from a file.
    let file = reg.path("bad.toml");
    std::fs::write(
        &file,
        "name = \"f\"\npercent = 120\nkind = \"delay\"\ndelay_ms = 5\n",
    )
    .unwrap();
    let out = reg.cli("ops", &["fault", "set", "calc.Calculator", "--file", &file]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("percent"),
        "{}",
        text(&out.stderr)
    );

    // A bad subset, and a typo in a file's keys.
    let out = reg.cli(
        "ops",
        &["route", "set", "calc.Calculator", "r", "--to", "1:^x"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("to[0].subset"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(
        &file,
        "name = \"r\"\nto = [{ weight = 1, subset = \"*\" }]\nfalback = \"fail\"\n",
    )
    .unwrap();
    let out = reg.cli("ops", &["route", "set", "calc.Calculator", "--file", &file]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown key `falback`"),
        "{}",
        text(&out.stderr)
    );

    // Usage errors: clap's exit code 2.
    let out = reg.cli(
        "ops",
        &["fault", "set", "calc.Calculator", "f", "--percent", "5"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--delay"),
        "{}",
        text(&out.stderr)
    );
    let out = reg.cli(
        "ops",
        &["route", "set", "calc.Calculator", "r", "--to", "95"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("WEIGHT:SUBSET"),
        "{}",
        text(&out.stderr)
    );

    // Nothing reached the registry.
    assert_eq!(reg.json("fault")["revision"], 0);
}

#[test]
fn an_unreachable_registry_exits_1() {
    let reg = Registry::start();
    // A loopback port nobody listens on any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let secret = reg.path("ops.secret");
    let out = run(&strings(&[
        "route",
        "list",
        "--registry",
        &addr,
        "--app",
        "ops",
        "--secret-file",
        &secret,
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach the registry"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn help_explains_every_rules_command_and_flag() {
    let help = |args: &[&str]| {
        let out = run(&strings(args));
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let top = help(&["--help"]);
    for word in ["route", "fault"] {
        assert!(top.contains(word), "`{word}` missing from:\n{top}");
    }
    assert!(help(&["agent", "--help"]).contains("--no-faults"));
    for kind in ["route", "fault"] {
        let h = help(&[kind, "--help"]);
        for word in ["set", "list", "rm", "admin"] {
            assert!(
                h.contains(word),
                "`{word}` missing from `{kind} --help`:\n{h}"
            );
        }
        for command in ["set", "list", "rm"] {
            let h = help(&[kind, command, "--help"]);
            for flag in [
                "--registry <ADDR>",
                "--app <NAME>",
                "--secret-file <FILE>",
                "--output <OUTPUT>",
                "Examples:",
            ] {
                assert!(
                    h.contains(flag),
                    "`{flag}` missing from `{kind} {command} --help`:\n{h}"
                );
            }
        }
    }
    let h = help(&["route", "set", "--help"]);
    for flag in [
        "--to <WEIGHT:SUBSET>",
        "--caller <APP>",
        "--method <METHOD>",
        "--meta <KEY=VALUE>",
        "--fallback <all|fail>",
        "--file <ROUTE.toml>",
        "--if-revision <N>",
        "tag:NAME=VALUE",
    ] {
        assert!(
            h.contains(flag),
            "`{flag}` missing from `route set --help`:\n{h}"
        );
    }
    let h = help(&["fault", "set", "--help"]);
    for flag in [
        "--percent <P>",
        "--delay <DURATION>",
        "--abort <KIND>",
        "--file <FAULT.toml>",
        "--if-revision <N>",
        "kind = \"abort\"",
    ] {
        assert!(
            h.contains(flag),
            "`{flag}` missing from `fault set --help`:\n{h}"
        );
    }
}
