//! The two shapes of a fleet and where everything in one goes: which service an instance
//! belongs to, its endpoint, the provider session that registers it, the service a subscriber
//! watches.

use stardust::discovery::api::Registration;

use crate::options::Options;

/// The version every instance registers: subscribers watch `*`, so it only has to be valid.
pub const VERSION: &str = "1.0.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeKind {
    /// Every instance in one service, every subscriber watching it: the fan-out worst case.
    OneService,
    /// Instances spread over many services, each subscriber watching one of them.
    Spread,
}

impl ShapeKind {
    pub fn name(self) -> &'static str {
        match self {
            ShapeKind::OneService => "one-service",
            ShapeKind::Spread => "spread",
        }
    }

    pub fn from_name(name: &str) -> Option<ShapeKind> {
        [ShapeKind::OneService, ShapeKind::Spread]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

/// One shape at the run's sizes.
///
/// Instances are numbered: `0..instances` are registered in the registration phase,
/// `instances..instances + burst` in the registration burst, and the joins take the numbers
/// after those. Instance `i` belongs to service `i % services` and to provider session
/// `i % sessions`; subscriber `j` watches service `j % services`.
#[derive(Debug, Clone)]
pub struct Shape {
    pub kind: ShapeKind,
    pub instances: usize,
    pub sessions: usize,
    pub subscribers: usize,
    pub services: usize,
    /// Instances added at once in the registration burst (a tenth of `instances`, at least 1).
    pub burst: usize,
}

impl Shape {
    pub fn new(kind: ShapeKind, opts: &Options) -> Shape {
        let services = match kind {
            ShapeKind::OneService => 1,
            ShapeKind::Spread => opts.services,
        };
        Shape {
            kind,
            instances: opts.instances,
            sessions: opts.sessions,
            subscribers: opts.subscribers,
            services,
            burst: (opts.instances / 10).max(1),
        }
    }

    /// A one-line description for headings.
    pub fn describe(&self) -> String {
        let services = match self.services {
            1 => "ONE service".to_owned(),
            n => format!("{n} services"),
        };
        format!(
            "{} instances of {services} over {} provider sessions, {} subscribers",
            self.instances, self.sessions, self.subscribers
        )
    }

    pub fn service_of(&self, instance: usize) -> usize {
        instance % self.services
    }

    pub fn session_of(&self, instance: usize) -> usize {
        instance % self.sessions
    }

    pub fn service_watched_by(&self, subscriber: usize) -> usize {
        subscriber % self.services
    }

    /// Subscribers watching `service`.
    pub fn watchers_of(&self, service: usize) -> usize {
        (0..self.subscribers)
            .filter(|&j| self.service_watched_by(j) == service)
            .count()
    }

    pub fn service_name(&self, service: usize) -> String {
        match self.kind {
            ShapeKind::OneService => "bench.Discovery".to_owned(),
            ShapeKind::Spread => format!("bench.Spread{service:03}"),
        }
    }

    /// The number of the `repeat`th joined instance.
    pub fn join_instance(&self, repeat: usize) -> usize {
        self.instances + self.burst + repeat
    }

    /// What instance `i` registers: a distinct private address per instance (never dialled).
    pub fn registration(&self, instance: usize) -> Registration {
        Registration {
            service: self.service_name(self.service_of(instance)),
            version: VERSION.to_owned(),
            endpoint: endpoint(instance),
            weight: 100,
            tags: Default::default(),
            tls: false,
            description: None,
        }
    }
}

/// `10.x.y.z:7000`, unique for the first 2^24 instances.
pub fn endpoint(instance: usize) -> String {
    let [_, a, b, c] = (instance as u32).to_be_bytes();
    format!("10.{a}.{b}.{c}:7000")
}
