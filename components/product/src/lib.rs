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
use microhost_guest::kv::Store;
use microhost_guest::{Error, Event, Request, Response, Service, events};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "product:";
const MAX_NAME_CHARS: usize = 200;

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
    fn handle(req: Request) -> Result<Response, Error> {
        match (req.method.as_str(), req.segments().as_slice()) {
            ("POST", ["api", "products"]) => create(&req),
            ("GET", ["api", "products"]) => list(&req),
            ("GET", ["api", "products", id]) => get(id),
            ("PUT", ["api", "products", id, "stock"]) => set_stock(&req, id),
            (method, ["api", "products"]) => Err(Error::method_not_allowed(method, "GET, POST")),
            (method, ["api", "products", _]) => Err(Error::method_not_allowed(method, "GET")),
            (method, ["api", "products", _, "stock"]) => {
                Err(Error::method_not_allowed(method, "PUT"))
            }
            _ => Err(Error::not_found(&format!(
                "no product resource at {:?}",
                req.path
            ))),
        }
    }

    fn on_event(event: Event) -> Result<(), Error> {
        if event.topic != "order.created" {
            return Err(format!("unexpected topic {:?}", event.topic).into());
        }
        let order: OrderCreated = event.json()?;
        let store = Store::open()?;
        // Reserve all or nothing: check every line first (a product may appear twice).
        let mut needed: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        for line in &order.items {
            *needed.entry(line.product_id.as_str()).or_default() += line.quantity;
        }
        let mut products = Vec::new();
        let mut shortage = None;
        for (id, quantity) in &needed {
            match store.get_json::<Product>(&key(id))? {
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
            store.set_json(&key(&product.id), &product)?;
        }
        events::publish_json(
            "stock.reserved",
            Some(&order.order_id),
            &serde_json::json!({ "order_id": order.order_id }),
        )?;
        Ok(())
    }
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

fn missing(id: &str) -> Error {
    Error::not_found(&format!("product {id:?} does not exist"))
}

fn set_stock(req: &Request, id: &str) -> Result<Response, Error> {
    let update: StockUpdate = req.json()?;
    if update.stock < 0 {
        return Err(Error::bad_request(&format!(
            "field \"stock\" must be zero or more, got {}",
            update.stock
        )));
    }
    let store = Store::open()?;
    let mut product: Product = store.get_json(&key(id))?.ok_or_else(|| missing(id))?;
    product.stock = update.stock;
    store.set_json(&key(id), &product)?;
    Ok(Response::json(200, &product))
}

fn validate(new: &NewProduct) -> Result<(), Error> {
    let name = new.name.trim();
    if name.is_empty() {
        return Err(Error::bad_request("field \"name\" must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::bad_request(&format!(
            "field \"name\" must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    if new.price_cents < 0 {
        return Err(Error::bad_request(&format!(
            "field \"price_cents\" must be zero or more, got {}",
            new.price_cents
        )));
    }
    if new.stock < 0 {
        return Err(Error::bad_request(&format!(
            "field \"stock\" must be zero or more, got {}",
            new.stock
        )));
    }
    Ok(())
}

fn create(req: &Request) -> Result<Response, Error> {
    let new: NewProduct = req.json()?;
    validate(&new)?;
    let product = Product {
        id: microhost_guest::new_id(),
        name: new.name.trim().to_string(),
        price_cents: new.price_cents,
        stock: new.stock,
        created_at_ms: microhost_guest::now_ms(),
    };
    Store::open()?.set_json(&key(&product.id), &product)?;
    Ok(Response::json(201, &product)
        .with_header("location", format!("/api/products/{}", product.id)))
}

fn get(id: &str) -> Result<Response, Error> {
    let product: Product = Store::open()?
        .get_json(&key(id))?
        .ok_or_else(|| missing(id))?;
    Ok(Response::json(200, &product))
}

/// Ids sort by creation time, and keys are listed in byte order: pages in creation order.
fn list(req: &Request) -> Result<Response, Error> {
    let page = req.page()?;
    let products = Store::open()?.page_json::<Product>(PREFIX, &page)?;
    Ok(Response::json(200, &products))
}

microhost_guest::service!(ProductService);
