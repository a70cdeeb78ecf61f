//! The product service: a catalog of products with prices (integer cents) and stock.
//!
//! - `POST /api/products` `{name, price_cents, stock}` → 201 with the product
//! - `GET /api/products?limit=N&after=ID` → `{items, next}` in creation order
//! - `GET /api/products/{id}` → the product, or 404
//! - `PUT /api/products/{id}/stock` `{stock}` → the product with its new stock
//! - on `order.created`: reserves stock for all items or none, and publishes
//!   `stock.reserved` or `stock.rejected`
//!
//! State lives in the service's key-value bucket under `product:{id}`.
use microhost_guest::{Event, Request, Response, Service, events, kv};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "product:";
const MAX_NAME_CHARS: usize = 200;
const MAX_PAGE: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProduct {
    name: String,
    price_cents: i64,
    stock: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StockUpdate {
    stock: i64,
}

#[derive(Debug, Deserialize)]
struct OrderCreated {
    order_id: String,
    items: Vec<OrderLine>,
}

#[derive(Debug, Deserialize)]
struct OrderLine {
    product_id: String,
    quantity: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Product {
    id: String,
    name: String,
    price_cents: i64,
    stock: i64,
    created_at_ms: u64,
}

struct ProductService;

impl Service for ProductService {
    fn handle(req: Request) -> Response {
        let segments = req.segments();
        let result = match (req.method.as_str(), segments.as_slice()) {
            ("POST", ["api", "products"]) => create(&req),
            ("GET", ["api", "products"]) => list(&req),
            ("GET", ["api", "products", id]) => get(id),
            ("PUT", ["api", "products", id, "stock"]) => set_stock(&req, id),
            (method, ["api", "products"]) => Ok(Response::method_not_allowed(method, "GET, POST")),
            (method, ["api", "products", _]) => Ok(Response::method_not_allowed(method, "GET")),
            (method, ["api", "products", _, "stock"]) => {
                Ok(Response::method_not_allowed(method, "PUT"))
            }
            _ => Ok(Response::not_found(&format!(
                "no product resource at {:?}",
                req.path
            ))),
        };
        result.unwrap_or_else(|e| e)
    }

    fn on_event(event: Event) -> Result<(), String> {
        if event.topic != "order.created" {
            return Err(format!("unexpected topic {:?}", event.topic));
        }
        let order: OrderCreated = serde_json::from_slice(&event.data)
            .map_err(|e| format!("order.created event is not valid JSON: {e}"))?;
        let bucket = kv::open()?;
        // Reserve all or nothing: check every line first (a product may appear twice).
        let mut needed: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        for line in &order.items {
            *needed.entry(line.product_id.as_str()).or_default() += line.quantity;
        }
        let mut products = Vec::new();
        let mut shortage = None;
        for (id, quantity) in &needed {
            match kv::get_json::<Product>(&bucket, &format!("{PREFIX}{id}"))? {
                None => {
                    shortage = Some(format!("product {id:?} does not exist"));
                    break;
                }
                Some(p) if p.stock < *quantity => {
                    shortage = Some(format!(
                        "not enough stock of {:?}: {} wanted, {} left",
                        p.name, quantity, p.stock
                    ));
                    break;
                }
                Some(p) => products.push((p, *quantity)),
            }
        }
        if let Some(reason) = shortage {
            events::publish_json(
                "stock.rejected",
                Some(&order.order_id),
                &serde_json::json!({ "order_id": order.order_id, "reason": reason }),
            )?;
            return Ok(());
        }
        for (mut product, quantity) in products {
            product.stock -= quantity;
            kv::set_json(&bucket, &format!("{PREFIX}{}", product.id), &product)?;
        }
        events::publish_json(
            "stock.reserved",
            Some(&order.order_id),
            &serde_json::json!({ "order_id": order.order_id }),
        )?;
        Ok(())
    }
}

fn set_stock(req: &Request, id: &str) -> Result<Response, Response> {
    let update: StockUpdate = req.json()?;
    if update.stock < 0 {
        return Err(Response::bad_request(&format!(
            "field \"stock\" must be zero or more, got {}",
            update.stock
        )));
    }
    let bucket = kv::open().map_err(|e| Response::internal_error(&e))?;
    let key = format!("{PREFIX}{id}");
    let Some(mut product) =
        kv::get_json::<Product>(&bucket, &key).map_err(|e| Response::internal_error(&e))?
    else {
        return Err(Response::not_found(&format!(
            "product {id:?} does not exist"
        )));
    };
    product.stock = update.stock;
    kv::set_json(&bucket, &key, &product).map_err(|e| Response::internal_error(&e))?;
    Ok(Response::json(200, &product))
}

fn validate(new: &NewProduct) -> Result<(), Response> {
    let name = new.name.trim();
    if name.is_empty() {
        return Err(Response::bad_request("field \"name\" must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Response::bad_request(&format!(
            "field \"name\" must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    if new.price_cents < 0 {
        return Err(Response::bad_request(&format!(
            "field \"price_cents\" must be zero or more, got {}",
            new.price_cents
        )));
    }
    if new.stock < 0 {
        return Err(Response::bad_request(&format!(
            "field \"stock\" must be zero or more, got {}",
            new.stock
        )));
    }
    Ok(())
}

fn create(req: &Request) -> Result<Response, Response> {
    let new: NewProduct = req.json()?;
    validate(&new)?;
    let bucket = kv::open().map_err(|e| Response::internal_error(&e))?;
    let product = Product {
        id: microhost_guest::new_id(),
        name: new.name.trim().to_string(),
        price_cents: new.price_cents,
        stock: new.stock,
        created_at_ms: microhost_guest::now_ms(),
    };
    kv::set_json(&bucket, &format!("{PREFIX}{}", product.id), &product)
        .map_err(|e| Response::internal_error(&e))?;
    Ok(Response::json(201, &product)
        .with_header("location", format!("/api/products/{}", product.id)))
}

fn get(id: &str) -> Result<Response, Response> {
    let bucket = kv::open().map_err(|e| Response::internal_error(&e))?;
    match kv::get_json::<Product>(&bucket, &format!("{PREFIX}{id}"))
        .map_err(|e| Response::internal_error(&e))?
    {
        Some(product) => Ok(Response::json(200, &product)),
        None => Err(Response::not_found(&format!(
            "product {id:?} does not exist"
        ))),
    }
}

fn list(req: &Request) -> Result<Response, Response> {
    let default_limit = microhost_guest::config("default_page_size")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let limit = match req.query_param("limit") {
        None => default_limit,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(Response::bad_request(&format!(
                    "query parameter \"limit\" must be a whole number from 1 to {MAX_PAGE}, got {raw:?}"
                )));
            }
        },
    };
    let after = req.query_param("after").unwrap_or("");
    let bucket = kv::open().map_err(|e| Response::internal_error(&e))?;
    // Ids sort by creation time, and keys are listed in byte order.
    let keys = kv::keys_with_prefix(&bucket, PREFIX).map_err(|e| Response::internal_error(&e))?;
    let mut items = Vec::new();
    let mut more = false;
    for key in keys.iter().filter(|k| k[PREFIX.len()..] > *after) {
        if items.len() == limit {
            more = true;
            break;
        }
        if let Some(product) =
            kv::get_json::<Product>(&bucket, key).map_err(|e| Response::internal_error(&e))?
        {
            items.push(product);
        }
    }
    let next = if more {
        items.last().map(|p| p.id.clone())
    } else {
        None
    };
    Ok(Response::json(
        200,
        &serde_json::json!({ "items": items, "next": next }),
    ))
}

microhost_guest::service!(ProductService);
