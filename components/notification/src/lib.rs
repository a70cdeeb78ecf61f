//! The notification service: turns events into notifications for their user.
//!
//! - on `user.registered`, `order.confirmed`, `order.cancelled` → a notification
//! - `GET /api/notifications` (token) → the caller's notifications, oldest first
use microhost_guest::{Event, Request, Response, Service, auth, kv};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Notification {
    id: String,
    user_id: String,
    kind: String,
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    order_id: Option<String>,
    created_at_ms: u64,
}

struct NotificationService;

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, (cents % 100).abs())
}

impl Service for NotificationService {
    fn handle(req: Request) -> Response {
        let Some(user) = auth::subject(&req) else {
            return Response::problem(401, "Unauthorized", "this route needs a token");
        };
        match (req.method.as_str(), req.segments().as_slice()) {
            ("GET", ["api", "notifications"]) => {}
            (method, ["api", "notifications"]) => {
                return Response::method_not_allowed(method, "GET");
            }
            _ => {
                return Response::not_found(&format!("no notification resource at {:?}", req.path));
            }
        }
        let list = || -> Result<Vec<Notification>, String> {
            let bucket = kv::open()?;
            let mut out = Vec::new();
            for key in kv::keys_with_prefix(&bucket, &format!("notif/{user}/"))? {
                if let Some(n) = kv::get_json(&bucket, &key)? {
                    out.push(n);
                }
            }
            Ok(out)
        };
        match list() {
            Ok(items) => Response::json(200, &serde_json::json!({ "items": items })),
            Err(e) => Response::internal_error(&e),
        }
    }

    fn on_event(event: Event) -> Result<(), String> {
        let data: serde_json::Value = serde_json::from_slice(&event.data)
            .map_err(|e| format!("{} event is not valid JSON: {e}", event.topic))?;
        let text = |field: &str| data[field].as_str().unwrap_or_default().to_string();
        let user_id = text("user_id");
        if user_id.is_empty() {
            return Err(format!("{} event without user_id", event.topic));
        }
        let (message, order_id) = match event.topic.as_str() {
            "user.registered" => (format!("Welcome, {}!", text("name")), None),
            "order.confirmed" => (
                format!(
                    "Your order {} is confirmed. Total: {}",
                    text("order_id"),
                    money(data["total_cents"].as_i64().unwrap_or(0))
                ),
                Some(text("order_id")),
            ),
            "order.cancelled" => (
                format!(
                    "Your order {} was cancelled: {}",
                    text("order_id"),
                    data["reason"].as_str().unwrap_or("no reason given")
                ),
                Some(text("order_id")),
            ),
            other => return Err(format!("unexpected topic {other:?}")),
        };
        let notification = Notification {
            id: microhost_guest::new_id(),
            user_id: user_id.clone(),
            kind: event.topic.clone(),
            message,
            order_id,
            created_at_ms: microhost_guest::now_ms(),
        };
        let bucket = kv::open()?;
        kv::set_json(
            &bucket,
            &format!("notif/{user_id}/{}", notification.id),
            &notification,
        )
    }
}

microhost_guest::service!(NotificationService);
