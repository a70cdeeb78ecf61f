//! Prometheus metrics, served as text on the admin listener's `GET /metrics`: requests
//! and latency per service, version and status; in-flight requests; rate-limit,
//! load-shedding, retry, cache and fallback counters; connections refused on accept;
//! breaker states; bus counters.

use crate::bus::Bus;
use crate::policy::breaker::{Breakers, Status};
use crate::registry::Registry;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::sync::{Arc, Weak};
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;

fn histogram() -> Histogram {
    // 100 µs to ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Every metric of the host.
pub(crate) struct Metrics {
    registry: prometheus_client::registry::Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    in_flight: Family<Labels, Gauge>,
    rate_limited: Family<Labels, Counter>,
    shed: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    cache: Family<Labels, Counter>,
    fallbacks: Family<Labels, Counter>,
    connections_refused: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Reads the states that live elsewhere (breakers, bus) when scraped.
struct Live {
    breakers: Weak<Breakers>,
    registry: Weak<Registry>,
    bus: Weak<Bus>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl prometheus_client::collector::Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let (Some(breakers), Some(registry)) = (self.breakers.upgrade(), self.registry.upgrade())
        {
            let mut e = encoder.encode_descriptor(
                "microhost_breaker_state",
                "Circuit breaker of each service: 0 closed, 1 half-open, 2 open",
                None,
                MetricType::Gauge,
            )?;
            for slot in registry.services() {
                let value: i64 = match breakers.status(slot.name()) {
                    Status::Closed => 0,
                    Status::HalfOpen => 1,
                    Status::Open => 2,
                };
                let labels: Labels = vec![("service", slot.name().to_string())];
                ConstGauge::new(value).encode(e.encode_family(&labels)?)?;
            }
        }
        if let (Some(bus), Some(registry)) = (self.bus.upgrade(), self.registry.upgrade()) {
            let mut backlogs = Vec::new();
            for slot in registry.services() {
                for sub in &slot.spec.subscribe {
                    match bus.backlog(&sub.topic, slot.name()) {
                        Ok(backlog) => {
                            backlogs.push((sub.topic.to_string(), slot.name().to_string(), backlog))
                        }
                        Err(e) => {
                            tracing::warn!(topic = %sub.topic, service = slot.name(), error = %e, "reading a subscription's backlog for /metrics failed")
                        }
                    }
                }
            }
            backlogs.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            for (name, help, dead) in [
                (
                    "microhost_bus_lag",
                    "Events of the topic a subscription has not yet handled, per subscription",
                    false,
                ),
                (
                    "microhost_bus_dead_letters",
                    "Dead letters a subscription holds now (redrive empties it), per subscription",
                    true,
                ),
            ] {
                let mut e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (topic, service, backlog) in &backlogs {
                    let n = if dead {
                        backlog.dead_letters
                    } else {
                        backlog.lag
                    };
                    let labels: Labels =
                        vec![("topic", topic.clone()), ("service", service.clone())];
                    ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
                        .encode(e.encode_family(&labels)?)?;
                }
            }
            let mut e = encoder.encode_descriptor(
                "microhost_queued_requests",
                "Requests a queue fallback holds for replay, per service",
                None,
                MetricType::Gauge,
            )?;
            let mut queued: Vec<(String, usize)> = registry
                .services()
                .iter()
                .filter(|slot| {
                    matches!(
                        slot.spec.policy.fallback,
                        crate::config::FallbackSpec::Queue { .. }
                    )
                })
                .filter_map(|slot| {
                    let prefix = crate::store::keys::queue_prefix(slot.name());
                    match bus.count(&prefix, usize::MAX) {
                        Ok(n) => Some((slot.name().to_string(), n)),
                        Err(e) => {
                            tracing::warn!(service = slot.name(), error = %e, "counting a service's queued requests for /metrics failed");
                            None
                        }
                    }
                })
                .collect();
            queued.sort();
            for (service, n) in queued {
                let labels: Labels = vec![("service", service)];
                ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
                    .encode(e.encode_family(&labels)?)?;
            }
        }
        if let Some(bus) = self.bus.upgrade() {
            let published = bus.metrics.published_all();
            let mut e = encoder.encode_descriptor(
                "microhost_bus_published",
                "Events published, per topic",
                None,
                MetricType::Counter,
            )?;
            for (topic, n) in &published {
                let labels: Labels = vec![("topic", topic.clone())];
                ConstCounter::new(*n).encode(e.encode_family(&labels)?)?;
            }
            let subs = bus.metrics.subscriptions_all();
            for (name, help, pick) in [
                (
                    "microhost_bus_delivered",
                    "Events delivered and acknowledged, per subscription",
                    0,
                ),
                (
                    "microhost_bus_retried",
                    "Delivery attempts that failed and were retried, per subscription",
                    1,
                ),
                (
                    "microhost_bus_dead_lettered",
                    "Events moved to the dead-letter topic, per subscription",
                    2,
                ),
            ] {
                let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                for ((topic, service), c) in &subs {
                    let n = [c.delivered, c.retried, c.dead_lettered][pick];
                    let labels: Labels =
                        vec![("topic", topic.clone()), ("service", service.clone())];
                    ConstCounter::new(n).encode(e.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = prometheus_client::registry::Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            histogram as fn() -> Histogram,
        );
        let in_flight = Family::<Labels, Gauge>::default();
        let rate_limited = Family::<Labels, Counter>::default();
        let shed = Family::<Labels, Counter>::default();
        let retries = Family::<Labels, Counter>::default();
        let cache = Family::<Labels, Counter>::default();
        let fallbacks = Family::<Labels, Counter>::default();
        let connections_refused = Family::<Labels, Counter>::default();
        registry.register(
            "microhost_requests",
            "Requests answered, per service, version and status",
            requests.clone(),
        );
        registry.register(
            "microhost_request_duration_seconds",
            "Time to answer a request, per service, version and status",
            latency.clone(),
        );
        registry.register(
            "microhost_in_flight",
            "Requests being served now, per service",
            in_flight.clone(),
        );
        registry.register(
            "microhost_rate_limited",
            "Requests refused with 429 by a route's rate limit, per service",
            rate_limited.clone(),
        );
        registry.register(
            "microhost_shed",
            "Requests refused with 503 by a service's concurrency limit, per service",
            shed.clone(),
        );
        registry.register(
            "microhost_retries",
            "Retries of failed idempotent requests, per service",
            retries.clone(),
        );
        registry.register(
            "microhost_cache",
            "Response cache lookups, per service and result (hit, miss, stale)",
            cache.clone(),
        );
        registry.register(
            "microhost_fallbacks",
            "Fallback responses served, per service and kind",
            fallbacks.clone(),
        );
        registry.register(
            "microhost_connections_refused",
            "Connections closed as soon as they were accepted, per server and limit \
             (max_connections, max_connections_per_ip)",
            connections_refused.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            in_flight,
            rate_limited,
            shed,
            retries,
            cache,
            fallbacks,
            connections_refused,
        }
    }

    /// Adds the breaker and bus states, read at each scrape.
    pub(crate) fn observe(
        &mut self,
        breakers: &Arc<Breakers>,
        registry: &Arc<Registry>,
        bus: &Arc<Bus>,
    ) {
        self.registry.register_collector(Box::new(Live {
            breakers: Arc::downgrade(breakers),
            registry: Arc::downgrade(registry),
            bus: Arc::downgrade(bus),
        }));
    }

    pub(crate) fn request(&self, service: &str, version: &str, status: u16, elapsed: Duration) {
        let labels: Labels = vec![
            ("service", service.to_string()),
            ("version", version.to_string()),
            ("status", status.to_string()),
        ];
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The in-flight gauge of `service` (callers keep it, so a request costs no lookup).
    pub(crate) fn in_flight_gauge(&self, service: &str) -> Gauge {
        self.in_flight
            .get_or_create(&vec![("service", service.to_string())])
            .clone()
    }

    fn count(family: &Family<Labels, Counter>, labels: Labels) {
        family.get_or_create(&labels).inc();
    }

    pub(crate) fn rate_limited(&self, service: &str) {
        Self::count(&self.rate_limited, vec![("service", service.to_string())]);
    }

    pub(crate) fn shed(&self, service: &str) {
        Self::count(&self.shed, vec![("service", service.to_string())]);
    }

    pub(crate) fn retried(&self, service: &str) {
        Self::count(&self.retries, vec![("service", service.to_string())]);
    }

    pub(crate) fn cache(&self, service: &str, result: &'static str) {
        Self::count(
            &self.cache,
            vec![
                ("service", service.to_string()),
                ("result", result.to_string()),
            ],
        );
    }

    pub(crate) fn fallback(&self, service: &str, kind: &'static str) {
        Self::count(
            &self.fallbacks,
            vec![("service", service.to_string()), ("kind", kind.to_string())],
        );
    }

    pub(crate) fn connection_refused(&self, server: &str, limit: &'static str) {
        Self::count(
            &self.connections_refused,
            vec![
                ("server", server.to_string()),
                ("reason", limit.to_string()),
            ],
        );
    }

    /// The exposition text.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts a request as in flight until dropped.
pub(crate) struct InFlightGuard(Gauge);

impl InFlightGuard {
    pub(crate) fn new(gauge: &Gauge) -> InFlightGuard {
        gauge.inc();
        InFlightGuard(gauge.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
