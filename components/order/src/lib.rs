//! The order service: places orders after checking the user and the products by
//! synchronous calls, then runs the stock saga over events.
//!
//! - `POST /api/orders` `{items: [{product_id, quantity}]}` (token) → 201, status `pending`
//! - `GET /api/orders/{id}` (token; own orders only)
//! - `GET /api/orders?limit=N&after=ID` (token) → `{items, next}`, own orders in creation order
//! - on `stock.reserved` → `confirmed` + `order.confirmed`;
//!   on `stock.rejected` → `cancelled` + `order.cancelled`
//!
//! Calls `user` and `product` at `http://<service>.internal/`. Publishes `order.created`.
use microhost_guest::kv::Store;
use microhost_guest::{Error, Event, Request, Response, Service, auth, client, events};
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

/// What order needs of a product service answer.
#[derive(Debug, Deserialize)]
struct Priced {
    price_cents: i64,
}

#[derive(Debug, Deserialize)]
struct StockAnswer {
    order_id: String,
    #[serde(default)]
    reason: Option<String>,
}

struct OrderService;

impl Service for OrderService {
    fn handle(req: Request) -> Result<Response, Error> {
        let user = auth::require_subject(&req)?;
        match (req.method.as_str(), req.segments().as_slice()) {
            ("POST", ["api", "orders"]) => create(&req, user),
            ("GET", ["api", "orders"]) => list(&req, user),
            ("GET", ["api", "orders", id]) => get(user, id),
            (method, ["api", "orders"]) => Err(Error::method_not_allowed(method, "GET, POST")),
            (method, ["api", "orders", _]) => Err(Error::method_not_allowed(method, "GET")),
            _ => Err(Error::not_found(&format!(
                "no order resource at {:?}",
                req.path
            ))),
        }
    }

    fn on_event(event: Event) -> Result<(), Error> {
        let answer: StockAnswer = event.json()?;
        let (status, topic) = match event.topic.as_str() {
            "stock.reserved" => ("confirmed", "order.confirmed"),
            "stock.rejected" => ("cancelled", "order.cancelled"),
            other => return Err(format!("unexpected topic {other:?}").into()),
        };
        let store = Store::open()?;
        let key = order_key(&answer.order_id);
        let Some(mut order) = store.get_json::<Order>(&key)? else {
            // Not ours (or gone): nothing to do, and nothing to retry.
            return Ok(());
        };
        if order.status != "pending" {
            return Ok(());
        }
        order.status = status.to_string();
        order.reason = answer.reason.clone();
        store.set_json(&key, &order)?;
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

fn order_key(id: &str) -> String {
    format!("order/{id}")
}

/// The index of a user's orders: `by-user/{user}/{order id}`, empty values.
fn by_user(user: &str) -> String {
    format!("by-user/{user}/")
}

fn validate(new: &NewOrder) -> Result<(), Error> {
    if new.items.is_empty() || new.items.len() > MAX_ITEMS {
        return Err(Error::bad_request(&format!(
            "field \"items\" must have 1 to {MAX_ITEMS} entries"
        )));
    }
    for (i, item) in new.items.iter().enumerate() {
        if item.product_id.trim().is_empty() {
            return Err(Error::bad_request(&format!(
                "items[{i}].product_id must not be empty"
            )));
        }
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(Error::bad_request(&format!(
                "items[{i}].quantity must be from 1 to {MAX_QUANTITY}, got {}",
                item.quantity
            )));
        }
    }
    Ok(())
}

/// The user must exist. A failed call is a 503 naming the user service.
fn check_user(user: &str) -> Result<(), Error> {
    let reply = client::get(&format!("http://user.internal/internal/users/{user}"))?;
    match reply.status {
        200 => Ok(()),
        404 => Err(Error::unauthorized("the token's user does not exist")),
        _ => Err(reply.unexpected().into()),
    }
}

/// A product's price is the product service's; a missing product is the client's fault.
fn price_of(product_id: &str) -> Result<i64, Error> {
    let reply = client::get(&format!(
        "http://product.internal/api/products/{product_id}"
    ))?;
    match reply.status {
        200 => Ok(reply.json::<Priced>()?.price_cents),
        404 => Err(Error::bad_request(&format!(
            "product {product_id:?} does not exist"
        ))),
        _ => Err(reply.unexpected().into()),
    }
}

fn create(req: &Request, user: &str) -> Result<Response, Error> {
    let new: NewOrder = req.json()?;
    validate(&new)?;
    check_user(user)?;
    let mut prices: BTreeMap<&str, i64> = BTreeMap::new();
    for item in &new.items {
        if !prices.contains_key(item.product_id.as_str()) {
            prices.insert(&item.product_id, price_of(&item.product_id)?);
        }
    }
    let mut total: i64 = 0;
    let mut items = Vec::new();
    for item in &new.items {
        let price = prices[item.product_id.as_str()];
        total = price
            .checked_mul(i64::from(item.quantity))
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| Error::bad_request("the order total is too large"))?;
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
    let store = Store::open()?;
    store.set_json(&order_key(&order.id), &order)?;
    store.set(&format!("{}{}", by_user(user), order.id), b"")?;
    let created = serde_json::json!({
        "order_id": order.id, "user_id": order.user_id, "total_cents": order.total_cents,
        "items": order.items.iter().map(|i| serde_json::json!({
            "product_id": i.product_id, "quantity": i.quantity,
        })).collect::<Vec<_>>(),
    });
    events::publish_json("order.created", Some(&order.id), &created)?;
    Ok(Response::json(201, &order).with_header("location", format!("/api/orders/{}", order.id)))
}

fn get(user: &str, id: &str) -> Result<Response, Error> {
    match Store::open()?.get_json::<Order>(&order_key(id))? {
        // Someone else's order is as good as missing.
        Some(order) if order.user_id == user => Ok(Response::json(200, &order)),
        _ => Err(Error::not_found(&format!("order {id:?} does not exist"))),
    }
}

fn list(req: &Request, user: &str) -> Result<Response, Error> {
    let page = req.page()?;
    let store = Store::open()?;
    let orders = store
        .page_ids(&by_user(user), &page)?
        .try_filter_map(|id| store.get_json::<Order>(&order_key(&id)))?;
    Ok(Response::json(200, &orders))
}

microhost_guest::service!(OrderService);
