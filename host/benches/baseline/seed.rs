//! The native baseline: the seed's user, product, order and notification logic (and the
//! bus benchmark's publisher and subscriber) as plain Rust handlers in one process, on
//! the host's own store, group commit, unit of work, event log and token code
//! (`microhost::bench`). Same keys, same JSON, same events, the same argon2 and JWT
//! settings; one delivery at a time per subscription with its effects and cursor in one
//! durable commit, as microhost delivers. What it lacks is everything microhost adds:
//! the sandbox (an instance per request and per delivery), the gateway's policies, the
//! in-process HTTP calls between services. It is the physical limit of this design on
//! this machine.

#![allow(
    clippy::result_large_err,
    reason = "a handler's error is its ready answer (a problem response), as the guests' Error::Response is"
)]

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use microhost::bench::{Delivery, State, Tokens, Unit};
use serde_json::{Value, json};
use std::sync::Arc;

type Answer = http::Response<Full<Bytes>>;

struct Seed {
    state: State,
    tokens: Tokens,
}

fn answer(status: u16, body: &Value) -> Answer {
    let mut response = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn problem(status: u16, detail: &str) -> Answer {
    answer(status, &json!({ "status": status, "detail": detail }))
}

/// Ids as the guest SDK makes them: time first (hex milliseconds), then randomness.
fn new_id() -> String {
    use rand::RngCore as _;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut random = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut random);
    format!("{ms:012x}{}", hex::encode(random))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn read_json(state: &State, unit: &mut Unit, key: &str) -> Result<Option<Value>, Answer> {
    match state.read(unit, key) {
        Ok(None) => Ok(None),
        Ok(Some(bytes)) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| problem(500, &e.to_string())),
        Err(e) => Err(problem(503, &e)),
    }
}

fn json_bytes(value: &Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

impl Seed {
    async fn route(&self, req: http::Request<Incoming>) -> Answer {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let subject = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|token| self.tokens.verify(token));
        let body = match req.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => return problem(400, &e.to_string()),
        };
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let user = || match &subject {
            Some(Ok(user)) => Ok(user.clone()),
            _ => Err(problem(401, "a valid bearer token is required")),
        };
        let result = match (method.as_str(), segments.as_slice()) {
            ("POST", ["api", "users", "register"]) => self.register(&body).await,
            ("POST", ["api", "users", "login"]) => self.login(&body).await,
            ("POST", ["api", "products"]) => match user() {
                Ok(_) => self.create_product(&body).await,
                Err(e) => Err(e),
            },
            ("GET", ["api", "products", id]) => self.product(id).await,
            ("POST", ["api", "orders"]) => match user() {
                Ok(user) => self.create_order(&user, &body).await,
                Err(e) => Err(e),
            },
            ("GET", ["api", "orders", id]) => match user() {
                Ok(user) => self.order(&user, id).await,
                Err(e) => Err(e),
            },
            ("POST", ["pub", "pub", topic]) => self.publish(topic, &body).await,
            ("GET", ["sub", "latency", name]) => self.latency(name).await,
            _ => Err(problem(404, &format!("nothing at {path:?}"))),
        };
        result.unwrap_or_else(|e| e)
    }

    /// Reads only: waits until what it read is durable, as an invocation's answer does.
    async fn settle(&self, unit: &Unit) -> Result<(), Answer> {
        self.state
            .commit(unit, None)
            .await
            .map_err(|e| problem(503, &e))
    }

    async fn commit(&self, unit: &Unit) -> Result<(), Answer> {
        self.state.commit(unit, None).await.map_err(|e| {
            let status = if e.contains("conflict") { 409 } else { 503 };
            problem(status, &e)
        })
    }

    async fn register(&self, body: &[u8]) -> Result<Answer, Answer> {
        let reg: Value = serde_json::from_slice(body).map_err(|e| problem(400, &e.to_string()))?;
        let field = |name: &str| reg[name].as_str().unwrap_or_default().to_string();
        let (email, password, name) = (
            field("email").trim().to_lowercase(),
            field("password"),
            field("name").trim().to_string(),
        );
        if !email.contains('@') || password.chars().count() < 8 || name.is_empty() {
            return Err(problem(400, "email, password (8+) and name are required"));
        }
        let mut unit = self.state.unit("user");
        let email_key = format!("email/{email}");
        if self
            .state
            .read(&mut unit, &email_key)
            .map_err(|e| problem(503, &e))?
            .is_some()
        {
            return Err(problem(409, "a user with this email already exists"));
        }
        let hash = self
            .tokens
            .hash_password(password)
            .await
            .map_err(|e| problem(503, &e))?;
        let id = new_id();
        let user = json!({ "id": id, "email": email, "name": name, "password_hash": hash, "created_at_ms": now_ms() });
        unit.set(&format!("user/{id}"), json_bytes(&user));
        unit.set(&email_key, id.clone().into_bytes());
        unit.publish(
            "user.registered",
            Some(&id),
            json_bytes(&json!({ "user_id": id, "email": email, "name": name })),
        );
        self.commit(&unit).await?;
        Ok(answer(
            201,
            &json!({ "id": id, "email": email, "name": name }),
        ))
    }

    async fn login(&self, body: &[u8]) -> Result<Answer, Answer> {
        let login: Value =
            serde_json::from_slice(body).map_err(|e| problem(400, &e.to_string()))?;
        let denied = || problem(401, "wrong email or password");
        let email = login["email"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_lowercase();
        let mut unit = self.state.unit("user");
        let id = self
            .state
            .read(&mut unit, &format!("email/{email}"))
            .map_err(|e| problem(503, &e))?
            .ok_or_else(denied)?;
        let id = String::from_utf8_lossy(&id).into_owned();
        let user = read_json(&self.state, &mut unit, &format!("user/{id}"))?.ok_or_else(denied)?;
        let ok = self
            .tokens
            .verify_password(
                login["password"].as_str().unwrap_or_default().to_string(),
                user["password_hash"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
            .await
            .map_err(|e| problem(500, &e))?;
        if !ok {
            return Err(denied());
        }
        let mut claims = serde_json::Map::new();
        claims.insert("email".into(), user["email"].clone());
        claims.insert("name".into(), user["name"].clone());
        let token = self
            .tokens
            .issue(&id, &claims, 3600)
            .map_err(|e| problem(500, &e))?;
        self.settle(&unit).await?;
        Ok(answer(
            200,
            &json!({ "token": token, "token_type": "Bearer", "expires_in": 3600 }),
        ))
    }

    async fn create_product(&self, body: &[u8]) -> Result<Answer, Answer> {
        let new: Value = serde_json::from_slice(body).map_err(|e| problem(400, &e.to_string()))?;
        let (Some(name), Some(price), Some(stock)) = (
            new["name"].as_str(),
            new["price_cents"].as_i64(),
            new["stock"].as_i64(),
        ) else {
            return Err(problem(400, "name, price_cents and stock are required"));
        };
        if name.trim().is_empty() || price < 0 || stock < 0 {
            return Err(problem(400, "a name, and no negative price or stock"));
        }
        let id = new_id();
        let product = json!({ "id": id, "name": name.trim(), "price_cents": price, "stock": stock, "created_at_ms": now_ms() });
        let mut unit = self.state.unit("product");
        unit.set(&format!("product:{id}"), json_bytes(&product));
        self.commit(&unit).await?;
        Ok(answer(201, &product))
    }

    async fn product(&self, id: &str) -> Result<Answer, Answer> {
        let mut unit = self.state.unit("product");
        let product = read_json(&self.state, &mut unit, &format!("product:{id}"))?
            .ok_or_else(|| problem(404, &format!("product {id:?} does not exist")))?;
        self.settle(&unit).await?;
        Ok(answer(200, &product))
    }

    async fn create_order(&self, user: &str, body: &[u8]) -> Result<Answer, Answer> {
        let new: Value = serde_json::from_slice(body).map_err(|e| problem(400, &e.to_string()))?;
        let Some(lines) = new["items"]
            .as_array()
            .filter(|l| (1..=50).contains(&l.len()))
        else {
            return Err(problem(400, "field \"items\" must have 1 to 50 entries"));
        };
        // The user must exist (order calls user), and each product gives its price
        // (order calls product): reads of those services' committed state here.
        let mut users = self.state.unit("user");
        if read_json(&self.state, &mut users, &format!("user/{user}"))?.is_none() {
            return Err(problem(401, "the token's user does not exist"));
        }
        self.settle(&users).await?;
        let mut products = self.state.unit("product");
        let mut items = Vec::new();
        let mut total: i64 = 0;
        for (i, line) in lines.iter().enumerate() {
            let (Some(product_id), Some(quantity)) =
                (line["product_id"].as_str(), line["quantity"].as_i64())
            else {
                return Err(problem(
                    400,
                    &format!("items[{i}] needs product_id and quantity"),
                ));
            };
            if !(1..=1000).contains(&quantity) {
                return Err(problem(
                    400,
                    &format!("items[{i}].quantity must be from 1 to 1000"),
                ));
            }
            let product = read_json(&self.state, &mut products, &format!("product:{product_id}"))?
                .ok_or_else(|| problem(400, &format!("product {product_id:?} does not exist")))?;
            let price = product["price_cents"].as_i64().unwrap_or_default();
            total = price
                .checked_mul(quantity)
                .and_then(|line| total.checked_add(line))
                .ok_or_else(|| problem(400, "the order total is too large"))?;
            items.push(
                json!({ "product_id": product_id, "quantity": quantity, "price_cents": price }),
            );
        }
        self.settle(&products).await?;
        let id = new_id();
        let order = json!({
            "id": id, "user_id": user, "items": items, "total_cents": total,
            "status": "pending", "created_at_ms": now_ms(),
        });
        let mut unit = self.state.unit("order");
        unit.set(&format!("order/{id}"), json_bytes(&order));
        unit.set(&format!("by-user/{user}/{id}"), Vec::new());
        let created = json!({
            "order_id": id, "user_id": user, "total_cents": total,
            "items": items.iter().map(|i| json!({ "product_id": i["product_id"], "quantity": i["quantity"] })).collect::<Vec<_>>(),
        });
        unit.publish("order.created", Some(&id), json_bytes(&created));
        self.commit(&unit).await?;
        Ok(answer(201, &order))
    }

    async fn order(&self, user: &str, id: &str) -> Result<Answer, Answer> {
        let mut unit = self.state.unit("order");
        let order = read_json(&self.state, &mut unit, &format!("order/{id}"))?
            .filter(|order| order["user_id"] == user)
            .ok_or_else(|| problem(404, &format!("order {id:?} does not exist")))?;
        self.settle(&unit).await?;
        Ok(answer(200, &order))
    }

    async fn publish(&self, topic: &str, body: &[u8]) -> Result<Answer, Answer> {
        let body = String::from_utf8_lossy(body).into_owned();
        let mut unit = self.state.unit("pub");
        unit.set(&format!("published-{body}"), b"1".to_vec());
        unit.publish(topic, None, body.into_bytes());
        self.commit(&unit).await?;
        Ok(answer(201, &json!({ "ok": true })))
    }

    async fn latency(&self, name: &str) -> Result<Answer, Answer> {
        let mut unit = self.state.unit("sub");
        let value = self
            .state
            .read(&mut unit, &format!("latency/{name}"))
            .map_err(|e| problem(503, &e))?
            .ok_or_else(|| problem(404, "not handled yet"))?;
        self.settle(&unit).await?;
        Ok(answer(200, &json!(String::from_utf8_lossy(&value))))
    }
}

/// What a subscriber does with one event: its effects, into `unit`.
fn on_event(state: &State, service: &str, event: &Delivery, unit: &mut Unit) -> Result<(), String> {
    let data: Value = serde_json::from_slice(event.data()).unwrap_or(Value::Null);
    match (service, event.topic()) {
        ("product", "order.created") => {
            let order_id = data["order_id"].as_str().unwrap_or_default();
            let mut needed: std::collections::BTreeMap<String, i64> = Default::default();
            for line in data["items"].as_array().into_iter().flatten() {
                *needed
                    .entry(line["product_id"].as_str().unwrap_or_default().to_string())
                    .or_default() += line["quantity"].as_i64().unwrap_or_default();
            }
            let mut reserved = Vec::new();
            let mut shortage = None;
            for (id, quantity) in &needed {
                let key = format!("product:{id}");
                let product = state
                    .read(unit, &key)?
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
                match product {
                    Some(p) if p["stock"].as_i64().unwrap_or_default() >= *quantity => {
                        reserved.push((key, p, *quantity))
                    }
                    _ => {
                        shortage = Some(format!("not enough stock of {id:?}"));
                        break;
                    }
                }
            }
            if let Some(reason) = shortage {
                unit.publish(
                    "stock.rejected",
                    Some(order_id),
                    json_bytes(&json!({ "order_id": order_id, "reason": reason })),
                );
                return Ok(());
            }
            for (key, mut product, quantity) in reserved {
                product["stock"] = json!(product["stock"].as_i64().unwrap_or_default() - quantity);
                unit.set(&key, json_bytes(&product));
            }
            unit.publish(
                "stock.reserved",
                Some(order_id),
                json_bytes(&json!({ "order_id": order_id })),
            );
        }
        ("order", "stock.reserved" | "stock.rejected") => {
            let (status, topic) = if event.topic() == "stock.reserved" {
                ("confirmed", "order.confirmed")
            } else {
                ("cancelled", "order.cancelled")
            };
            let key = format!("order/{}", data["order_id"].as_str().unwrap_or_default());
            let Some(mut order) = state
                .read(unit, &key)?
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            else {
                return Ok(());
            };
            if order["status"] != "pending" {
                return Ok(());
            }
            order["status"] = json!(status);
            order["reason"] = data["reason"].clone();
            unit.set(&key, json_bytes(&order));
            unit.publish(
                topic,
                order["id"].as_str(),
                json_bytes(&json!({
                    "order_id": order["id"], "user_id": order["user_id"],
                    "total_cents": order["total_cents"], "reason": order["reason"],
                })),
            );
        }
        ("notification", topic) => {
            let user = data["user_id"].as_str().unwrap_or_default();
            let message = match topic {
                "user.registered" => {
                    format!("Welcome, {}!", data["name"].as_str().unwrap_or_default())
                }
                "order.confirmed" => format!("Your order {} is confirmed.", data["order_id"]),
                _ => format!(
                    "Your order {} was cancelled: {}",
                    data["order_id"], data["reason"]
                ),
            };
            let id = format!("{}{}", event.time(), event.id());
            unit.set(
                &format!("notif/{user}/{id}"),
                json_bytes(
                    &json!({ "id": id, "user_id": user, "kind": topic, "message": message }),
                ),
            );
        }
        ("sub", _) => {
            let published = humantime::parse_rfc3339(event.time()).map_err(|e| e.to_string())?;
            let latency = published.elapsed().map_or(0, |d| d.as_micros());
            let name = String::from_utf8_lossy(event.data()).into_owned();
            unit.set(&format!("latency/{name}"), latency.to_string().into_bytes());
        }
        (service, topic) => return Err(format!("{service} does not subscribe to {topic}")),
    }
    Ok(())
}

/// One loop per subscription, as microhost's delivery loop: the next item, its effects
/// and acknowledgement in one durable commit, one at a time.
async fn subscription(seed: Arc<Seed>, service: &'static str, topic: &'static str) {
    let mut appended = seed.state.watch(topic);
    loop {
        appended.borrow_and_update();
        match seed.state.next(topic, service) {
            Ok(Some(event)) => {
                let mut unit = seed.state.unit(service);
                let handled = on_event(&seed.state, service, &event, &mut unit);
                let committed = match handled {
                    Ok(()) => seed.state.commit(&unit, Some(&event)).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = committed {
                    eprintln!("{service} on {topic}: {e}; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
            Ok(None) => {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), appended.changed())
                    .await;
            }
            Err(e) => {
                eprintln!("{service} on {topic}: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Serves the baseline on a free loopback port (printed on stdout) with its state
/// under `dir`, until killed.
pub(crate) fn serve(dir: &std::path::Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let seed = Arc::new(Seed {
            state: State::open(dir)?,
            tokens: Tokens::new(
                b"the native baseline's HS256 secret, 32+ bytes",
                "microhost",
                "microhost",
            ),
        });
        for (service, topic) in [
            ("product", "order.created"),
            ("order", "stock.reserved"),
            ("order", "stock.rejected"),
            ("notification", "user.registered"),
            ("notification", "order.confirmed"),
            ("notification", "order.cancelled"),
            ("sub", "bench.events"),
        ] {
            tokio::spawn(subscription(seed.clone(), service, topic));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let seed = seed.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let seed = seed.clone();
                    async move { Ok::<_, std::convert::Infallible>(seed.route(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
