//! The user service: registration, login (a token signed by the host), profiles.
//!
//! - `POST /api/users/register` `{email, password, name}` → 201 (409 if the email is taken)
//! - `POST /api/users/login` `{email, password}` → 200 `{token}` (401 otherwise)
//! - `GET /api/users/me` (token) → the profile
//! - `GET /internal/users/{id}` (other services only) → the profile
//!
//! Publishes `user.registered`. Passwords are hashed by the host (argon2id).
use microhost_guest::kv::Store;
use microhost_guest::{Error, Request, Response, Service, auth, events};
use serde::{Deserialize, Serialize};

/// Token lifetime.
const TOKEN_TTL_SECS: u32 = 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    email: String,
    password: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    email: String,
    password: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct User {
    id: String,
    email: String,
    name: String,
    password_hash: String,
    created_at_ms: u64,
}

impl User {
    fn profile(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "email": self.email, "name": self.name,
            "created_at_ms": self.created_at_ms,
        })
    }
}

struct UserService;

impl Service for UserService {
    fn handle(req: Request) -> Result<Response, Error> {
        match (req.method.as_str(), req.segments().as_slice()) {
            ("POST", ["api", "users", "register"]) => register(&req),
            ("POST", ["api", "users", "login"]) => login(&req),
            ("GET", ["api", "users", "me"]) => me(&req),
            ("GET", ["internal", "users", id]) => internal_lookup(&req, id),
            (method, ["api", "users", "register" | "login"]) => {
                Err(Error::method_not_allowed(method, "POST"))
            }
            (method, ["api", "users", "me"]) => Err(Error::method_not_allowed(method, "GET")),
            _ => Err(no_resource(&req)),
        }
    }
}

fn no_resource(req: &Request) -> Error {
    Error::not_found(&format!("no user resource at {:?}", req.path))
}

fn user_key(id: &str) -> String {
    format!("user/{id}")
}

/// The index from a (normalized) email to its user's id.
fn email_key(email: &str) -> String {
    format!("email/{email}")
}

fn normalize_email(email: &str) -> Result<String, Error> {
    let email = email.trim().to_ascii_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.contains(char::is_whitespace);
    if valid {
        Ok(email)
    } else {
        Err(Error::bad_request(&format!(
            "field \"email\": {email:?} is not an email address"
        )))
    }
}

fn register(req: &Request) -> Result<Response, Error> {
    let reg: Registration = req.json()?;
    let email = normalize_email(&reg.email)?;
    if reg.password.chars().count() < 8 {
        return Err(Error::bad_request(
            "field \"password\" must be at least 8 characters",
        ));
    }
    let name = reg.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Error::bad_request(
            "field \"name\" must be 1 to 100 characters",
        ));
    }
    let store = Store::open()?;
    if store.exists(&email_key(&email))? {
        return Err(Error::conflict(&format!(
            "a user with email {email:?} already exists"
        )));
    }
    let user = User {
        id: microhost_guest::new_id(),
        email: email.clone(),
        name: name.to_string(),
        password_hash: auth::hash_password(&reg.password)?,
        created_at_ms: microhost_guest::now_ms(),
    };
    store.set_json(&user_key(&user.id), &user)?;
    store.set(&email_key(&email), user.id.as_bytes())?;
    events::publish_json(
        "user.registered",
        Some(&user.id),
        &serde_json::json!({ "user_id": user.id, "email": user.email, "name": user.name }),
    )?;
    Ok(Response::json(201, &user.profile()))
}

fn login(req: &Request) -> Result<Response, Error> {
    let login: Login = req.json()?;
    let denied = || Error::unauthorized("wrong email or password");
    let Ok(email) = normalize_email(&login.email) else {
        return Err(denied());
    };
    let store = Store::open()?;
    let id = store.get(&email_key(&email))?.ok_or_else(denied)?;
    let id = String::from_utf8_lossy(&id).into_owned();
    let user: User = store
        .get_json(&user_key(&id))?
        .ok_or_else(|| Error::other(format!("user {id:?} of {email:?} is missing")))?;
    if !auth::verify_password(&login.password, &user.password_hash)? {
        return Err(denied());
    }
    let claims = serde_json::json!({ "email": user.email, "name": user.name });
    let token = auth::issue_token(&user.id, &claims, TOKEN_TTL_SECS)?;
    Ok(Response::json(
        200,
        &serde_json::json!({ "token": token, "token_type": "Bearer", "expires_in": TOKEN_TTL_SECS }),
    ))
}

/// The profile of user `id`, or a 404.
fn profile(id: &str) -> Result<Response, Error> {
    let user: User = Store::open()?
        .get_json(&user_key(id))?
        .ok_or_else(|| Error::not_found(&format!("user {id:?} does not exist")))?;
    Ok(Response::json(200, &user.profile()))
}

fn me(req: &Request) -> Result<Response, Error> {
    profile(auth::require_subject(req)?)
}

fn internal_lookup(req: &Request, id: &str) -> Result<Response, Error> {
    // Only other services may look users up: from the edge it does not exist.
    if auth::calling_service(req).is_none() {
        return Err(no_resource(req));
    }
    profile(id)
}

microhost_guest::service!(UserService);
