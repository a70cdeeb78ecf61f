//! The deployment manifest (`registry/microhost.toml`): how it is read and validated,
//! and why it was refused. The lowest layer of the host: it imports nothing from the
//! other modules, which all read their settings from it.
//!
//! Parsed strictly (unknown fields are errors): names, topics and version labels are
//! checked as they are parsed ([`ServiceName`], [`Topic`], [`VersionLabel`]), every
//! other value by the spec that holds it, and every error names the file, the service
//! (or `[auth]`), the field and the value (and the line, where parsing refused it).

mod auth;
mod id;
mod policy;
mod secret;
mod service;

pub use auth::{AuthRateLimit, AuthSpec, HOST_KID, KeySpec, PasswordSpec};
pub use id::{InvalidId, ServiceName, Topic, VersionLabel};
pub use policy::{
    CacheSpec, ConcurrencySpec, CorsSpec, FallbackSpec, HeaderOps, IdempotencySpec,
    MAX_IDEMPOTENCY_TTL_SECS, PolicySpec, RateLimitKey, RateLimitSpec, RetrySpec, TransformSpec,
};
pub use secret::{Secret, SecretSource};
pub use service::{
    BreakerSpec, CanarySpec, ComponentSpec, HealthSpec, Limits, MAX_BODY_KIB, MAX_INSTANCE_REUSE,
    MAX_MEMORY_MIB, MAX_TIMEOUT_MS, PublicRule, ServiceSpec, SubscriptionSpec,
};

use serde::Deserialize;
use serde_path_to_error::Segment;
use std::collections::HashSet;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};

/// The whole manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSpec>,
    #[serde(default)]
    pub admin: AdminSpec,
    #[serde(default)]
    pub auth: AuthSpec,
    #[serde(default)]
    pub telemetry: TelemetrySpec,
    /// The directory relative component paths are resolved against (the manifest's
    /// own directory); not a TOML field.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file it was read from (`None` for `serve --component`); `microhost apply`
    /// and `serve --watch` read it again.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// Admin API settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// Bearer token of the admin API. `MICROHOST_ADMIN_TOKEN` overrides it; prefer the
    /// environment over committing a token.
    pub token: Option<String>,
}

/// `[telemetry]`: where and how traces are exported. Every field falls back to its
/// standard `OTEL_*` variable.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySpec {
    /// The collector's OTLP endpoint: `http://host:4318` for HTTP (`/v1/traces` is
    /// added), `http://host:4317` for gRPC.
    pub endpoint: Option<String>,
    /// `http/protobuf` (the default) or `grpc`.
    pub protocol: Option<String>,
    /// The `service.name` of the host's spans (default `microhost`).
    pub service_name: Option<String>,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on` (the default),
    /// `parentbased_always_off` or `parentbased_traceidratio`.
    pub sampler: Option<String>,
    /// The ratio of the `traceidratio` samplers, 0 to 1.
    pub sampler_arg: Option<f64>,
}

/// A manifest that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("failed to read manifest {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Bad TOML, an unknown field, or a bad value outside a service: toml's message,
    /// which shows the line.
    #[error("invalid manifest {path:?}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid manifest {path:?}: [auth] field `{field}`: {reason}")]
    Auth {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
    /// A bad value of one service; `line` is known when parsing refused it.
    #[error(
        "invalid manifest {path:?}: service {service:?}: field `{field}`{}: {reason}",
        on_line(*.line)
    )]
    Field {
        path: PathBuf,
        service: String,
        /// Dotted, as the service table spells it: `limits.memory_mib`.
        field: String,
        line: Option<usize>,
        reason: String,
    },
}

fn on_line(line: Option<usize>) -> String {
    line.map(|line| format!(" (line {line})"))
        .unwrap_or_default()
}

impl Manifest {
    /// Reads, parses and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut manifest = Manifest::from_toml(&text, path, base_dir)?;
        manifest.path = Some(path.to_path_buf());
        Ok(manifest)
    }

    /// Parses and validates manifest text; `path` is only used in messages.
    pub fn from_toml(
        text: &str,
        path: &Path,
        base_dir: PathBuf,
    ) -> Result<Manifest, ManifestError> {
        let mut manifest: Manifest =
            serde_path_to_error::deserialize(toml::Deserializer::new(text))
                .map_err(|error| parse_error(path, text, &error))?;
        manifest.base_dir = base_dir;
        manifest.validate(path)?;
        manifest.limit_auth_routes();
        manifest.read_secrets(path)?;
        Ok(manifest)
    }

    /// A manifest with one service, `app`, serving `component` on `/` with default
    /// limits (for `microhost serve --component FILE`).
    pub fn single_component(component: &Path) -> Result<Manifest, ManifestError> {
        let path = component.to_string_lossy();
        let text = format!(
            "[[service]]\nname = \"app\"\nroute = \"/\"\ncomponent = {{ path = {}, version = \"local\" }}\n",
            toml::Value::String(path.into_owned())
        );
        let base = std::env::current_dir().unwrap_or_default();
        Manifest::from_toml(&text, component, base)
    }

    /// The component file of `service`, resolved against the manifest's directory.
    pub fn component_path(&self, service: &ServiceSpec) -> PathBuf {
        self.base_dir.join(&service.component.path)
    }

    /// Gives the routes of every service granted `auth.issue_tokens` (a login service:
    /// where passwords are checked, and where guessing them would be tried) the
    /// `[auth] rate_limit`, unless the service sets its own `policy.rate_limit`. The
    /// slot's policy is built from the service's spec, so this is where it is decided.
    fn limit_auth_routes(&mut self) {
        let Some(limit) = &self.auth.rate_limit.0 else {
            return;
        };
        for service in &mut self.services {
            if service.auth.issue_tokens && service.policy.rate_limit.is_none() {
                service.policy.rate_limit = Some(limit.clone());
            }
        }
    }

    /// Reads every service's secrets from their sources (after validation: a manifest
    /// refused for another reason reads none).
    fn read_secrets(&mut self, path: &Path) -> Result<(), ManifestError> {
        for service in &mut self.services {
            for (name, secret) in &mut service.secrets {
                secret
                    .read(&self.base_dir)
                    .map_err(|reason| ManifestError::Field {
                        path: path.to_path_buf(),
                        service: service.name.to_string(),
                        field: format!("secrets.{name}"),
                        line: None,
                        reason,
                    })?;
            }
        }
        Ok(())
    }

    /// Each spec checks its own values; here only what spans services.
    fn validate(&self, path: &Path) -> Result<(), ManifestError> {
        self.auth.validate().map_err(|e| ManifestError::Auth {
            path: path.to_path_buf(),
            field: e.field,
            reason: e.reason,
        })?;
        let known: HashSet<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
        // Dead-letter topics are written by the host only (they hold what a subscriber
        // failed on): no service may publish to one and forge a dead letter.
        let dead_letter_topics: std::collections::HashMap<String, (&str, &str)> = self
            .services
            .iter()
            .flat_map(|s| {
                s.subscribe.iter().map(|sub| {
                    let name = Topic::dead_letters(&sub.topic, &s.name);
                    (name, (s.name.as_str(), sub.topic.as_str()))
                })
            })
            .collect();
        let mut names = HashSet::new();
        let mut routes = HashSet::new();
        for service in &self.services {
            let fail = |e: FieldError| ManifestError::Field {
                path: path.to_path_buf(),
                service: service.name.to_string(),
                field: e.field.to_string(),
                line: None,
                reason: e.reason,
            };
            if !names.insert(service.name.as_str()) {
                return Err(fail(FieldError::new(
                    "name",
                    "another service has the same name",
                )));
            }
            service.validate(&known).map_err(fail)?;
            if let Some((topic, (subscriber, of))) = service
                .publishes
                .iter()
                .find_map(|t| Some((t, dead_letter_topics.get(t.as_str())?)))
            {
                return Err(fail(FieldError::new(
                    "publishes",
                    format!(
                        "topic {topic:?} is the dead-letter topic of service {subscriber:?}'s \
                         subscription to {of:?}: only the host writes to it"
                    ),
                )));
            }
            if let FallbackSpec::Service { service: to } = &service.policy.fallback
                && let Some(next) = self.services.iter().find(|s| &s.name == to)
                && let FallbackSpec::Service { service: then } = &next.policy.fallback
            {
                return Err(fail(FieldError::new(
                    "policy.fallback.service",
                    format!(
                        "{to:?} falls back to {then:?} in turn: a fallback service's own \
                         fallback may not be a service"
                    ),
                )));
            }
            if !routes.insert(service.route.as_str()) {
                return Err(fail(FieldError::new(
                    "route",
                    format!(
                        "{:?} is already the route of another service",
                        service.route
                    ),
                )));
            }
        }
        Ok(())
    }
}

/// A parse error inside a `[[service]]` names the service, the field and the line, as
/// the checks after parsing do. Anything else (bad TOML, an unknown field, `[auth]`, a
/// service whose name cannot be read) keeps toml's message, which shows the line.
fn parse_error(
    path: &Path,
    text: &str,
    error: &serde_path_to_error::Error<toml::de::Error>,
) -> ManifestError {
    let inner = error.inner();
    let mut segments = error.path().iter();
    if let (Some(Segment::Map { key }), Some(Segment::Seq { index })) =
        (segments.next(), segments.next())
        && key == "service"
    {
        let field: Vec<&str> = segments
            .filter_map(|segment| match segment {
                Segment::Map { key } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        let service = toml::from_str::<toml::Table>(text).ok().and_then(|table| {
            let name = table.get("service")?.get(*index)?.get("name")?;
            name.as_str().map(str::to_string)
        });
        if let Some(service) = service
            && !field.is_empty()
        {
            let line = inner.span().map(|span| {
                let before = text.get(..span.start).unwrap_or(text);
                before.matches('\n').count() + 1
            });
            return ManifestError::Field {
                path: path.to_path_buf(),
                service,
                field: field.join("."),
                line,
                reason: inner.message().to_string(),
            };
        }
    }
    ManifestError::Parse {
        path: path.to_path_buf(),
        message: inner.to_string().trim_end().to_string(),
    }
}

/// A value a spec refuses: the field as the service table (or `[auth]`) spells it, and
/// why, quoting the value.
#[derive(Debug)]
struct FieldError {
    field: &'static str,
    reason: String,
}

impl FieldError {
    fn new(field: &'static str, reason: impl Into<String>) -> FieldError {
        FieldError {
            field,
            reason: reason.into(),
        }
    }

    /// Adds what a bound means: `must be at most 600000, got 700000 (0 turns ... off)`.
    fn note(mut self, note: &str) -> FieldError {
        self.reason = format!("{} ({note})", self.reason);
        self
    }
}

/// The one range check of every numeric field: `must be from 1 to 10, got 11`, or
/// `must be at least 1` / `must be at most 100` for a range open at one end.
fn in_range(
    field: &'static str,
    value: impl Into<u64>,
    range: impl RangeBounds<u64>,
) -> Result<(), FieldError> {
    let value = value.into();
    if range.contains(&value) {
        return Ok(());
    }
    let low = match range.start_bound() {
        Bound::Included(&low) => low,
        Bound::Excluded(&low) => low.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let high = match range.end_bound() {
        Bound::Included(&high) => Some(high),
        Bound::Excluded(&high) => Some(high.saturating_sub(1)),
        Bound::Unbounded => None,
    };
    let bounds = match high {
        Some(high) if low > 0 => format!("from {low} to {high}"),
        Some(high) => format!("at most {high}"),
        None => format!("at least {low}"),
    };
    Err(FieldError::new(
        field,
        format!("must be {bounds}, got {value}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::from_toml(
            text,
            Path::new("registry/microhost.toml"),
            PathBuf::from("registry"),
        )
    }

    pub(super) const GOOD: &str = r#"
        [[service]]
        name = "product"
        route = "/api/products"
        component = { path = "product/0.1.0.wasm", version = "0.1.0" }
        limits = { memory_mib = 32, timeout_ms = 2000 }
        config = { default_page_size = "10" }
    "#;

    #[test]
    fn parses_a_good_manifest() -> anyhow::Result<()> {
        let m = parse(GOOD)?;
        assert_eq!(m.services.len(), 1);
        let s = &m.services[0];
        assert_eq!(s.limits.memory_mib, 32);
        assert_eq!(
            s.limits.max_body_kib, 1024,
            "unset limits take their default"
        );
        assert_eq!(s.config["default_page_size"], "10");
        assert_eq!(
            m.component_path(s),
            PathBuf::from("registry/product/0.1.0.wasm")
        );
        Ok(())
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let err = parse(&GOOD.replace("route =", "rout =")).expect_err("unknown field");
        let msg = err.to_string();
        assert!(msg.contains("registry/microhost.toml"), "{msg}");
        assert!(msg.contains("line"), "{msg}");
        assert!(msg.contains("rout"), "{msg}");
    }

    #[test]
    fn bad_values_name_service_field_and_value() {
        let cases = [
            (
                GOOD.replace("\"product\"", "\"Product\""),
                "name",
                "Product",
            ),
            (GOOD.replace("\"/api/products\"", "\"api\""), "route", "api"),
            (
                GOOD.replace("\"0.1.0\" }", "\"\" }"),
                "component.version",
                "\"\"",
            ),
            (
                GOOD.replace("memory_mib = 32", "memory_mib = 0"),
                "limits.memory_mib",
                "0",
            ),
            (
                GOOD.replace("timeout_ms = 2000", "timeout_ms = 9999999"),
                "limits.timeout_ms",
                "9999999",
            ),
        ];
        for (text, field, value) in cases {
            let msg = parse(&text).expect_err(field).to_string();
            assert!(msg.contains(&format!("`{field}`")), "{msg}");
            assert!(msg.contains(value), "{msg}");
            assert!(msg.contains("registry/microhost.toml"), "{msg}");
        }
    }

    #[test]
    fn secrets_come_from_a_source_and_share_no_name_with_config() {
        let with = |secrets: &str| format!("{GOOD}        secrets = {secrets}\n");
        let msg = parse(&with(r#"{ default_page_size = { env = "PAGE" } }"#))
            .expect_err("a config key")
            .to_string();
        assert!(
            msg.contains("secrets") && msg.contains("also a `config` key"),
            "{msg}"
        );
        let msg = parse(&with(r#"{ key = "inline-value" }"#))
            .expect_err("inline")
            .to_string();
        assert!(msg.contains("secrets.key"), "{msg}");
        let msg = parse(&with(
            r#"{ key = { env = "MICROHOST_TEST_UNSET_SECRET" } }"#,
        ))
        .expect_err("unset")
        .to_string();
        assert!(
            msg.contains("registry/microhost.toml")
                && msg.contains("\"product\"")
                && msg.contains("secrets.key")
                && msg.contains("MICROHOST_TEST_UNSET_SECRET"),
            "{msg}"
        );
    }

    #[test]
    fn a_fallback_service_is_another_service_without_a_fallback_service() {
        let service = |name: &str, route: &str, to: &str| {
            format!(
                "[[service]]\nname = {name:?}\nroute = {route:?}\n\
                 component = {{ path = \"a.wasm\", version = \"1\" }}\n\
                 policy = {{ fallback = {{ kind = \"service\", service = {to:?} }} }}\n"
            )
        };
        let plain = "[[service]]\nname = \"b\"\nroute = \"/b\"\ncomponent = { path = \"b.wasm\", version = \"1\" }\n";
        assert!(parse(&format!("{}{plain}", service("a", "/a", "b"))).is_ok());
        for (text, expect) in [
            (service("a", "/a", "a"), "is this service"),
            (service("a", "/a", "nope"), "not a service of the manifest"),
            (
                format!("{}{}", service("a", "/a", "b"), service("b", "/b", "a")),
                "may not be a service",
            ),
        ] {
            let msg = parse(&text).expect_err(expect).to_string();
            assert!(
                msg.contains("policy.fallback.service") && msg.contains(expect),
                "{msg}"
            );
        }
    }

    #[test]
    fn duplicate_names_and_routes_are_refused() {
        let twice = format!("{GOOD}\n{GOOD}");
        let msg = parse(&twice).expect_err("duplicate").to_string();
        assert!(msg.contains("same name"), "{msg}");
        let other = GOOD.replace("name = \"product\"", "name = \"other\"");
        let msg = parse(&format!("{GOOD}\n{other}"))
            .expect_err("dup route")
            .to_string();
        assert!(msg.contains("already the route"), "{msg}");
    }

    #[test]
    fn no_service_publishes_to_a_dead_letter_topic() {
        let subscriber = format!("{GOOD}[[service.subscribe]]\ntopic = \"orders\"\n");
        let forger = GOOD
            .replace("\"product\"", "\"forger\"")
            .replace("/api/products", "/forger");
        let text = format!("{subscriber}\n{forger}publishes = [\"orders.dlq.product\"]\n");
        let msg = parse(&text).expect_err("forged dead letters").to_string();
        assert!(
            msg.contains("service \"forger\": field `publishes`")
                && msg.contains(
                    "\"orders.dlq.product\" is the dead-letter topic of service \"product\""
                ),
            "{msg}"
        );
        // Subscribing to one is what it is for.
        let reader = forger
            .replace("\"forger\"", "\"audit\"")
            .replace("/forger", "/audit");
        let text = format!(
            "{subscriber}\n{reader}[[service.subscribe]]\ntopic = \"orders.dlq.product\"\n"
        );
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn calls_must_name_services_of_the_manifest() {
        let msg = parse(&format!("{GOOD}calls = [\"nobody\"]\n"))
            .expect_err("unknown callee")
            .to_string();
        assert!(msg.contains("`calls`") && msg.contains("nobody"), "{msg}");
    }

    #[test]
    fn a_single_component_becomes_service_app_on_root() -> Result<(), ManifestError> {
        let m = Manifest::single_component(Path::new("/tmp/with \"quote\".wasm"))?;
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.services[0].name, "app");
        assert_eq!(m.services[0].route, "/");
        assert_eq!(
            m.services[0].component.path,
            Path::new("/tmp/with \"quote\".wasm")
        );
        Ok(())
    }

    #[test]
    fn wrong_type_is_reported() {
        let msg = parse(&GOOD.replace("memory_mib = 32", "memory_mib = \"lots\""))
            .expect_err("type")
            .to_string();
        assert!(msg.contains("memory_mib"), "{msg}");
    }

    #[test]
    fn a_value_refused_while_parsing_names_service_field_and_line() {
        let text = format!("{GOOD}[[service.subscribe]]\ntopic = \"Not A Topic\"\n");
        let msg = parse(&text).expect_err("bad topic").to_string();
        let line = text
            .lines()
            .position(|l| l.contains("Not A Topic"))
            .map(|i| i + 1);
        assert!(
            msg.contains(&format!(
                "service \"product\": field `subscribe.topic` (line {}): \"Not A Topic\" is not a valid topic",
                line.unwrap_or_default()
            )),
            "{msg}"
        );
        let msg = parse(&format!("{GOOD}calls = [\"Billing\"]\n"))
            .expect_err("bad callee name")
            .to_string();
        assert!(msg.contains("field `calls` (line"), "{msg}");
        assert!(
            msg.contains("\"Billing\" is not a valid service name"),
            "{msg}"
        );
    }

    #[test]
    fn in_range_states_the_bounds_and_the_value() {
        let reason = |r: Result<(), FieldError>| r.map_err(|e| e.reason).err();
        assert_eq!(reason(in_range("f", 5u32, 1..=10)), None);
        assert_eq!(
            reason(in_range("f", 11u32, 1..=10)).as_deref(),
            Some("must be from 1 to 10, got 11")
        );
        assert_eq!(
            reason(in_range("f", 0u32, 1..)).as_deref(),
            Some("must be at least 1, got 0")
        );
        assert_eq!(
            reason(in_range("f", 101u32, ..=100)).as_deref(),
            Some("must be at most 100, got 101")
        );
        assert_eq!(
            reason(in_range("f", 101u32, 0..=100).map_err(|e| e.note("why"))).as_deref(),
            Some("must be at most 100, got 101 (why)")
        );
    }
}
