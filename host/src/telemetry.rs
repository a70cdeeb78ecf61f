//! Traces with OpenTelemetry, exported with OTLP (HTTP/protobuf or gRPC) when an
//! endpoint is configured: the manifest's `[telemetry]` table, else the standard
//! `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`, `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`,
//! `OTEL_SERVICE_NAME` and `OTEL_TRACES_SAMPLER(_ARG)` variables; off when neither names
//! an endpoint (or `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`).
//!
//! The host's spans carry the ids of the W3C `traceparent` it passes on, so the trace
//! ids and span ids in the access log and the guests' log lines are those of the
//! exported spans. Each layer opens its span as a child of the `traceparent` it was
//! given and hands its own on: edge → dispatch → invoke (the guest sees the invocation's
//! span) → outgoing call → the callee's dispatch …; a publish is a span whose context
//! the event carries, and a delivery is that span's child, so an order's events and the
//! deliveries they cause are one trace. With tracing off every layer passes the
//! `traceparent` it got on unchanged, as before.

use crate::config::TelemetrySpec;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use std::borrow::Cow;
use std::sync::Arc;

/// The exporter of a running host; [`Telemetry::shutdown`] flushes it.
#[derive(Default)]
pub(crate) struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    tracer: Tracer,
}

/// Opens spans (a no-op when tracing is off). Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Tracer(Option<Arc<opentelemetry_sdk::trace::SdkTracer>>);

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Tracer(on)"
        } else {
            "Tracer(off)"
        })
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn sampler(name: &str, arg: Option<f64>) -> anyhow::Result<opentelemetry_sdk::trace::Sampler> {
    use opentelemetry_sdk::trace::Sampler;
    let ratio = || -> anyhow::Result<f64> {
        match arg {
            Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
            Some(r) => anyhow::bail!("the sampler argument must be from 0 to 1, got {r}"),
            None => Ok(1.0),
        }
    };
    Ok(match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
        }
        other => anyhow::bail!(
            "unknown sampler {other:?}: use always_on, always_off, traceidratio, \
             parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
        ),
    })
}

impl Telemetry {
    /// Starts the exporter `spec` (and the environment) asks for, or none. Must run
    /// inside the tokio runtime (the batch exporter is a task of it).
    pub(crate) fn start(spec: &TelemetrySpec) -> anyhow::Result<Telemetry> {
        use opentelemetry_otlp::WithExportConfig as _;
        let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let from_env = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
        if disabled || (spec.endpoint.is_none() && from_env.is_none()) {
            return Ok(Telemetry::default());
        }
        let (protocol, protocol_from) = match &spec.protocol {
            Some(p) => (p.clone(), "[telemetry] protocol"),
            None => match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
                Some(p) => (p, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
                None => match env("OTEL_EXPORTER_OTLP_PROTOCOL") {
                    Some(p) => (p, "OTEL_EXPORTER_OTLP_PROTOCOL"),
                    None => ("http/protobuf".to_string(), "the default"),
                },
            },
        };
        let exporter = match protocol.as_str() {
            "http/protobuf" => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                if let Some(endpoint) = &spec.endpoint {
                    builder = builder
                        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
                }
                builder.build()?
            }
            "grpc" => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                if let Some(endpoint) = &spec.endpoint {
                    builder = builder.with_endpoint(endpoint.clone());
                }
                builder.build()?
            }
            other => anyhow::bail!(
                "{protocol_from}: unsupported OTLP protocol {other:?}: use \"http/protobuf\" or \
                 \"grpc\""
            ),
        };
        let service_name = spec
            .service_name
            .clone()
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| "microhost".to_string());
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service_name)
            .build();
        let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
        let mut builder = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource);
        // Else the SDK reads OTEL_TRACES_SAMPLER(_ARG) itself.
        if let Some(name) = &spec.sampler {
            builder = builder.with_sampler(
                sampler(name, spec.sampler_arg)
                    .map_err(|e| anyhow::anyhow!("[telemetry] sampler: {e}"))?,
            );
        }
        let provider = builder.build();
        let tracer = provider.tracer_with_scope(
            opentelemetry::InstrumentationScope::builder("microhost")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        tracing::info!(
            protocol,
            endpoint = spec
                .endpoint
                .as_deref()
                .or(from_env.as_deref())
                .unwrap_or("-"),
            "exporting traces with OTLP"
        );
        Ok(Telemetry {
            provider: Some(provider),
            tracer: Tracer(Some(Arc::new(tracer))),
        })
    }

    pub(crate) fn tracer(&self) -> Tracer {
        self.tracer.clone()
    }

    /// Exports what is buffered and stops the exporter.
    pub(crate) async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "flushing traces failed");
            }
        }
    }
}

/// The ids and flags of a valid `traceparent`.
fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.split('-');
    let (_version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace != TraceId::INVALID && span != SpanId::INVALID).then(|| {
        SpanContext::new(
            trace,
            span,
            TraceFlags::new(flags),
            true,
            TraceState::default(),
        )
    })
}

fn format(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

impl Tracer {
    /// A span under `parent` (a `traceparent`) with a new span id; off, or without a
    /// valid parent, a span that passes `parent` on unchanged.
    /// `name` is only made when the span is (tracing off costs no allocation).
    pub(crate) fn child<N: Into<Cow<'static, str>>>(
        &self,
        name: impl FnOnce() -> N,
        kind: SpanKind,
        parent: Option<&str>,
    ) -> Span {
        let Some(tracer) = &self.0 else {
            return Span::off(parent);
        };
        let Some(parent_context) = parent.and_then(parse) else {
            return Span::off(parent);
        };
        let id = loop {
            let id = SpanId::from(rand::random::<u64>());
            if id != SpanId::INVALID {
                break id;
            }
        };
        let this = SpanContext::new(
            parent_context.trace_id(),
            id,
            parent_context.trace_flags(),
            false,
            TraceState::default(),
        );
        start(tracer, name().into(), kind, Some(parent_context), &this)
    }

    /// The span whose ids `this` (a `traceparent`) already names, under `parent`: the
    /// edge's, whose `traceparent` the gateway made.
    pub(crate) fn adopt<N: Into<Cow<'static, str>>>(
        &self,
        name: impl FnOnce() -> N,
        kind: SpanKind,
        parent: Option<&str>,
        this: &str,
    ) -> Span {
        let (Some(tracer), Some(this_context)) = (&self.0, parse(this)) else {
            return Span::off(Some(this));
        };
        start(
            tracer,
            name().into(),
            kind,
            parent.and_then(parse),
            &this_context,
        )
    }
}

fn start(
    tracer: &opentelemetry_sdk::trace::SdkTracer,
    name: Cow<'static, str>,
    kind: SpanKind,
    parent: Option<SpanContext>,
    this: &SpanContext,
) -> Span {
    let mut builder = tracer.span_builder(name).with_kind(kind);
    builder.trace_id = Some(this.trace_id());
    builder.span_id = Some(this.span_id());
    let cx = match parent {
        Some(parent) if parent.trace_id() == this.trace_id() => {
            Context::new().with_remote_span_context(parent)
        }
        _ => Context::new(),
    };
    let span = tracer.build_with_context(builder, &cx);
    use opentelemetry::trace::Span as _;
    // The sampler's verdict goes on with the context.
    let traceparent = format(&SpanContext::new(
        this.trace_id(),
        this.span_id(),
        span.span_context().trace_flags(),
        false,
        TraceState::default(),
    ));
    Span {
        span: Some(span),
        traceparent: Some(traceparent),
    }
}

/// An open span; it ends when dropped.
pub(crate) struct Span {
    span: Option<opentelemetry_sdk::trace::Span>,
    traceparent: Option<String>,
}

impl Span {
    fn off(parent: Option<&str>) -> Span {
        Span {
            span: None,
            traceparent: parent.map(str::to_string),
        }
    }

    /// The `traceparent` to hand on: this span's (or, off, the one it was given).
    pub(crate) fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Whether it is exported (tracing on and sampled).
    pub(crate) fn is_recording(&self) -> bool {
        use opentelemetry::trace::Span as _;
        self.span.as_ref().is_some_and(|s| s.is_recording())
    }

    pub(crate) fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        use opentelemetry::trace::Span as _;
        if let Some(span) = &mut self.span {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks it failed, saying why.
    pub(crate) fn fail(&mut self, why: impl Into<Cow<'static, str>>) {
        use opentelemetry::trace::Span as _;
        if let Some(span) = &mut self.span {
            span.set_status(Status::error(why));
        }
    }

    /// Records the HTTP status of the answer (5xx is an error, per the semantic
    /// conventions for servers).
    pub(crate) fn status(&mut self, status: u16) {
        if self.span.is_none() {
            return;
        }
        self.set("http.response.status_code", i64::from(status));
        if status >= 500 {
            self.fail(format!("HTTP {status}"));
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        use opentelemetry::trace::Span as _;
        if let Some(span) = &mut self.span {
            span.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_and_format_back() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = parse(tp).expect("valid");
        assert_eq!(format(&context), tp);
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c",
            "garbage",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn off_spans_pass_the_context_on_unchanged() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let span = Tracer::default().child(|| "x", SpanKind::Internal, Some(tp));
        assert_eq!(span.traceparent(), Some(tp));
        assert!(!span.is_recording());
        assert_eq!(
            Tracer::default()
                .child(|| "x", SpanKind::Internal, None)
                .traceparent(),
            None
        );
    }

    #[test]
    fn unknown_samplers_and_bad_ratios_are_refused() {
        assert!(sampler("parentbased_traceidratio", Some(0.25)).is_ok());
        let e = sampler("sometimes", None).expect_err("unknown").to_string();
        assert!(e.contains("sometimes"), "{e}");
        assert!(sampler("traceidratio", Some(1.5)).is_err());
    }
}
