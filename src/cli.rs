//! Minimal flag parsing for the examples (`--registry ADDR`, `--app ID`, `--forever`),
//! dependency-free.

/// Where the example process finds the registry and who it logs in as.
#[derive(Debug)]
pub struct Args {
    /// Registry addresses, tried in turn (default `127.0.0.1:7600`). `--registry` may be
    /// repeated or given a comma-separated list: the nodes of a registry sharing one etcd.
    pub registries: Vec<String>,
    /// Application id.
    pub app: String,
    /// Application secret, from `STARDUST_SECRET` (default: `<app>-dev-secret`, which a
    /// dev-mode registry accepts on first login).
    pub secret: String,
    /// `--forever`: the consumer keeps calling (twice a second) until Ctrl-C.
    pub forever: bool,
}

impl Args {
    /// Parses the process arguments; exits with a usage message on anything unknown.
    pub fn parse(default_app: &str) -> Args {
        let mut app = default_app.to_owned();
        let mut registries = Vec::new();
        let mut forever = false;
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--forever" {
                forever = true;
                continue;
            }
            match (flag.as_str(), it.next()) {
                ("--registry", Some(v)) => registries.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned),
                ),
                ("--app", Some(v)) => app = v,
                (other, _) => {
                    eprintln!(
                        "unknown or incomplete option `{other}`; options: --registry ADDR[,ADDR...] \
                         (repeatable), --app ID, --forever (secret in STARDUST_SECRET)"
                    );
                    std::process::exit(2);
                }
            }
        }
        if registries.is_empty() {
            registries.push("127.0.0.1:7600".to_owned());
        }
        let secret =
            std::env::var("STARDUST_SECRET").unwrap_or_else(|_| format!("{app}-dev-secret"));
        Args {
            registries,
            app,
            secret,
            forever,
        }
    }

    /// A [`Stardust`](stardust::Stardust) builder with every registry address and the app.
    pub fn stardust(&self) -> stardust::StardustBuilder {
        let mut builder = stardust::Stardust::builder().app(&self.app, &self.secret);
        for addr in &self.registries {
            builder = builder.registry(addr);
        }
        builder
    }
}
