//! Login throttling: decides, before any secret is checked, whether a login may be checked at
//! all (see [`LoginThrottle`] for the policy).
//!
//! Pure bookkeeping, no clock of its own: every method takes the current [`Instant`], so the
//! tests below drive time explicitly and never sleep. The caller keeps it behind a short lock
//! and never holds that lock across an `await`.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::LoginThrottle;

/// What a failure count belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One app, from one source address.
    Pair,
    /// One app, from anywhere.
    App,
    /// One source address, for any app.
    Source,
}

/// Why a login is refused before its secret is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Too many failed logins in this scope: a backoff is running.
    Failed(Scope),
    /// As many logins of this scope are being checked as its remaining free failures allow.
    InProgress(Scope),
    /// The source address started too many logins (its token bucket is empty).
    Rate,
}

/// A refused login: why, and when a retry may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) reason: Reason,
    pub(crate) retry_after: Duration,
    /// Whether to log this refusal: the first rate refusal of a source in a while. Backoffs are
    /// logged when they start ([`Throttle::failed`]), never per refused attempt.
    pub(crate) log: bool,
}

impl Refusal {
    /// The text sent to the client: the reason and when to retry (never anything secret).
    pub(crate) fn message(&self) -> String {
        let why = match self.reason {
            Reason::Failed(Scope::Pair) => "too many failed logins for this app from this address",
            Reason::Failed(Scope::App) => "too many failed logins for this app",
            Reason::Failed(Scope::Source) => "too many failed logins from this address",
            Reason::InProgress(Scope::Pair) => {
                "too many logins for this app from this address are being checked"
            }
            Reason::InProgress(Scope::App) => "too many logins for this app are being checked",
            Reason::InProgress(Scope::Source) => {
                "too many logins from this address are being checked"
            }
            Reason::Rate => "too many logins from this address",
        };
        format!("{why}; retry in {}", seconds(self.retry_after))
    }
}

/// `3.2s`, rounded up to a tenth so that retrying after it is never too early.
pub(crate) fn seconds(d: Duration) -> String {
    let tenths = d.as_millis().div_ceil(100);
    format!("{}.{}s", tenths / 10, tenths % 10)
}

/// A backoff that just started (to be logged once, for its whole window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) scope: Scope,
    /// Failures counted so far in this scope.
    pub(crate) failures: u32,
    pub(crate) backoff: Duration,
    /// Logins refused during the previous window of this scope.
    pub(crate) refused_before: u64,
}

/// An admitted login: holds its place in the in-progress counts until it is settled with
/// [`Throttle::succeeded`], [`Throttle::failed`] or [`Throttle::abandoned`].
#[derive(Debug)]
pub(crate) struct Ticket {
    app: String,
    source: IpAddr,
    /// The app logged in from this address recently: only the pair's count applies.
    known: bool,
}

impl Ticket {
    /// The app name the login was counted under.
    pub(crate) fn app(&self) -> &str {
        &self.app
    }

    /// The source the login was counted under (see [`source_of`]).
    pub(crate) fn source(&self) -> IpAddr {
        self.source
    }
}

/// The address failures and rates are counted by: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its
/// /64 prefix (one host usually has a whole /64).
pub(crate) fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Failures of one scope.
#[derive(Debug)]
struct Failures {
    /// Failed logins since the last success (or since they were forgotten).
    failures: u32,
    /// Logins admitted and not settled yet.
    pending: u32,
    /// The last failure (or when the entry was made).
    last: Instant,
    /// The end of the current backoff (in the past when none runs).
    blocked_until: Instant,
    /// Logins refused since the current backoff was logged.
    refused: u64,
}

impl Failures {
    fn new(now: Instant) -> Failures {
        Failures {
            failures: 0,
            pending: 0,
            last: now,
            blocked_until: now,
            refused: 0,
        }
    }

    /// Forgets the failures once the last one is `forget_after` old and no backoff runs.
    fn forget_if_old(&mut self, now: Instant, cfg: &LoginThrottle) {
        if self.failures > 0
            && now >= self.blocked_until
            && now.saturating_duration_since(self.last) >= cfg.forget_after
        {
            self.failures = 0;
            self.refused = 0;
        }
    }

    /// Whether one more login of this scope may be checked now; if not, why and for how long.
    fn verdict(&self, scope: Scope, now: Instant, cfg: &LoginThrottle) -> Option<Refusal> {
        if now < self.blocked_until {
            return Some(Refusal {
                reason: Reason::Failed(scope),
                retry_after: self.blocked_until - now,
                log: false,
            });
        }
        // Logins in progress may all fail: only as many run as there are free failures left
        // (once they are used up, one at a time), so a burst cannot outrun the count.
        let allowed = cfg.free_failures.saturating_sub(self.failures).max(1);
        if self.pending >= allowed {
            return Some(Refusal {
                reason: Reason::InProgress(scope),
                retry_after: cfg.backoff_min,
                log: false,
            });
        }
        None
    }

    /// Counts a failure; returns the backoff it starts, if any.
    fn fail(&mut self, scope: Scope, now: Instant, cfg: &LoginThrottle) -> Option<Window> {
        self.pending = self.pending.saturating_sub(1);
        self.forget_if_old(now, cfg);
        self.failures = self.failures.saturating_add(1);
        self.last = now;
        let backoff = backoff(cfg, self.failures)?;
        self.blocked_until = self.blocked_until.max(now + backoff);
        let window = Window {
            scope,
            failures: self.failures,
            backoff,
            refused_before: self.refused,
        };
        self.refused = 0;
        Some(window)
    }

    fn succeed(&mut self, now: Instant) {
        self.pending = self.pending.saturating_sub(1);
        self.failures = 0;
        self.refused = 0;
        self.blocked_until = self.blocked_until.min(now);
    }
}

/// The backoff after failure number `failures` (1-based): none while free failures remain, then
/// `backoff_min`, doubling with every further failure, at most `backoff_max`.
pub(crate) fn backoff(cfg: &LoginThrottle, failures: u32) -> Option<Duration> {
    if failures < cfg.free_failures.max(1) {
        return None;
    }
    let doublings = failures - cfg.free_failures.max(1);
    let factor = 1u32 << doublings.min(31);
    Some(cfg.backoff_min.saturating_mul(factor).min(cfg.backoff_max))
}

/// A token bucket of login attempts for one source address.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// Attempts refused since the last log line about this bucket.
    refused: u64,
    logged: Option<Instant>,
}

/// A source address is logged as rate limited at most this often.
const RATE_LOG_EVERY: Duration = Duration::from_secs(60);

impl Bucket {
    fn refill(&mut self, now: Instant, cfg: &LoginThrottle) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * cfg.attempts_per_second).min(f64::from(cfg.attempt_burst));
        self.updated = self.updated.max(now);
    }

    /// Time until one token is there (zero if one is).
    fn wait(&self, cfg: &LoginThrottle) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64((1.0 - self.tokens) / cfg.attempts_per_second)
                .unwrap_or(Duration::MAX)
        }
    }
}

/// Entries a [`Table`] may drop.
trait Tracked {
    /// Nothing to remember any more (dropping it changes no decision).
    fn idle(&self, now: Instant, cfg: &LoginThrottle) -> bool;
    /// Never evicted (a login holds a place in it).
    fn pinned(&self) -> bool {
        false
    }
    /// Eviction order when the table is full: lowest first.
    fn rank(&self, now: Instant) -> (bool, Instant);
}

impl Tracked for Failures {
    fn idle(&self, now: Instant, cfg: &LoginThrottle) -> bool {
        self.pending == 0
            && now >= self.blocked_until
            && (self.failures == 0 || now.saturating_duration_since(self.last) >= cfg.forget_after)
    }
    fn pinned(&self) -> bool {
        self.pending > 0
    }
    fn rank(&self, now: Instant) -> (bool, Instant) {
        // Running backoffs go last: evicting them is what a flood of new names would want.
        (now < self.blocked_until, self.last)
    }
}

impl Tracked for Bucket {
    fn idle(&self, now: Instant, cfg: &LoginThrottle) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * cfg.attempts_per_second >= f64::from(cfg.attempt_burst)
    }
    fn rank(&self, _now: Instant) -> (bool, Instant) {
        (self.tokens < 1.0, self.updated)
    }
}

/// When an app was last seen logged in from an address.
#[derive(Debug)]
struct Seen(Instant);

impl Tracked for Seen {
    fn idle(&self, now: Instant, cfg: &LoginThrottle) -> bool {
        now.saturating_duration_since(self.0) >= cfg.forget_after
    }
    fn rank(&self, _now: Instant) -> (bool, Instant) {
        (false, self.0)
    }
}

/// A map of at most `max_tracked` entries: when full, idle entries go, then the oldest eighth.
#[derive(Debug)]
struct Table<K, V> {
    map: HashMap<K, V>,
}

impl<K: Hash + Eq + Clone, V: Tracked> Table<K, V> {
    fn new() -> Table<K, V> {
        Table {
            map: HashMap::new(),
        }
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key)
    }

    /// The entry for `key`, made with `make` (room made first) if there is none.
    fn slot(
        &mut self,
        key: K,
        now: Instant,
        cfg: &LoginThrottle,
        make: impl FnOnce() -> V,
    ) -> &mut V {
        if !self.map.contains_key(&key) && self.map.len() >= cfg.max_tracked {
            self.make_room(now, cfg);
        }
        self.map.entry(key).or_insert_with(make)
    }

    fn make_room(&mut self, now: Instant, cfg: &LoginThrottle) {
        self.map.retain(|_, v| !v.idle(now, cfg));
        if self.map.len() < cfg.max_tracked {
            return;
        }
        // Evict a batch, so a table under pressure sorts once per eighth of its size.
        let mut victims: Vec<((bool, Instant), K)> = self
            .map
            .iter()
            .filter(|(_, v)| !v.pinned())
            .map(|(k, v)| (v.rank(now), k.clone()))
            .collect();
        let n = (cfg.max_tracked / 8).clamp(1, victims.len().max(1));
        if victims.len() > n {
            victims.select_nth_unstable_by_key(n, |(rank, _)| *rank);
            victims.truncate(n);
        }
        for (_, k) in victims {
            self.map.remove(&k);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// The throttle's state: failure counts, known addresses and rate buckets.
#[derive(Debug)]
pub(crate) struct Throttle {
    cfg: LoginThrottle,
    pairs: Table<(String, IpAddr), Failures>,
    apps: Table<String, Failures>,
    sources: Table<IpAddr, Failures>,
    /// (app, address) pairs with a recent successful login or session.
    known: Table<(String, IpAddr), Seen>,
    buckets: Table<IpAddr, Bucket>,
}

impl Throttle {
    pub(crate) fn new(cfg: LoginThrottle) -> Throttle {
        Throttle {
            cfg,
            pairs: Table::new(),
            apps: Table::new(),
            sources: Table::new(),
            known: Table::new(),
            buckets: Table::new(),
        }
    }

    fn is_known(&self, pair: &(String, IpAddr), now: Instant) -> bool {
        self.known
            .map
            .get(pair)
            .is_some_and(|seen| !seen.idle(now, &self.cfg))
    }

    /// Whether a login of `app` from `addr` may have its secret checked now. On `Ok`, the
    /// login holds its place until settled; on `Err`, nothing changed but refusal counts.
    pub(crate) fn admit(
        &mut self,
        app: &str,
        addr: IpAddr,
        now: Instant,
    ) -> Result<Ticket, Refusal> {
        let source = source_of(addr);
        let pair = (app.to_owned(), source);
        let known = self.is_known(&pair, now);
        let cfg = &self.cfg;

        // Failure scopes first: the longest wait wins (a retry before it would be refused).
        let mut refusal: Option<Refusal> = None;
        let mut consider = |entry: Option<&mut Failures>, scope: Scope| {
            let Some(entry) = entry else { return };
            entry.forget_if_old(now, cfg);
            if let Some(r) = entry.verdict(scope, now, cfg) {
                if matches!(r.reason, Reason::Failed(_)) {
                    entry.refused += 1;
                }
                if refusal
                    .as_ref()
                    .is_none_or(|best| r.retry_after > best.retry_after)
                {
                    refusal = Some(r);
                }
            }
        };
        consider(self.pairs.get_mut(&pair), Scope::Pair);
        if !known {
            consider(self.apps.get_mut(&pair.0), Scope::App);
            consider(self.sources.get_mut(&source), Scope::Source);
        }
        if let Some(r) = refusal {
            return Err(r);
        }

        // Then the rate: a token per admitted login.
        let bucket = self.buckets.slot(source, now, cfg, || Bucket {
            tokens: f64::from(cfg.attempt_burst),
            updated: now,
            refused: 0,
            logged: None,
        });
        bucket.refill(now, cfg);
        if bucket.tokens < 1.0 {
            bucket.refused += 1;
            let log = bucket
                .logged
                .is_none_or(|at| now.saturating_duration_since(at) >= RATE_LOG_EVERY);
            if log {
                bucket.logged = Some(now);
            }
            return Err(Refusal {
                reason: Reason::Rate,
                retry_after: bucket.wait(cfg),
                log,
            });
        }
        bucket.tokens -= 1.0;

        self.pairs
            .slot(pair.clone(), now, cfg, || Failures::new(now))
            .pending += 1;
        if !known {
            self.apps
                .slot(pair.0.clone(), now, cfg, || Failures::new(now))
                .pending += 1;
            self.sources
                .slot(source, now, cfg, || Failures::new(now))
                .pending += 1;
        }
        Ok(Ticket {
            app: pair.0,
            source,
            known,
        })
    }

    /// Rate-limited attempts a source had refused since it was last logged (then resets it).
    pub(crate) fn take_rate_refusals(&mut self, addr: IpAddr) -> u64 {
        self.buckets
            .get_mut(&source_of(addr))
            .map_or(0, |b| std::mem::take(&mut b.refused))
    }

    /// The login's secret was right: the failures of the pair, and of the app if the login was
    /// counted there (not from a known address), are cleared, and the address becomes known for
    /// the app. The address's own failures stay until forgotten: a right secret for one app
    /// does not excuse guessing at others.
    pub(crate) fn succeeded(&mut self, ticket: Ticket, now: Instant) {
        let pair = (ticket.app, ticket.source);
        if let Some(e) = self.pairs.get_mut(&pair) {
            e.succeed(now);
        }
        if !ticket.known {
            if let Some(e) = self.apps.get_mut(&pair.0) {
                e.succeed(now);
            }
            if let Some(e) = self.sources.get_mut(&pair.1) {
                e.pending = e.pending.saturating_sub(1);
            }
        }
        let cfg = &self.cfg;
        self.known.slot(pair, now, cfg, || Seen(now)).0 = now;
    }

    /// The login's secret was wrong (or the app unknown): counted in every scope it was admitted
    /// in. Returns the backoffs this failure started, for the caller to log.
    pub(crate) fn failed(&mut self, ticket: Ticket, now: Instant) -> Vec<Window> {
        let cfg = &self.cfg;
        let pair = (ticket.app, ticket.source);
        let mut windows = Vec::new();
        let pair_entry = self
            .pairs
            .slot(pair.clone(), now, cfg, || Failures::new(now));
        windows.extend(pair_entry.fail(Scope::Pair, now, cfg));
        if !ticket.known {
            let app = self.apps.slot(pair.0, now, cfg, || Failures::new(now));
            windows.extend(app.fail(Scope::App, now, cfg));
            let source = self.sources.slot(pair.1, now, cfg, || Failures::new(now));
            windows.extend(source.fail(Scope::Source, now, cfg));
        }
        windows
    }

    /// The login ended without its secret being checked (the registry was busy, the request was
    /// invalid or cancelled): its places are freed and its token given back.
    pub(crate) fn abandoned(&mut self, ticket: Ticket, now: Instant) {
        let cfg = &self.cfg;
        let pair = (ticket.app, ticket.source);
        if let Some(e) = self.pairs.get_mut(&pair) {
            e.pending = e.pending.saturating_sub(1);
        }
        if !ticket.known {
            if let Some(e) = self.apps.get_mut(&pair.0) {
                e.pending = e.pending.saturating_sub(1);
            }
            if let Some(e) = self.sources.get_mut(&pair.1) {
                e.pending = e.pending.saturating_sub(1);
            }
        }
        if let Some(b) = self.buckets.get_mut(&pair.1) {
            b.refill(now, cfg);
            b.tokens = (b.tokens + 1.0).min(f64::from(cfg.attempt_burst));
        }
    }

    /// A session of `app` from `addr` ended: the address stays known for the app (its
    /// reconnection is not held back by others' failures).
    pub(crate) fn session_ended(&mut self, app: &str, addr: IpAddr, now: Instant) {
        let cfg = &self.cfg;
        let pair = (app.to_owned(), source_of(addr));
        self.known.slot(pair, now, cfg, || Seen(now)).0 = now;
    }

    /// Entries held, all tables together.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.pairs.len()
            + self.apps.len()
            + self.sources.len()
            + self.known.len()
            + self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const S: Duration = Duration::from_secs(1);

    fn cfg() -> LoginThrottle {
        LoginThrottle {
            free_failures: 3,
            backoff_min: S,
            backoff_max: 8 * S,
            forget_after: 60 * S,
            attempt_burst: 1000,
            attempts_per_second: 1000.0,
            max_tracked: 1000,
            ..LoginThrottle::default()
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    /// One complete failed login, which must be admitted.
    fn fail(t: &mut Throttle, app: &str, from: IpAddr, now: Instant) -> Vec<Window> {
        let ticket = t
            .admit(app, from, now)
            .unwrap_or_else(|r| panic!("{app} from {from} refused: {r:?}"));
        t.failed(ticket, now)
    }

    fn succeed(t: &mut Throttle, app: &str, from: IpAddr, now: Instant) {
        let ticket = t.admit(app, from, now).expect("admitted");
        t.succeeded(ticket, now);
    }

    #[test]
    fn backoff_doubles_from_min_to_max() {
        let c = cfg(); // 3 free, 1 s .. 8 s
        let b = |n| backoff(&c, n);
        assert_eq!([b(1), b(2)], [None, None]);
        assert_eq!(b(3), Some(S));
        assert_eq!(b(4), Some(2 * S));
        assert_eq!(b(5), Some(4 * S));
        assert_eq!(b(6), Some(8 * S));
        assert_eq!(b(7), Some(8 * S));
        assert_eq!(b(u32::MAX), Some(8 * S), "no overflow");
        let none_free = LoginThrottle {
            free_failures: 0,
            ..c.clone()
        };
        assert_eq!(
            backoff(&none_free, 1),
            Some(S),
            "0 free: the first failure backs off"
        );
        assert_eq!(backoff(&none_free, 2), Some(2 * S));
        let huge = LoginThrottle {
            backoff_max: Duration::MAX,
            ..c
        };
        assert!(
            backoff(&huge, 200).is_some(),
            "saturates instead of overflowing"
        );
    }

    #[test]
    fn failures_back_off_then_retry_after_is_exact() {
        let mut t = Throttle::new(cfg());
        let t0 = Instant::now();
        let a = ip(1);
        assert!(fail(&mut t, "billing", a, t0).is_empty());
        assert!(fail(&mut t, "billing", a, t0).is_empty());
        // The third failure uses up the free ones: 1 s, in every scope it was counted in.
        let windows = fail(&mut t, "billing", a, t0);
        let scopes: Vec<Scope> = windows.iter().map(|w| w.scope).collect();
        assert_eq!(scopes, [Scope::Pair, Scope::App, Scope::Source]);
        assert!(windows.iter().all(|w| w.backoff == S && w.failures == 3));

        let r = t.admit("billing", a, t0 + S / 2).unwrap_err();
        assert_eq!(r.retry_after, S / 2);
        assert!(matches!(r.reason, Reason::Failed(_)), "{r:?}");
        assert_eq!(
            r.message(),
            format!("{}; retry in 0.5s", message_of(r.reason))
        );
        // Refused attempts never extend the backoff: at its end, one attempt goes through.
        let ticket = t.admit("billing", a, t0 + S).expect("backoff over");
        // ... and only one at a time once the free failures are used up.
        let r = t.admit("billing", a, t0 + S).unwrap_err();
        assert_eq!(r.reason, Reason::InProgress(Scope::Pair));
        let windows = t.failed(ticket, t0 + S);
        assert_eq!(windows[0].backoff, 2 * S);
        assert_eq!(
            windows[0].refused_before, 1,
            "the refusal at +0.5 s is reported"
        );
        // 2 s from the last failure, then 4, then 8, then 8 (capped).
        let mut now = t0 + S;
        for expect in [2 * S, 4 * S, 8 * S, 8 * S] {
            let r = t.admit("billing", a, now).unwrap_err();
            assert_eq!(r.retry_after, expect);
            now += expect;
            let w = fail(&mut t, "billing", a, now);
            assert_eq!(w[0].backoff, (expect * 2).min(8 * S));
        }
    }

    fn message_of(reason: Reason) -> String {
        let m = Refusal {
            reason,
            retry_after: Duration::ZERO,
            log: false,
        }
        .message();
        m.trim_end_matches("; retry in 0.0s").to_owned()
    }

    #[test]
    fn retry_hints_round_up() {
        assert_eq!(seconds(Duration::from_millis(3201)), "3.3s");
        assert_eq!(seconds(Duration::from_millis(3200)), "3.2s");
        assert_eq!(seconds(Duration::from_millis(1)), "0.1s");
        assert_eq!(seconds(Duration::from_secs(300)), "300.0s");
    }

    #[test]
    fn a_burst_is_checked_only_as_far_as_free_failures_allow() {
        let mut t = Throttle::new(cfg());
        let now = Instant::now();
        // 3 free failures: 3 logins may be checked at once, the rest are refused at once.
        let tickets: Vec<Ticket> = (0..3)
            .map(|_| t.admit("billing", ip(1), now).unwrap())
            .collect();
        for _ in 0..100 {
            let r = t.admit("billing", ip(1), now).unwrap_err();
            assert!(matches!(r.reason, Reason::InProgress(_)), "{r:?}");
            assert_eq!(r.retry_after, S);
        }
        for ticket in tickets {
            t.failed(ticket, now);
        }
        assert!(matches!(
            t.admit("billing", ip(1), now).unwrap_err().reason,
            Reason::Failed(_)
        ));
        // Right secrets are not held back by in-progress counts once they are settled.
        let mut t = Throttle::new(cfg());
        for _ in 0..10 {
            succeed(&mut t, "billing", ip(1), now);
        }
    }

    #[test]
    fn success_clears_the_app_and_pair_but_not_the_address() {
        let mut t = Throttle::new(cfg());
        let now = Instant::now();
        fail(&mut t, "billing", ip(1), now);
        fail(&mut t, "billing", ip(1), now);
        fail(&mut t, "web", ip(1), now); // the address's third failure
        // The address is backing off now, for every app not known there.
        let r = t.admit("other", ip(1), now).unwrap_err();
        assert_eq!(r.reason, Reason::Failed(Scope::Source));
        let later = now + S;
        succeed(&mut t, "billing", ip(1), later);
        // billing's counts are clear: two fresh failures start no backoff...
        assert!(fail(&mut t, "billing", ip(2), later).is_empty());
        assert!(fail(&mut t, "billing", ip(2), later).is_empty());
        // ...but the address still has its three: its next failure (for a new app) backs off
        // for 2 s.
        let w = fail(&mut t, "other", ip(1), later);
        assert_eq!(
            w.iter()
                .find(|w| w.scope == Scope::Source)
                .map(|w| w.backoff),
            Some(2 * S)
        );
    }

    #[test]
    fn per_app_counts_span_addresses_and_spare_other_apps() {
        let mut t = Throttle::new(cfg());
        let now = Instant::now();
        // Distributed guessing: one failure from each of three addresses.
        for i in 1..=3 {
            fail(&mut t, "billing", ip(i), now);
        }
        let r = t.admit("billing", ip(9), now).unwrap_err();
        assert_eq!(r.reason, Reason::Failed(Scope::App));
        assert_eq!(r.retry_after, S);
        // Other apps, from the same addresses, are untouched.
        succeed(&mut t, "web", ip(1), now);
        succeed(&mut t, "web", ip(9), now);
    }

    #[test]
    fn unknown_app_names_are_counted_like_real_ones() {
        // The throttle never learns which apps exist: the same history gives the same answers.
        let now = Instant::now();
        let run = |app: &str| {
            let mut t = Throttle::new(cfg());
            let mut answers = Vec::new();
            for i in 0..6u32 {
                let at = now + S * i / 2;
                answers.push(match t.admit(app, ip(1), at) {
                    Ok(ticket) => Ok(t.failed(ticket, at).len()),
                    Err(r) => Err(r),
                });
            }
            answers
        };
        assert_eq!(run("billing"), run("no-such-app"));
    }

    #[test]
    fn known_addresses_are_not_locked_out_by_others_failures() {
        let mut t = Throttle::new(cfg());
        let now = Instant::now();
        succeed(&mut t, "billing", ip(1), now);
        // A flood of wrong secrets for billing from elsewhere...
        for i in 10..13 {
            fail(&mut t, "billing", ip(i), now);
        }
        // ...and for other apps from billing's own address.
        for app in ["a", "b", "c"] {
            fail(&mut t, app, ip(1), now);
        }
        assert_eq!(
            t.admit("billing", ip(2), now).unwrap_err().reason,
            Reason::Failed(Scope::App),
            "a new address of billing waits"
        );
        assert_eq!(
            t.admit("d", ip(1), now).unwrap_err().reason,
            Reason::Failed(Scope::Source),
            "another app from the failing address waits"
        );
        // billing, from where it logged in before, does not; and that does not lift the app's
        // backoff for the others.
        succeed(&mut t, "billing", ip(1), now);
        assert_eq!(
            t.admit("billing", ip(2), now).unwrap_err().reason,
            Reason::Failed(Scope::App)
        );
        // A session ending refreshes the address; it is forgotten `forget_after` later.
        let end = now + 30 * S;
        t.session_ended("billing", ip(1), end);
        assert!(t.is_known(&("billing".into(), ip(1)), end + 59 * S));
        assert!(!t.is_known(&("billing".into(), ip(1)), end + 60 * S));
    }

    #[test]
    fn a_known_address_still_backs_off_for_its_own_failures() {
        let mut t = Throttle::new(cfg());
        let now = Instant::now();
        succeed(&mut t, "billing", ip(1), now);
        for _ in 0..3 {
            fail(&mut t, "billing", ip(1), now);
        }
        let r = t.admit("billing", ip(1), now).unwrap_err();
        assert_eq!(r.reason, Reason::Failed(Scope::Pair));
        // Its failures counted for the pair only: the app elsewhere and the address for other
        // apps are not held back by them.
        succeed(&mut t, "billing", ip(2), now);
        succeed(&mut t, "web", ip(1), now);
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_period() {
        let mut t = Throttle::new(cfg()); // forget_after 60 s
        let now = Instant::now();
        fail(&mut t, "billing", ip(1), now);
        fail(&mut t, "billing", ip(1), now);
        // Just before: the third failure still backs off.
        let w = fail(&mut t, "billing", ip(1), now + 59 * S);
        assert!(!w.is_empty());
        // A minute after the last failure (and past its backoff): a clean slate.
        let later = now + 59 * S + 60 * S;
        assert!(fail(&mut t, "billing", ip(1), later).is_empty());
        assert!(fail(&mut t, "billing", ip(1), later).is_empty());
        assert!(!fail(&mut t, "billing", ip(1), later).is_empty());
    }

    #[test]
    fn attempts_per_address_are_rate_limited_even_with_right_secrets() {
        let mut t = Throttle::new(LoginThrottle {
            attempt_burst: 4,
            attempts_per_second: 2.0,
            ..cfg()
        });
        let now = Instant::now();
        for _ in 0..4 {
            succeed(&mut t, "billing", ip(1), now);
        }
        let r = t.admit("billing", ip(1), now).unwrap_err();
        assert_eq!(r.reason, Reason::Rate);
        assert_eq!(r.retry_after, S / 2);
        assert!(r.log, "the first rate refusal is logged");
        let r = t.admit("web", ip(1), now).unwrap_err();
        assert!(!r.log, "later ones are not");
        assert_eq!(t.take_rate_refusals(ip(1)), 2);
        // Other addresses have their own bucket.
        succeed(&mut t, "billing", ip(2), now);
        // Half a second refills one token; abandoned logins give theirs back.
        let later = now + S / 2;
        let ticket = t.admit("billing", ip(1), later).unwrap();
        assert_eq!(
            t.admit("billing", ip(1), later).unwrap_err().reason,
            Reason::Rate
        );
        t.abandoned(ticket, later);
        succeed(&mut t, "billing", ip(1), later);
        // The refusal log comes back a minute later at the earliest.
        assert!(!t.admit("billing", ip(1), later).unwrap_err().log);
        let minute = now + RATE_LOG_EVERY;
        for _ in 0..4 {
            succeed(&mut t, "billing", ip(1), minute);
        }
        assert!(t.admit("billing", ip(1), minute).unwrap_err().log);
    }

    #[test]
    fn abandoned_logins_free_their_places_without_counting() {
        let mut t = Throttle::new(cfg());
        let now = Instant::now();
        for _ in 0..10 {
            let a = t.admit("billing", ip(1), now).unwrap();
            let b = t.admit("billing", ip(1), now).unwrap();
            t.abandoned(a, now);
            t.abandoned(b, now);
        }
        assert!(fail(&mut t, "billing", ip(1), now).is_empty());
    }

    #[test]
    fn addresses_are_counted_by_host_not_port_and_ipv6_by_prefix() {
        let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            source_of(v6("2001:db8::1")),
            source_of(v6("2001:db8::ffff:2"))
        );
        assert_ne!(
            source_of(v6("2001:db8::1")),
            source_of(v6("2001:db8:0:1::1"))
        );
        assert_eq!(source_of(v6("::ffff:10.0.0.1")), ip(1));
        let mut t = Throttle::new(cfg());
        let now = Instant::now();
        for host in ["2001:db8::1", "2001:db8::2", "2001:db8::3"] {
            fail(&mut t, &format!("app-{host}"), v6(host), now);
        }
        assert_eq!(
            t.admit("x", v6("2001:db8::99"), now).unwrap_err().reason,
            Reason::Failed(Scope::Source)
        );
    }

    #[test]
    fn tables_stay_bounded_and_keep_running_backoffs_longest() {
        let mut t = Throttle::new(LoginThrottle {
            max_tracked: 16,
            ..cfg()
        });
        let now = Instant::now();
        // A victim's backoff, then a spray of new names from many addresses.
        for i in 0..3 {
            fail(&mut t, "victim", ip(i), now);
        }
        for i in 0..500u32 {
            let from = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
            let at = now + Duration::from_millis(u64::from(i));
            fail(&mut t, &format!("spray-{i}"), from, at);
            assert!(t.apps.len() <= 16 && t.sources.len() <= 16 && t.pairs.len() <= 16);
            assert!(t.buckets.len() <= 16);
        }
        assert!(t.tracked() <= 5 * 16);
        assert_eq!(
            t.admit("victim", ip(9), now + S / 2).unwrap_err().reason,
            Reason::Failed(Scope::App),
            "the running backoff survived the spray"
        );
        // Entries with logins in progress are never evicted.
        let mut t = Throttle::new(LoginThrottle {
            max_tracked: 4,
            ..cfg()
        });
        let held = t.admit("held", ip(1), now).unwrap();
        for i in 0..50u8 {
            let ticket = t.admit(&format!("n{i}"), ip(100 + i), now).unwrap();
            t.abandoned(ticket, now);
        }
        assert!(t.apps.map.contains_key("held"));
        t.failed(held, now);
    }

    #[test]
    fn idle_entries_are_purged_when_a_table_fills() {
        let mut t = Throttle::new(LoginThrottle {
            max_tracked: 8,
            ..cfg()
        });
        let now = Instant::now();
        for i in 0..8 {
            succeed(&mut t, &format!("a{i}"), ip(i), now);
        }
        // A minute later everything is forgotten: one new entry clears the idle ones.
        let later = now + 61 * S;
        succeed(&mut t, "late", ip(200), later);
        assert_eq!(t.known.len(), 1);
        assert_eq!(t.buckets.len(), 1);
    }
}
