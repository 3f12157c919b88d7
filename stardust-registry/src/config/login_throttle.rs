//! Login throttling's knobs (`[login_throttle]`).

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, parse_duration};

/// Login throttling: checking a secret is deliberately slow (argon2id), so the registry limits
/// who may make it check one.
///
/// * **Failed logins back off**, counted per app, per source address and per app-and-address:
///   the first [`free_failures`](Self::free_failures) cost nothing; the failure that uses them
///   up blocks further logins for [`backoff_min`](Self::backoff_min), and every further one
///   doubles the wait, up to [`backoff_max`](Self::backoff_max). While free failures remain,
///   only as many logins as remain are checked at once; once they are used up, one at a time.
///   A successful login clears the failures of its app-and-address, and of its app unless it
///   came from a known address (below); an address's own failures are only forgotten,
///   [`forget_after`](Self::forget_after) after the last one.
///   Unknown app names are counted exactly like real ones, so throttling reveals nothing about
///   which apps exist. (IPv6 addresses count by their /64 prefix.)
/// * **Known addresses keep working.** An address an app logged in from (or had a session
///   from) within [`forget_after`](Self::forget_after) is not held back by that app's failures
///   from elsewhere, nor by its own address's failures for other apps: a flood of bad logins
///   for an app cannot lock its running instances out. Its own app-and-address failures still
///   count.
/// * **Login attempts per address are rate limited** (a token bucket of
///   [`attempt_burst`](Self::attempt_burst), refilled at
///   [`attempts_per_second`](Self::attempts_per_second)), so even right secrets cannot keep the
///   hasher busy.
/// * **Checking is bounded**: at most [`max_concurrent_hashes`](Self::max_concurrent_hashes)
///   secrets are checked at once (on the blocking thread pool, so heartbeats and discovery never
///   wait behind them), at most [`max_queued`](Self::max_queued) logins wait for a check, none
///   longer than [`queue_timeout`](Self::queue_timeout).
///
/// A login refused by any of these gets `RegistryError::Throttled` at once, without its secret
/// being checked, with the time after which a retry may succeed. Refusals that are not a
/// backoff (checks in progress, a busy registry) suggest retrying after `backoff_min`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginThrottle {
    /// Failed logins (per app, per address, per app-and-address) before backoff starts.
    /// Default 5.
    pub free_failures: u32,
    /// The backoff after the failure that uses up the free ones; each further failure doubles
    /// it. Default 1 s.
    pub backoff_min: Duration,
    /// The longest backoff. Default 5 min.
    pub backoff_max: Duration,
    /// Failures are forgotten this long after the last one; an address an app logged in from is
    /// remembered as known for as long. At least `backoff_max`. Default 1 h.
    pub forget_after: Duration,
    /// Logins one source address may start at once (the token bucket's size). Default 20.
    pub attempt_burst: u32,
    /// Logins one source address may start per second once its burst is used. Default 5.
    pub attempts_per_second: f64,
    /// Entries each table (apps, addresses, app-and-address pairs, known addresses, rate
    /// buckets) may hold; when one is full, expired entries go, then the oldest. Default 10 000.
    pub max_tracked: usize,
    /// Secrets checked at once (each check takes a core and about 19 MiB for tens of
    /// milliseconds). `None` (the default): half the CPUs, at least 1, so the async worker
    /// threads serving heartbeats and discovery keep CPU.
    pub max_concurrent_hashes: Option<usize>,
    /// Logins that may wait for a check; more are refused at once. Default 64.
    pub max_queued: usize,
    /// Longest a login waits for a check before it is refused. Default 2 s.
    pub queue_timeout: Duration,
}

impl Default for LoginThrottle {
    fn default() -> LoginThrottle {
        LoginThrottle {
            free_failures: 5,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            forget_after: Duration::from_secs(3600),
            attempt_burst: 20,
            attempts_per_second: 5.0,
            max_tracked: 10_000,
            max_concurrent_hashes: None,
            max_queued: 64,
            queue_timeout: Duration::from_secs(2),
        }
    }
}

impl LoginThrottle {
    /// The number of secrets checked at once: [`max_concurrent_hashes`](Self::max_concurrent_hashes),
    /// or half the CPUs (at least 1).
    pub fn concurrent_hashes(&self) -> usize {
        self.max_concurrent_hashes.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
            (cpus / 2).max(1)
        })
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: &str| {
            Err(ConfigError {
                message: format!("login_throttle.{m}"),
            })
        };
        if self.backoff_min.is_zero() {
            return err("backoff_min must be longer than zero");
        }
        if self.backoff_max < self.backoff_min {
            return err("backoff_max must be at least backoff_min");
        }
        if self.forget_after < self.backoff_max {
            return err("forget_after must be at least backoff_max");
        }
        if self.attempt_burst == 0 {
            return err("attempt_burst must be at least 1");
        }
        if !(self.attempts_per_second.is_finite() && self.attempts_per_second > 0.0) {
            return err("attempts_per_second must be a number above zero");
        }
        if self.max_tracked == 0 {
            return err("max_tracked must be at least 1");
        }
        if self.max_concurrent_hashes == Some(0) {
            return err("max_concurrent_hashes must be at least 1");
        }
        if self.queue_timeout.is_zero() {
            return err("queue_timeout must be longer than zero");
        }
        Ok(())
    }
}

/// `[login_throttle]` as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawThrottle {
    free_failures: Option<u32>,
    backoff_min: Option<String>,
    backoff_max: Option<String>,
    forget_after: Option<String>,
    attempt_burst: Option<u32>,
    attempts_per_second: Option<Number>,
    max_tracked: Option<usize>,
    max_concurrent_hashes: Option<usize>,
    max_queued: Option<usize>,
    queue_timeout: Option<String>,
}

/// A TOML number: `5` and `5.0` both mean five.
#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Int(i64),
    Float(f64),
}

impl RawThrottle {
    pub(super) fn apply(self, t: &mut LoginThrottle) -> Result<(), ConfigError> {
        let duration = |field: &str, text: Option<String>, into: &mut Duration| {
            if let Some(text) = text {
                *into = parse_duration(&format!("login_throttle.{field}"), &text)?;
            }
            Ok::<(), ConfigError>(())
        };
        duration("backoff_min", self.backoff_min, &mut t.backoff_min)?;
        duration("backoff_max", self.backoff_max, &mut t.backoff_max)?;
        duration("forget_after", self.forget_after, &mut t.forget_after)?;
        duration("queue_timeout", self.queue_timeout, &mut t.queue_timeout)?;
        if let Some(n) = self.free_failures {
            t.free_failures = n;
        }
        if let Some(n) = self.attempt_burst {
            t.attempt_burst = n;
        }
        if let Some(n) = self.attempts_per_second {
            t.attempts_per_second = match n {
                Number::Int(i) => i as f64,
                Number::Float(f) => f,
            };
        }
        if let Some(n) = self.max_tracked {
            t.max_tracked = n;
        }
        if self.max_concurrent_hashes.is_some() {
            t.max_concurrent_hashes = self.max_concurrent_hashes;
        }
        if let Some(n) = self.max_queued {
            t.max_queued = n;
        }
        Ok(())
    }
}
