//! The seed's notification service sends each notification to a webhook: a real HTTP
//! receiver on loopback checks the Standard Webhooks signature (HMAC-SHA256 with a
//! secret from `[service.secrets]`), reads the CloudEvent with the SDK, and counts what
//! it accepted per idempotency key. Failures are retried through the bus, then
//! dead-lettered; redrive delivers once.

use crate::assert_eventually;
use crate::seed::{notifications, register_and_login, seed_host_from};
use crate::support::Host;
use base64::Engine as _;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const SECRET: &str = "whsec_c2VlZC13ZWJob29rLXNlY3JldC0zOWYx";
const WAIT: Duration = Duration::from_secs(30);

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    idempotency_key: String,
    signed: bool,
    event: cloudevents::Event,
    status: u16,
}

#[derive(Default)]
struct Receiver {
    /// Answer 500 to this many more requests.
    fail_next: AtomicUsize,
    /// Answer 503 to every request.
    down: AtomicBool,
    received: Mutex<Vec<Received>>,
}

impl Receiver {
    fn received(&self) -> Vec<Received> {
        self.received.lock().clone()
    }

    /// How many requests were accepted (2xx), per idempotency key.
    fn accepted(&self) -> HashMap<String, usize> {
        let mut accepted = HashMap::new();
        for r in self.received.lock().iter().filter(|r| r.status == 200) {
            *accepted.entry(r.idempotency_key.clone()).or_default() += 1;
        }
        accepted
    }
}

fn verify(id: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("the secret is base64");
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        &signed,
    );
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.as_ref())
    );
    // The header may carry several space-separated signatures.
    signature.split(' ').any(|s| s == expected)
}

async fn start_receiver() -> anyhow::Result<(std::net::SocketAddr, Arc<Receiver>)> {
    let receiver = Arc::new(Receiver::default());
    let state = receiver.clone();
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: http::HeaderMap, body: bytes::Bytes| {
            let state = state.clone();
            async move {
                let text = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let (id, timestamp) = (text("webhook-id"), text("webhook-timestamp"));
                let signed = verify(&id, &timestamp, &body, &text("webhook-signature"));
                let event: cloudevents::Event =
                    serde_json::from_slice(&body).expect("the webhook body is a CloudEvent");
                assert_eq!(text("content-type"), "application/cloudevents+json");
                let status = if state.down.load(Ordering::SeqCst) {
                    503
                } else if state
                    .fail_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    500
                } else if !signed {
                    401
                } else {
                    200
                };
                state.received.lock().push(Received {
                    id,
                    idempotency_key: text("idempotency-key"),
                    signed,
                    event,
                    status,
                });
                http::StatusCode::from_u16(status).expect("a status")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, receiver))
}

/// The shipped manifest with the notification service's webhook pointed at `receiver`
/// (its secret in a file under `data`), and its `user.registered` subscription retried
/// three times, quickly.
async fn seed_with_webhook(data: &Path, receiver: std::net::SocketAddr) -> anyhow::Result<Host> {
    let secret = data.join("webhook-secret");
    std::fs::write(&secret, format!("{SECRET}\n"))?;
    seed_host_from(data, |text| {
        let start = text
            .find("name = \"notification\"")
            .expect("the seed has a notification service");
        let end = text[start..]
            .find("[[service]]")
            .map_or(text.len(), |n| start + n);
        let block = text[start..end]
            .replacen(
                "protected = true\n",
                &format!(
                    "protected = true\nallowed_hosts = [\"{receiver}\"]\n\
                     config = {{ webhook_url = \"http://{receiver}/hooks\" }}\n\
                     secrets = {{ webhook_secret = {{ file = {:?} }} }}\n",
                    secret.display().to_string()
                ),
                1,
            )
            .replacen(
                "topic = \"user.registered\"\n",
                "topic = \"user.registered\"\nmax_deliver = 3\nbackoff_ms = 50\n",
                1,
            );
        format!("{}{block}{}", &text[..start], &text[end..])
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_notification_reaches_the_webhook_once_signed_through_retries_and_redrive()
-> anyhow::Result<()> {
    use cloudevents::event::{AttributesReader as _, Data};
    let dir = crate::support::data_dir();
    let (addr, receiver) = start_receiver().await?;
    let host = seed_with_webhook(dir.path(), addr).await?;

    // The receiver fails twice; the bus retries; the third send is taken.
    receiver.fail_next.store(2, Ordering::SeqCst);
    let (ada, ada_token) = register_and_login(&host, "ada@example.com", "Ada").await?;
    assert_eventually!(
        WAIT,
        receiver.accepted().len() == 1,
        "the welcome reached the webhook: {:?}",
        receiver.received()
    );
    let sent = receiver.received();
    assert_eq!(
        sent.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    let first = &sent[0];
    for r in &sent {
        assert!(r.signed, "a valid signature on every attempt: {r:?}");
        assert_eq!(r.id, first.id, "the same webhook-id on every attempt");
        assert_eq!(r.idempotency_key, first.id);
    }
    let event = &sent[2].event;
    assert_eq!(event.ty(), "notification.created");
    assert_eq!(event.id(), first.id);
    let Some(Data::Json(data)) = event.data() else {
        panic!("JSON data: {event}");
    };
    assert_eq!(data["user_id"], ada.as_str());
    assert_eq!(data["message"], "Welcome, Ada!");
    assert_eq!(data["id"], first.id.as_str());
    let stored = notifications(&host, &ada_token).await?;
    assert_eq!(stored.len(), 1, "stored once: {stored:?}");
    assert_eq!(stored[0]["id"], first.id.as_str());

    // Down past max_deliver: the notification is a dead letter, and nothing is stored.
    receiver.down.store(true, Ordering::SeqCst);
    let (bob, bob_token) = register_and_login(&host, "bob@example.com", "Bob").await?;
    let dead_letters = || async {
        let dead = host
            .admin_get("/admin/subscriptions/notification/user.registered/dead-letters")
            .await?;
        anyhow::Ok(dead["dead_letters"].as_array().map_or(0, Vec::len))
    };
    assert_eventually!(
        WAIT,
        dead_letters().await? == 1,
        "dead-lettered after 3 attempts"
    );
    let to_bob = |r: &Received| matches!(r.event.data(), Some(Data::Json(d)) if d["user_id"] == bob.as_str());
    assert_eq!(receiver.received().iter().filter(|r| to_bob(r)).count(), 3);
    assert!(notifications(&host, &bob_token).await?.is_empty());

    // Up again; redrive delivers it once.
    receiver.down.store(false, Ordering::SeqCst);
    let r = host
        .admin_post("/admin/subscriptions/notification/user.registered/redrive")
        .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eventually!(
        WAIT,
        receiver.accepted().len() == 2,
        "the redriven welcome reached the webhook: {:?}",
        receiver.received()
    );
    assert_eventually!(
        WAIT,
        notifications(&host, &bob_token).await?.len() == 1,
        "bob's notification is stored"
    );
    // Nothing is sent again: each key was accepted exactly once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 2, "{accepted:?}");
    assert!(accepted.values().all(|n| *n == 1), "{accepted:?}");
    assert_eq!(dead_letters().await?, 0);
    host.shutdown().await;
    Ok(())
}
