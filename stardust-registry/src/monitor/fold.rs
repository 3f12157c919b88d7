//! Folding a heartbeat's status report into the monitor's figures.

use super::*;

impl Monitor {
    /// Folds a heartbeat's report from session `session` into the figures. Renews the
    /// session's instances' `renewed` time. Cheap: work in proportion to the report and the
    /// session's own instances.
    pub(crate) fn fold(&self, session: u64, status: &Status, now: Instant) {
        let slot = self.slot(now);
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let Some(facts) = inner.sessions.get_mut(&session) else {
            return; // ended meanwhile
        };
        let report = facts.report.get_or_insert_with(ProcessReport::default);
        report.at = Some(now);
        report.uptime_ms = status.uptime_ms;
        if report.version != status.version {
            report.version = truncate(&status.version, 64);
        }
        report.in_flight = status.in_flight;
        report.window_ms = status.window_ms;
        report.cpu_ms = status.cpu_ms;
        report.cpu_ms_total = report.cpu_ms_total.saturating_add(status.cpu_ms);
        report.rss_bytes = status.rss_bytes;
        report.unbound_tokens_accepted = status.unbound_tokens_accepted;
        report.reports += 1;
        let consumer_app = facts.app.clone();

        // The session's own instances: renewed, and their last window starts from zero.
        for (service, endpoint) in &facts.instances {
            if let Some(stats) = own_instance(&mut inner.services, service, endpoint, session) {
                stats.renewed = now;
                stats.reported = Some(now);
                stats.window_ms = status.window_ms;
                for m in stats.methods.values_mut() {
                    m.last = WindowFigures::default();
                }
            }
        }

        // What it served, credited to its instance of each service (the first, should it have
        // registered one service at several endpoints).
        for figures in &status.served {
            let Some(endpoint) = facts
                .instances
                .iter()
                .filter(|(s, _)| *s == figures.service)
                .map(|(_, e)| e)
                .min()
            else {
                continue; // not a service it registered
            };
            let Some(stats) = inner
                .services
                .get_mut(&figures.service)
                .and_then(|e| e.instances.get_mut(endpoint))
            else {
                continue;
            };
            if figures.method.is_empty() || figures.method.len() > MAX_METHOD_LEN {
                continue;
            }
            if !stats.methods.contains_key(&figures.method) {
                if stats.methods.len() >= MAX_METHODS {
                    continue;
                }
                stats
                    .methods
                    .insert(figures.method.clone(), MethodStats::default());
            }
            let method = stats.methods.get_mut(&figures.method).expect("present");
            method.calls = method.calls.saturating_add(figures.calls);
            method.items_in = method.items_in.saturating_add(figures.items_in);
            method.items_out = method.items_out.saturating_add(figures.items_out);
            let errors = add_errors(&mut method.errors, &figures.errors);
            let buckets = buckets_of(&figures.latency);
            if let Some(b) = &buckets {
                for (total, n) in method.buckets.iter_mut().zip(b) {
                    *total = total.saturating_add(*n);
                }
                method.sum_us = method.sum_us.saturating_add(figures.latency.sum_us);
            }
            let last = &mut method.last;
            last.calls = last.calls.saturating_add(figures.calls);
            last.errors = last.errors.saturating_add(errors);
            last.in_flight = figures.in_flight;
            if let Some(b) = &buckets {
                for (total, n) in last.buckets.iter_mut().zip(b) {
                    *total = total.saturating_add(*n);
                }
            }
            if let Some(e) = figures
                .slowest
                .as_ref()
                .filter(|e| is_trace_id(&e.trace_id))
            {
                method.slowest = Some((e.clone(), now));
            }
            if let Some(e) = figures.failed.as_ref().filter(|e| is_trace_id(&e.trace_id)) {
                method.failed = Some((e.clone(), now));
            }
            let last = &mut method.last;
            let l = &figures.latency;
            last.p50_us = last.p50_us.max(l.p50_us);
            last.p90_us = last.p90_us.max(l.p90_us);
            last.p99_us = last.p99_us.max(l.p99_us);
            last.max_us = last.max_us.max(l.max_us);
        }

        // What it called: the consumers' view of each provider instance.
        for figures in &status.called {
            let Some(stats) = inner
                .services
                .get_mut(&figures.service)
                .and_then(|e| e.instances.get_mut(&figures.endpoint))
            else {
                continue; // not a live instance (any more)
            };
            if !stats.consumers.contains_key(&*consumer_app) {
                if stats.consumers.len() >= MAX_CONSUMER_APPS {
                    continue;
                }
                stats
                    .consumers
                    .insert(consumer_app.to_string(), ConsumerStats::default());
            }
            let consumer = stats.consumers.get_mut(&*consumer_app).expect("present");
            consumer.calls = consumer.calls.saturating_add(figures.calls);
            let errors = add_errors(&mut consumer.errors, &figures.errors);
            let connect_errors = figures
                .errors
                .iter()
                .filter(|e| is_connect_failure(e.code))
                .fold(0u64, |a, e| a.saturating_add(e.count));
            consumer
                .sessions
                .retain(|_, w| now.saturating_duration_since(w.at) < UNREACHABLE_HOLD);
            if consumer.sessions.len() >= MAX_CONSUMER_SESSIONS
                && !consumer.sessions.contains_key(&session)
            {
                let oldest = consumer
                    .sessions
                    .iter()
                    .min_by_key(|(_, w)| w.at)
                    .map(|(id, _)| *id);
                if let Some(id) = oldest {
                    consumer.sessions.remove(&id);
                }
            }
            consumer.sessions.insert(
                session,
                ConsumerWindow {
                    at: now,
                    window_ms: status.window_ms,
                    calls: figures.calls,
                    errors,
                    connect_errors,
                    p50_us: figures.latency.p50_us,
                    p99_us: figures.latency.p99_us,
                },
            );
        }

        // The faults it injected as a consumer: a lookup per entry, bounded (see `faults`).
        inner.faults.add(&status.faults);

        // The instances' rates, then the history of every service this session provides.
        for (service, endpoint) in &facts.instances {
            let Some(entry) = inner.services.get_mut(service) else {
                continue;
            };
            if let Some(stats) = entry
                .instances
                .get_mut(endpoint)
                .filter(|s| s.session == session)
            {
                let rate = stats.window_rate();
                let old = std::mem::replace(&mut stats.rate, rate);
                entry.rate_sum.0 += rate.0 - old.0;
                entry.rate_sum.1 += rate.1 - old.1;
            }
        }
        let mut touched: Vec<&str> = facts.instances.iter().map(|(s, _)| s.as_str()).collect();
        touched.sort_unstable();
        touched.dedup();
        for service in touched {
            if let Some(entry) = inner.services.get_mut(service) {
                let rate = service_rate(entry);
                entry.history.record(slot, rate);
            }
        }
    }
}

/// Whether an exemplar's trace id is one (32 lowercase hex digits, not all zero): anything
/// else is dropped, so the console never links to what a peer made up.
fn is_trace_id(id: &str) -> bool {
    id.len() == 32
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && id.bytes().any(|b| b != b'0')
}
