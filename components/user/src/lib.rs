//! The user service: registration, login (a token signed by the host), profiles.
//!
//! - `POST /api/users/register` `{email, password, name}` → 201 (409 if the email is taken)
//! - `POST /api/users/login` `{email, password}` → 200 `{token}` (401 otherwise)
//! - `GET /api/users/me` (token) → the profile
//! - `GET /internal/users/{id}` (other services only) → the profile
//!
//! Publishes `user.registered`. Passwords are hashed by the host (argon2id).
use microhost_guest::{Request, Response, Service, auth, events, kv};
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
    fn handle(req: Request) -> Response {
        let segments = req.segments();
        let result = match (req.method.as_str(), segments.as_slice()) {
            ("POST", ["api", "users", "register"]) => register(&req),
            ("POST", ["api", "users", "login"]) => login(&req),
            ("GET", ["api", "users", "me"]) => me(&req),
            ("GET", ["internal", "users", id]) => internal_lookup(&req, id),
            (method, ["api", "users", "register" | "login"]) => {
                Ok(Response::method_not_allowed(method, "POST"))
            }
            (method, ["api", "users", "me"]) => Ok(Response::method_not_allowed(method, "GET")),
            _ => Ok(Response::not_found(&format!(
                "no user resource at {:?}",
                req.path
            ))),
        };
        result.unwrap_or_else(|e| e)
    }
}

fn normalize_email(email: &str) -> Result<String, Response> {
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
        Err(Response::bad_request(&format!(
            "field \"email\": {email:?} is not an email address"
        )))
    }
}

fn internal(e: String) -> Response {
    Response::internal_error(&e)
}

fn register(req: &Request) -> Result<Response, Response> {
    let reg: Registration = req.json()?;
    let email = normalize_email(&reg.email)?;
    if reg.password.chars().count() < 8 {
        return Err(Response::bad_request(
            "field \"password\" must be at least 8 characters",
        ));
    }
    let name = reg.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Response::bad_request(
            "field \"name\" must be 1 to 100 characters",
        ));
    }
    let bucket = kv::open().map_err(internal)?;
    let email_key = format!("email/{email}");
    if bucket
        .exists(&email_key)
        .map_err(|e| internal(kv::describe(e)))?
    {
        return Err(Response::problem(
            409,
            "Conflict",
            &format!("a user with email {email:?} already exists"),
        ));
    }
    let user = User {
        id: microhost_guest::new_id(),
        email: email.clone(),
        name: name.to_string(),
        password_hash: auth::hash_password(&reg.password).map_err(internal)?,
        created_at_ms: microhost_guest::now_ms(),
    };
    kv::set_json(&bucket, &format!("user/{}", user.id), &user).map_err(internal)?;
    bucket
        .set(&email_key, user.id.as_bytes())
        .map_err(|e| internal(kv::describe(e)))?;
    events::publish_json(
        "user.registered",
        Some(&user.id),
        &serde_json::json!({ "user_id": user.id, "email": user.email, "name": user.name }),
    )
    .map_err(internal)?;
    Ok(Response::json(201, &user.profile()))
}

fn login(req: &Request) -> Result<Response, Response> {
    let login: Login = req.json()?;
    let denied = || Response::problem(401, "Unauthorized", "wrong email or password");
    let Ok(email) = normalize_email(&login.email) else {
        return Err(denied());
    };
    let bucket = kv::open().map_err(internal)?;
    let Some(id) = bucket
        .get(&format!("email/{email}"))
        .map_err(|e| internal(kv::describe(e)))?
    else {
        return Err(denied());
    };
    let id = String::from_utf8_lossy(&id).into_owned();
    let user: User = kv::get_json(&bucket, &format!("user/{id}"))
        .map_err(internal)?
        .ok_or_else(|| internal(format!("user {id:?} of {email:?} is missing")))?;
    if !auth::verify_password(&login.password, &user.password_hash).map_err(internal)? {
        return Err(denied());
    }
    let claims = serde_json::json!({ "email": user.email, "name": user.name });
    let token = auth::issue_token(&user.id, &claims, TOKEN_TTL_SECS).map_err(internal)?;
    Ok(Response::json(
        200,
        &serde_json::json!({ "token": token, "token_type": "Bearer", "expires_in": TOKEN_TTL_SECS }),
    ))
}

fn load(id: &str) -> Result<Option<User>, Response> {
    let bucket = kv::open().map_err(internal)?;
    kv::get_json(&bucket, &format!("user/{id}")).map_err(internal)
}

fn me(req: &Request) -> Result<Response, Response> {
    let Some(subject) = auth::subject(req) else {
        return Err(Response::problem(
            401,
            "Unauthorized",
            "this route needs a token",
        ));
    };
    match load(subject)? {
        Some(user) => Ok(Response::json(200, &user.profile())),
        None => Err(Response::not_found(&format!(
            "user {subject:?} does not exist"
        ))),
    }
}

fn internal_lookup(req: &Request, id: &str) -> Result<Response, Response> {
    if auth::calling_service(req).is_none() {
        return Err(Response::not_found(&format!(
            "no user resource at {:?}",
            req.path
        )));
    }
    match load(id)? {
        Some(user) => Ok(Response::json(200, &user.profile())),
        None => Err(Response::not_found(&format!("user {id:?} does not exist"))),
    }
}

microhost_guest::service!(UserService);
