//! Guests' stdout and stderr: lines tagged with the service, version, stream and request,
//! read back through the admin API and the CLI, and followed as server-sent events.

use crate::support::{Host, Svc, data_dir};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_output_is_tagged_with_its_request_and_can_be_followed() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&[Svc::new("trap", "/", "test-trap")], dir.path()).await?;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = host
        .request(
            http::Method::GET,
            "/first",
            &[("x-request-id", "req-log-1"), ("traceparent", traceparent)],
            Bytes::new(),
        )
        .await?;
    assert_eq!(r.status, 502, "{}", r.text());

    let logs = host.admin_get("/admin/services/trap/logs?limit=50").await?;
    let lines = logs["lines"].as_array().cloned().unwrap_or_default();
    let panic = lines
        .iter()
        .find(|l| {
            l["line"]
                .as_str()
                .is_some_and(|t| t.contains("test-trap was asked for /first"))
        })
        .ok_or_else(|| anyhow::anyhow!("no panic line in {logs}"))?;
    assert_eq!(panic["service"], "trap");
    assert_eq!(panic["version"], "v1");
    assert_eq!(panic["stream"], "stderr");
    assert_eq!(panic["request_id"], "req-log-1");
    assert_eq!(panic["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    // The gateway's own span (a child of the client's), as the guest's traceparent says.
    let span = panic["span_id"].as_str().unwrap_or_default();
    assert!(span.len() == 16 && span != "b7ad6b7169203331", "{panic}");

    // The CLI prints the same lines.
    let output = host.cli(&["logs", "trap", "--limit", "50"]).await?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed
            .lines()
            .any(|l| l.contains("trap@v1 stderr req-log-1:") && l.contains("/first")),
        "{printed}"
    );

    // Following: the backlog, then a line written after the stream opened.
    let request =
        http::Request::get(host.admin_url("/admin/services/trap/logs?limit=1&follow=true"))
            .header(
                "authorization",
                format!("Bearer {}", host.running.admin_token),
            )
            .body(Full::new(Bytes::new()))?;
    let response = crate::support::client().request(request).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut body = response.into_body();
    let mut seen = String::new();
    let mut asked = false;
    tokio::time::timeout(Duration::from_secs(10), async {
        while !seen.contains("/second") {
            if seen.contains("event: line") && !asked {
                asked = true;
                let r = host
                    .request(
                        http::Method::GET,
                        "/second",
                        &[("x-request-id", "req-log-2")],
                        Bytes::new(),
                    )
                    .await?;
                assert_eq!(r.status, 502);
            }
            let Some(frame) = body.frame().await else {
                anyhow::bail!("the stream ended: {seen}");
            };
            if let Ok(data) = frame?.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("no followed line within 10 s: {seen}"))??;
    assert!(seen.contains(r#""request_id":"req-log-2""#), "{seen}");
    drop(body);

    let r = host
        .send(
            http::Method::GET,
            &host.admin_url("/admin/services/nope/logs"),
            Bytes::new(),
            Some(&host.running.admin_token),
        )
        .await?;
    assert_eq!(r.status, 404, "{}", r.text());
    host.shutdown().await;
    Ok(())
}
