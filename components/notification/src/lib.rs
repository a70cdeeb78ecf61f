//! The notification service: turns events into notifications for their user.
//!
//! - on `user.registered`, `order.confirmed`, `order.cancelled` → a notification
//! - `GET /api/notifications?limit=N&after=ID` (token) → `{items, next}`, the caller's
//!   notifications, oldest first
use microhost_guest::kv::Store;
use microhost_guest::{Error, Event, Request, Response, Service, auth};
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
    fn handle(req: Request) -> Result<Response, Error> {
        let user = auth::require_subject(&req)?;
        match (req.method.as_str(), req.segments().as_slice()) {
            ("GET", ["api", "notifications"]) => list(&req, user),
            (method, ["api", "notifications"]) => Err(Error::method_not_allowed(method, "GET")),
            _ => Err(Error::not_found(&format!(
                "no notification resource at {:?}",
                req.path
            ))),
        }
    }

    fn on_event(event: Event) -> Result<(), Error> {
        let data: serde_json::Value = event.json()?;
        let text = |field: &str| data[field].as_str().unwrap_or_default().to_string();
        let user_id = text("user_id");
        if user_id.is_empty() {
            return Err(format!("{} event without user_id", event.topic).into());
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
            other => return Err(format!("unexpected topic {other:?}").into()),
        };
        let notification = Notification {
            id: microhost_guest::new_id(),
            user_id: user_id.clone(),
            kind: event.topic.clone(),
            message,
            order_id,
            created_at_ms: microhost_guest::now_ms(),
        };
        Store::open()?.set_json(
            &format!("{}{}", by_user(&user_id), notification.id),
            &notification,
        )?;
        Ok(())
    }
}

/// Where a user's notifications are kept: `notif/{user}/{notification id}`.
fn by_user(user: &str) -> String {
    format!("notif/{user}/")
}

fn list(req: &Request, user: &str) -> Result<Response, Error> {
    let page = req.page()?;
    let notifications = Store::open()?.page_json::<Notification>(&by_user(user), &page)?;
    Ok(Response::json(200, &notifications))
}

microhost_guest::service!(NotificationService);
