//! Traces over OTLP/gRPC: a host configured with `protocol = "grpc"` exports its spans to
//! an in-process gRPC trace service (the `opentelemetry-proto` server), and the span
//! ids it exports are the ones the access log and the guest see.

use crate::support::{Host, Svc, data_dir};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use std::sync::Arc;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves the gRPC trace service over h2c on a free port.
async fn start_grpc_collector() -> anyhow::Result<(std::net::SocketAddr, Collector)> {
    let collector = Collector::default();
    let service = TraceServiceServer::new(collector.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    Ok((addr, collector))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_out_over_grpc_with_the_ids_the_guest_sees() -> anyhow::Result<()> {
    let (addr, collector) = start_grpc_collector().await?;
    let dir = data_dir();
    let mut config = crate::support::config(&[Svc::new("echo", "/", "test-echo")], dir.path())?;
    config.manifest.telemetry = microhost::config::TelemetrySpec {
        endpoint: Some(format!("http://{addr}")),
        protocol: Some("grpc".to_string()),
        sampler: Some("always_on".to_string()),
        ..Default::default()
    };
    let host = Host::start_with(config).await?;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = host
        .request(http::Method::GET, "/hello", &[("traceparent", parent)], "")
        .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    // What the guest got: the trace continued, under the invocation's span.
    let seen = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(
        parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "the client's trace"
    );
    host.shutdown().await;

    let spans = collector.0.lock().clone();
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let edge = spans.iter().find(|s| s.name == "GET /").unwrap_or_else(|| {
        panic!(
            "no edge span: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    });
    assert_eq!(hex(&edge.trace_id), parts[1]);
    assert_eq!(
        hex(&edge.parent_span_id),
        "00f067aa0ba902b7",
        "the client's span is its parent"
    );
    let invoke = spans
        .iter()
        .find(|s| s.name == "invoke echo")
        .expect("an invocation span");
    assert_eq!(
        hex(&invoke.span_id),
        parts[2],
        "the guest sees the invocation's span"
    );
    let dispatch = spans
        .iter()
        .find(|s| s.name == "dispatch echo")
        .expect("a dispatch span");
    assert_eq!(dispatch.parent_span_id, edge.span_id);
    assert_eq!(invoke.parent_span_id, dispatch.span_id);
    Ok(())
}
