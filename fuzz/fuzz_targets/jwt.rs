//! Token parsing and verification, with the fuzzed host's keys (the host's HS256 key,
//! an RS256 key of another issuer, an HS512 JWKS key): any token as a client sends it,
//! tokens the fuzzer shapes and signs (with the right key, another key, the RSA public
//! key as an HMAC secret), tokens the host issues, and `Authorization` values. A token
//! verifies only with the key its `kid` names, under that key's one algorithm, with
//! that key's issuer, the audience, a `sub` and an `exp` not long past.
#![no_main]

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use microhost::fuzzing::{Tokens, Verified};
use serde_json::{Map, Value, json};
use std::sync::OnceLock;

#[derive(Debug, Arbitrary)]
enum Input {
    /// A token as a client sends it.
    Raw(String),
    /// A header and claims of the fuzzer's shaping, signed.
    Shaped {
        key: Key,
        alg: Alg,
        header: HeaderIn,
        claims: ClaimsIn,
    },
    /// Header and claims as any text, signed.
    Text {
        key: Key,
        alg: Alg,
        header: String,
        claims: String,
    },
    /// Issued by the host for a subject with extra claims, then verified.
    Issued {
        subject: String,
        claims: Vec<(String, Claim)>,
        ttl: u16,
    },
    /// An `Authorization` header value.
    Bearer(Vec<u8>),
}

/// What signs the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
enum Key {
    Host,
    Oct,
    Rsa,
    /// The RSA public key's PEM as an HMAC secret (algorithm confusion).
    RsaPublicAsSecret,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS512,
    PS256,
}

impl Alg {
    fn algorithm(self) -> Algorithm {
        match self {
            Alg::HS256 => Algorithm::HS256,
            Alg::HS384 => Algorithm::HS384,
            Alg::HS512 => Algorithm::HS512,
            Alg::RS256 => Algorithm::RS256,
            Alg::RS512 => Algorithm::RS512,
            Alg::PS256 => Algorithm::PS256,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct HeaderIn {
    /// `None`: the signing algorithm's name.
    alg: Option<String>,
    kid: Option<Kid>,
    typ: Option<String>,
    extra: Option<(String, Claim)>,
}

#[derive(Debug, Arbitrary)]
enum Kid {
    Host,
    Rsa,
    Oct,
    Other(String),
}

#[derive(Debug, Arbitrary)]
struct ClaimsIn {
    sub: Option<Claim>,
    iss: Option<Name>,
    aud: Option<Audience>,
    exp: Option<Time>,
    nbf: Option<Time>,
    iat: Option<Time>,
    extra: Vec<(String, Claim)>,
}

#[derive(Debug, Arbitrary)]
enum Name {
    Host,
    Partner,
    Idp,
    Other(String),
}

impl Name {
    fn value(&self) -> Value {
        match self {
            Name::Host => "microhost".into(),
            Name::Partner => "https://partner.example".into(),
            Name::Idp => "https://idp.example".into(),
            Name::Other(s) => s.as_str().into(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Audience {
    One(Name),
    Many(Vec<Name>),
    Odd(Claim),
}

#[derive(Debug, Arbitrary)]
enum Time {
    /// Seconds from now.
    In(i32),
    Odd(Claim),
}

#[derive(Debug, Arbitrary)]
enum Claim {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    List(Vec<String>),
    Object(Vec<(String, String)>),
}

impl Claim {
    fn value(&self) -> Value {
        match self {
            Claim::Str(s) => s.as_str().into(),
            Claim::Int(i) => (*i).into(),
            Claim::Float(f) => (*f).into(),
            Claim::Bool(b) => (*b).into(),
            Claim::Null => Value::Null,
            Claim::List(items) => items.iter().map(|s| Value::from(s.as_str())).collect(),
            Claim::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                    .collect(),
            ),
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Time {
    fn value(&self, now: i64) -> Value {
        match self {
            Time::In(secs) => (now + i64::from(*secs)).into(),
            Time::Odd(claim) => claim.value(),
        }
    }
}

struct Keys {
    tokens: Tokens,
    host: EncodingKey,
    oct: EncodingKey,
    rsa: EncodingKey,
    rsa_public_as_secret: EncodingKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let fixtures = microhost_fuzz::base_dir().join("../host/tests/fixtures");
        let read = |file: &str| std::fs::read(fixtures.join(file)).expect("an RSA fixture");
        Keys {
            tokens: Tokens::new(
                &microhost_fuzz::manifest(),
                microhost_fuzz::JWT_SECRET.as_bytes(),
            )
            .expect("the fuzzing keys load"),
            host: EncodingKey::from_secret(microhost_fuzz::JWT_SECRET.as_bytes()),
            oct: EncodingKey::from_secret(microhost_fuzz::OCT_SECRET),
            rsa: EncodingKey::from_rsa_pem(&read("jwt-rsa-private.pem")).expect("an RSA key"),
            rsa_public_as_secret: EncodingKey::from_secret(&read("jwt-rsa-public.pem")),
        }
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.claims.signature`, or `None` when the key cannot sign with `alg`.
fn sign(key: Key, alg: Alg, header: &[u8], claims: &[u8]) -> Option<String> {
    let keys = keys();
    let encoding = match key {
        Key::Host => &keys.host,
        Key::Oct => &keys.oct,
        Key::Rsa => &keys.rsa,
        Key::RsaPublicAsSecret => &keys.rsa_public_as_secret,
    };
    let message = format!("{}.{}", b64(header), b64(claims));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), encoding, alg.algorithm()).ok()?;
    Some(format!("{message}.{signature}"))
}

/// The key, algorithm and issuer a `kid` selects (as the manifest configures them).
fn selected(kid: Option<&str>) -> Option<(Key, Algorithm, &'static str)> {
    match kid {
        None | Some("microhost") => Some((Key::Host, Algorithm::HS256, "microhost")),
        Some("rsa") => Some((Key::Rsa, Algorithm::RS256, "https://partner.example")),
        Some("oct") => Some((Key::Oct, Algorithm::HS512, "https://idp.example")),
        Some(_) => None,
    }
}

/// What must hold of any token that verified; `signer` when the harness signed it.
fn check_verified(token: &str, verified: &Verified, signer: Option<(Key, Alg)>) {
    let header = jsonwebtoken::decode_header(token).expect("a verified token has a header");
    let (key, alg, issuer) = selected(header.kid.as_deref())
        .unwrap_or_else(|| panic!("verified with unknown kid {:?}", header.kid));
    assert_eq!(
        header.alg, alg,
        "verified under an algorithm its key does not pin"
    );
    if let Some((signed_with, signed_alg)) = signer {
        assert_eq!(
            signed_with, key,
            "verified with a key other than the one that signed it"
        );
        assert_eq!(
            signed_alg.algorithm(),
            alg,
            "verified under another algorithm"
        );
    }
    let claims = &verified.claims;
    assert_eq!(
        claims.get("sub"),
        Some(&Value::from(verified.subject.as_str()))
    );
    assert_eq!(claims.get("iss"), Some(&Value::from(issuer)), "issuer");
    let aud = claims.get("aud").expect("a verified token has an audience");
    let audiences: Vec<&Value> = match aud {
        Value::Array(list) => list.iter().collect(),
        one => vec![one],
    };
    assert!(
        audiences.contains(&&Value::from("microhost")),
        "audience {aud}"
    );
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .expect("a numeric exp");
    // 30 s of leeway, and some for the time this takes.
    assert!(exp >= (now() - 60) as f64, "expired at {exp}");
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
        assert!(nbf <= (now() + 60) as f64, "not valid before {nbf}");
    }
}

fuzz_target!(|input: Input| {
    let tokens = &keys().tokens;
    match input {
        Input::Raw(token) => {
            if let Ok(verified) = tokens.verify(&token) {
                check_verified(&token, &verified, None);
            }
        }
        Input::Shaped {
            key,
            alg,
            header,
            claims,
        } => {
            let now = now();
            let mut head = Map::new();
            head.insert(
                "alg".into(),
                header
                    .alg
                    .map_or_else(|| json!(alg.algorithm()), Value::from),
            );
            if let Some(kid) = &header.kid {
                let kid = match kid {
                    Kid::Host => "microhost",
                    Kid::Rsa => "rsa",
                    Kid::Oct => "oct",
                    Kid::Other(other) => other,
                };
                head.insert("kid".into(), kid.into());
            }
            if let Some(typ) = header.typ {
                head.insert("typ".into(), typ.into());
            }
            if let Some((name, value)) = &header.extra {
                head.entry(name.clone()).or_insert_with(|| value.value());
            }
            let mut body = Map::new();
            if let Some(sub) = &claims.sub {
                body.insert("sub".into(), sub.value());
            }
            if let Some(iss) = &claims.iss {
                body.insert("iss".into(), iss.value());
            }
            if let Some(aud) = &claims.aud {
                let aud = match aud {
                    Audience::One(name) => name.value(),
                    Audience::Many(names) => names.iter().map(Name::value).collect(),
                    Audience::Odd(claim) => claim.value(),
                };
                body.insert("aud".into(), aud);
            }
            for (name, time) in [
                ("exp", &claims.exp),
                ("nbf", &claims.nbf),
                ("iat", &claims.iat),
            ] {
                if let Some(time) = time {
                    body.insert(name.into(), time.value(now));
                }
            }
            for (name, value) in &claims.extra {
                body.entry(name.clone()).or_insert_with(|| value.value());
            }
            let header = serde_json::to_vec(&head).expect("JSON");
            let body = serde_json::to_vec(&body).expect("JSON");
            if let Some(token) = sign(key, alg, &header, &body)
                && let Ok(verified) = tokens.verify(&token)
            {
                check_verified(&token, &verified, Some((key, alg)));
            }
        }
        Input::Text {
            key,
            alg,
            header,
            claims,
        } => {
            if let Some(token) = sign(key, alg, header.as_bytes(), claims.as_bytes())
                && let Ok(verified) = tokens.verify(&token)
            {
                check_verified(&token, &verified, Some((key, alg)));
            }
        }
        Input::Issued {
            subject,
            claims,
            ttl,
        } => {
            let extra: Map<String, Value> =
                claims.iter().map(|(k, v)| (k.clone(), v.value())).collect();
            let reserved = ["sub", "iss", "aud", "exp", "iat", "nbf"];
            match tokens.issue(&subject, &extra, u32::from(ttl) + 1) {
                Ok(token) => {
                    assert!(!subject.is_empty(), "issued for an empty subject");
                    assert!(
                        !extra.keys().any(|k| reserved.contains(&k.as_str())),
                        "issued with a reserved claim"
                    );
                    let verified = tokens
                        .verify(&token)
                        .unwrap_or_else(|e| panic!("an issued token does not verify: {e}"));
                    check_verified(&token, &verified, Some((Key::Host, Alg::HS256)));
                    assert_eq!(verified.subject, subject);
                    for (name, value) in &extra {
                        assert_eq!(verified.claims.get(name), Some(value), "claim {name:?}");
                    }
                }
                Err(_) => assert!(
                    subject.is_empty() || extra.keys().any(|k| reserved.contains(&k.as_str())),
                    "refused to issue for {subject:?} with {extra:?}"
                ),
            }
        }
        Input::Bearer(value) => {
            if let Some(token) = microhost::fuzzing::bearer(&value) {
                let value = std::str::from_utf8(&value).expect("a bearer value is text");
                let scheme = value
                    .strip_suffix(token.as_str())
                    .and_then(|s| s.strip_suffix(' '))
                    .unwrap_or_else(|| panic!("{token:?} is not the end of {value:?}"));
                assert!(scheme.eq_ignore_ascii_case("bearer"), "scheme {scheme:?}");
                assert!(!token.is_empty());
            }
        }
    }
});
