//! The order service: places orders after checking the user and the products by
//! synchronous calls, then runs the stock saga over events.
//!
//! - `POST /api/orders` `{items: [{product_id, quantity}]}` (token) → 201, status `pending`
//! - `GET /api/orders/{id}`, `GET /api/orders` (token; own orders only)
//! - on `stock.reserved` → `confirmed` + `order.confirmed`;
//!   on `stock.rejected` → `cancelled` + `order.cancelled`
//!
//! Calls `user` and `product` at `http://<service>.internal/`. Publishes `order.created`.
use microhost_guest::{Event, Request, Response, Service, auth, client, events, kv};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const MAX_ITEMS: usize = 50;
const MAX_QUANTITY: u32 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    items: Vec<NewItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewItem {
    product_id: String,
    quantity: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Item {
    product_id: String,
    quantity: u32,
    price_cents: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: String,
    user_id: String,
    items: Vec<Item>,
    total_cents: i64,
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    created_at_ms: u64,
}

#[derive(Debug, Deserialize)]
struct StockAnswer {
    order_id: String,
    #[serde(default)]
    reason: Option<String>,
}

struct OrderService;

fn internal(e: String) -> Response {
    Response::internal_error(&e)
}

fn unavailable(what: &str, detail: &str) -> Response {
    Response::problem(
        503,
        "Service Unavailable",
        &format!("the {what} service is unavailable: {detail}"),
    )
}

impl Service for OrderService {
    fn handle(req: Request) -> Response {
        let Some(user) = auth::subject(&req).map(str::to_string) else {
            return Response::problem(401, "Unauthorized", "this route needs a token");
        };
        let segments = req.segments();
        let result = match (req.method.as_str(), segments.as_slice()) {
            ("POST", ["api", "orders"]) => create(&req, &user),
            ("GET", ["api", "orders"]) => list(&user),
            ("GET", ["api", "orders", id]) => get(&user, id),
            (method, ["api", "orders"]) => Ok(Response::method_not_allowed(method, "GET, POST")),
            (method, ["api", "orders", _]) => Ok(Response::method_not_allowed(method, "GET")),
            _ => Ok(Response::not_found(&format!(
                "no order resource at {:?}",
                req.path
            ))),
        };
        result.unwrap_or_else(|e| e)
    }

    fn on_event(event: Event) -> Result<(), String> {
        let answer: StockAnswer = serde_json::from_slice(&event.data)
            .map_err(|e| format!("{} event is not valid JSON: {e}", event.topic))?;
        let (status, topic) = match event.topic.as_str() {
            "stock.reserved" => ("confirmed", "order.confirmed"),
            "stock.rejected" => ("cancelled", "order.cancelled"),
            other => return Err(format!("unexpected topic {other:?}")),
        };
        let bucket = kv::open()?;
        let key = format!("order/{}", answer.order_id);
        let Some(mut order) = kv::get_json::<Order>(&bucket, &key)? else {
            // Not ours (or gone): nothing to do, and nothing to retry.
            return Ok(());
        };
        if order.status != "pending" {
            return Ok(());
        }
        order.status = status.to_string();
        order.reason = answer.reason.clone();
        kv::set_json(&bucket, &key, &order)?;
        events::publish_json(
            topic,
            Some(&order.id),
            &serde_json::json!({
                "order_id": order.id, "user_id": order.user_id,
                "total_cents": order.total_cents, "reason": order.reason,
            }),
        )?;
        Ok(())
    }
}

fn create(req: &Request, user: &str) -> Result<Response, Response> {
    let new: NewOrder = req.json()?;
    if new.items.is_empty() || new.items.len() > MAX_ITEMS {
        return Err(Response::bad_request(&format!(
            "field \"items\" must have 1 to {MAX_ITEMS} entries"
        )));
    }
    for (i, item) in new.items.iter().enumerate() {
        if item.product_id.trim().is_empty() {
            return Err(Response::bad_request(&format!(
                "items[{i}].product_id must not be empty"
            )));
        }
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(Response::bad_request(&format!(
                "items[{i}].quantity must be from 1 to {MAX_QUANTITY}, got {}",
                item.quantity
            )));
        }
    }

    // The user must exist.
    let reply = client::get(&format!("http://user.internal/internal/users/{user}"))
        .map_err(|e| unavailable("user", &e))?;
    match reply.status {
        200 => {}
        404 => {
            return Err(Response::problem(
                401,
                "Unauthorized",
                "the token's user does not exist",
            ));
        }
        _ => return Err(unavailable("user", &reply.detail())),
    }

    // Every product must exist; its price is the product service's.
    let mut prices: BTreeMap<&str, i64> = BTreeMap::new();
    for item in &new.items {
        if prices.contains_key(item.product_id.as_str()) {
            continue;
        }
        let reply = client::get(&format!(
            "http://product.internal/api/products/{}",
            item.product_id
        ))
        .map_err(|e| unavailable("product", &e))?;
        match reply.status {
            200 => {
                let product: serde_json::Value = reply.json().map_err(internal)?;
                let price = product["price_cents"]
                    .as_i64()
                    .ok_or_else(|| internal("product without price_cents".to_string()))?;
                prices.insert(&item.product_id, price);
            }
            404 => {
                return Err(Response::bad_request(&format!(
                    "product {:?} does not exist",
                    item.product_id
                )));
            }
            _ => return Err(unavailable("product", &reply.detail())),
        }
    }
    let mut total: i64 = 0;
    let mut items = Vec::new();
    for item in &new.items {
        let price = prices[item.product_id.as_str()];
        total = price
            .checked_mul(i64::from(item.quantity))
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| Response::bad_request("the order total is too large"))?;
        items.push(Item {
            product_id: item.product_id.clone(),
            quantity: item.quantity,
            price_cents: price,
        });
    }
    let order = Order {
        id: microhost_guest::new_id(),
        user_id: user.to_string(),
        items,
        total_cents: total,
        status: "pending".to_string(),
        reason: None,
        created_at_ms: microhost_guest::now_ms(),
    };
    let bucket = kv::open().map_err(internal)?;
    kv::set_json(&bucket, &format!("order/{}", order.id), &order).map_err(internal)?;
    bucket
        .set(&format!("by-user/{user}/{}", order.id), b"")
        .map_err(|e| internal(kv::describe(e)))?;
    let created = serde_json::json!({
        "order_id": order.id, "user_id": order.user_id, "total_cents": order.total_cents,
        "items": order.items.iter().map(|i| serde_json::json!({
            "product_id": i.product_id, "quantity": i.quantity,
        })).collect::<Vec<_>>(),
    });
    events::publish_json("order.created", Some(&order.id), &created).map_err(internal)?;
    Ok(Response::json(201, &order).with_header("location", format!("/api/orders/{}", order.id)))
}

fn get(user: &str, id: &str) -> Result<Response, Response> {
    let bucket = kv::open().map_err(internal)?;
    match kv::get_json::<Order>(&bucket, &format!("order/{id}")).map_err(internal)? {
        // Someone else's order is as good as missing.
        Some(order) if order.user_id == user => Ok(Response::json(200, &order)),
        _ => Err(Response::not_found(&format!("order {id:?} does not exist"))),
    }
}

fn list(user: &str) -> Result<Response, Response> {
    let bucket = kv::open().map_err(internal)?;
    let prefix = format!("by-user/{user}/");
    let mut orders = Vec::new();
    for key in kv::keys_with_prefix(&bucket, &prefix).map_err(internal)? {
        let id = &key[prefix.len()..];
        if let Some(order) =
            kv::get_json::<Order>(&bucket, &format!("order/{id}")).map_err(internal)?
        {
            orders.push(order);
        }
    }
    Ok(Response::json(200, &serde_json::json!({ "items": orders })))
}

microhost_guest::service!(OrderService);
