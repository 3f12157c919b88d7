//! Minimal flag parsing for the examples (`--registry ADDR`, `--app ID`), dependency-free.

/// Where the example process finds the registry and who it logs in as.
#[derive(Debug)]
pub struct Args {
    /// Registry address (default `127.0.0.1:7600`).
    pub registry: String,
    /// Application id.
    pub app: String,
    /// Application secret, from `STARDUST_SECRET` (default: `<app>-dev-secret`, which a
    /// dev-mode registry accepts on first login).
    pub secret: String,
}

impl Args {
    /// Parses the process arguments; exits with a usage message on anything unknown.
    pub fn parse(default_app: &str) -> Args {
        let mut app = default_app.to_owned();
        let mut registry = "127.0.0.1:7600".to_owned();
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            match (flag.as_str(), it.next()) {
                ("--registry", Some(v)) => registry = v,
                ("--app", Some(v)) => app = v,
                (other, _) => {
                    eprintln!(
                        "unknown or incomplete option `{other}`; options: --registry ADDR, --app ID \
                         (secret in STARDUST_SECRET)"
                    );
                    std::process::exit(2);
                }
            }
        }
        let secret =
            std::env::var("STARDUST_SECRET").unwrap_or_else(|_| format!("{app}-dev-secret"));
        Args {
            registry,
            app,
            secret,
        }
    }
}
