//! JWT verification at the edge over real HTTP: the host's own HS256 tokens, RS256 and
//! ES256 keys from PEM files, EdDSA and ES256 keys from a JWKS file, all selected by
//! `kid` with the algorithm pinned per key; and a negative corpus that must all be 401.

use crate::support::{Host, Svc, config, data_dir, manifest_toml};
use base64::Engine as _;
use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use microhost::config::Manifest;
use serde_json::json;
use std::path::Path;

const HOST_SECRET: &str = "0123456789abcdef0123456789abcdef-host";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn claims(sub: &str) -> serde_json::Value {
    json!({ "sub": sub, "iss": "microhost", "aud": "microhost", "exp": now() + 300, "role": "tester" })
}

fn sign(
    alg: Algorithm,
    kid: Option<&str>,
    claims: &serde_json::Value,
    key: &EncodingKey,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, key).unwrap_or_else(|e| panic!("signing: {e}"))
}

/// A token with any header and no valid signature machinery (for `alg: none`).
fn unsigned(header: serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

struct Keys {
    rsa: EncodingKey,
    rsa_public_pem: Vec<u8>,
    ec: EncodingKey,
    ec_jwks: EncodingKey,
    ed_jwks: EncodingKey,
    host: EncodingKey,
}

/// Writes the key files and starts a host whose `[auth]` names them.
async fn start(dir: &Path) -> anyhow::Result<(Host, Keys)> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    std::fs::write(dir.join("ec.pem"), ec.public_key_pem())?;
    let ec_jwks = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let ed_jwks = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let point = ec_jwks.public_key_raw();
    let jwks = json!({ "keys": [
        { "kty": "EC", "crv": "P-256", "kid": "ec-jwks", "use": "sig",
          "x": b64(&point[1..33]), "y": b64(&point[33..65]) },
        { "kty": "OKP", "crv": "Ed25519", "kid": "ed-jwks", "alg": "EdDSA",
          "x": b64(ed_jwks.public_key_raw()) },
    ]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string())?;
    let auth = format!(
        "[auth]\nissuer = \"microhost\"\naudience = \"microhost\"\nleeway_secs = 30\njwks = \"jwks.json\"\n\n\
         [[auth.key]]\nkid = \"rsa-1\"\nalg = \"RS256\"\npublic_key = {:?}\n\n\
         [[auth.key]]\nkid = \"ec-1\"\nalg = \"ES256\"\npublic_key = \"ec.pem\"\n\n\
         [[auth.key]]\nkid = \"partner\"\nalg = \"ES256\"\npublic_key = \"ec.pem\"\nissuer = \"https://partner.example\"\n\n",
        fixtures.join("jwt-rsa-public.pem").display().to_string()
    );
    let services = [
        Svc::new("echo", "/", "test-echo").set("protected = true"),
        Svc::new("limited", "/rl", "test-echo")
            .set("protected = true")
            .set("policy = { rate_limit = { per_second = 1, burst = 1, key = \"subject\" } }"),
    ];
    let text = format!("{auth}{}", manifest_toml(&services));
    let mut cfg = config(&services, dir)?;
    cfg.manifest = Manifest::from_toml(&text, &dir.join("microhost.toml"), dir.to_path_buf())?;
    cfg.jwt_secret = Some(HOST_SECRET.to_string());
    let host = Host::start_with(cfg).await?;
    let keys = Keys {
        rsa: EncodingKey::from_rsa_pem(&std::fs::read(fixtures.join("jwt-rsa-private.pem"))?)?,
        rsa_public_pem: std::fs::read(fixtures.join("jwt-rsa-public.pem"))?,
        ec: EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes())?,
        ec_jwks: EncodingKey::from_ec_pem(ec_jwks.serialize_pem().as_bytes())?,
        ed_jwks: EncodingKey::from_ed_pem(ed_jwks.serialize_pem().as_bytes())?,
        host: EncodingKey::from_secret(HOST_SECRET.as_bytes()),
    };
    Ok((host, keys))
}

async fn get_with(host: &Host, path: &str, token: &str) -> anyhow::Result<crate::support::Resp> {
    host.request(
        Method::GET,
        path,
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_every_configured_key_verify_and_a_negative_corpus_is_refused()
-> anyhow::Result<()> {
    let dir = data_dir();
    let (host, keys) = start(dir.path()).await?;

    let good = [
        (
            "host HS256, no kid",
            sign(Algorithm::HS256, None, &claims("h"), &keys.host),
        ),
        (
            "host HS256, kid",
            sign(
                Algorithm::HS256,
                Some("microhost"),
                &claims("h"),
                &keys.host,
            ),
        ),
        (
            "RS256 PEM",
            sign(Algorithm::RS256, Some("rsa-1"), &claims("r"), &keys.rsa),
        ),
        (
            "ES256 PEM",
            sign(Algorithm::ES256, Some("ec-1"), &claims("e"), &keys.ec),
        ),
        (
            "ES256 JWKS",
            sign(
                Algorithm::ES256,
                Some("ec-jwks"),
                &claims("j"),
                &keys.ec_jwks,
            ),
        ),
        (
            "EdDSA JWKS",
            sign(
                Algorithm::EdDSA,
                Some("ed-jwks"),
                &claims("d"),
                &keys.ed_jwks,
            ),
        ),
        (
            "expired within the leeway",
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &json!({ "sub": "l", "iss": "microhost", "aud": "microhost", "exp": now() - 10 }),
                &keys.rsa,
            ),
        ),
        (
            "a key with its own issuer",
            sign(
                Algorithm::ES256,
                Some("partner"),
                &json!({ "sub": "p", "iss": "https://partner.example", "aud": "microhost", "exp": now() + 60 }),
                &keys.ec,
            ),
        ),
    ];
    for (name, token) in &good {
        let r = get_with(&host, "/me", token).await?;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let seen = &r.json()["headers"];
        assert!(
            seen["x-microhost-subject"].is_string(),
            "{name}: the subject reaches the service"
        );
    }
    let r = host
        .request(
            Method::GET,
            "/me",
            &[("authorization", &format!("bearer {}", good[2].1))],
            "",
        )
        .await?;
    assert_eq!(r.status, 200, "the scheme is case-insensitive");
    let r = get_with(&host, "/me", &good[2].1).await?;
    let seen = r.json()["headers"].clone();
    assert_eq!(seen["x-microhost-subject"], "r");
    let forwarded: serde_json::Value =
        serde_json::from_str(seen["x-microhost-claims"].as_str().unwrap_or("{}"))?;
    assert_eq!(forwarded["role"], "tester", "claims are forwarded");

    let mut flipped_signature = good[2].1.clone().into_bytes();
    let at = flipped_signature.len() - 5;
    flipped_signature[at] = if flipped_signature[at] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let mut flipped_payload = good[3].1.clone().into_bytes();
    let at = good[3].1.find('.').unwrap_or(0) + 5;
    flipped_payload[at] = if flipped_payload[at] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let rsa_public_as_secret = EncodingKey::from_secret(&keys.rsa_public_pem);
    let mut no_exp = claims("x");
    no_exp.as_object_mut().map(|c| c.remove("exp"));
    let mut wrong_iss = claims("x");
    wrong_iss["iss"] = json!("https://evil.example");
    let mut wrong_aud = claims("x");
    wrong_aud["aud"] = json!("someone-else");
    let mut expired = claims("x");
    expired["exp"] = json!(now() - 120);
    let mut not_yet = claims("x");
    not_yet["nbf"] = json!(now() + 300);
    let bad = [
        (
            "alg none",
            unsigned(json!({ "alg": "none", "typ": "JWT" }), &claims("x")),
        ),
        (
            "alg none with a kid",
            unsigned(json!({ "alg": "none", "kid": "rsa-1" }), &claims("x")),
        ),
        (
            "HS256 signed with the RS public key, RSA kid",
            sign(
                Algorithm::HS256,
                Some("rsa-1"),
                &claims("x"),
                &rsa_public_as_secret,
            ),
        ),
        (
            "HS256 signed with the RS public key, no kid",
            sign(Algorithm::HS256, None, &claims("x"), &rsa_public_as_secret),
        ),
        (
            "ES256 under the RSA kid",
            sign(Algorithm::ES256, Some("rsa-1"), &claims("x"), &keys.ec),
        ),
        (
            "RS256 without a kid",
            sign(Algorithm::RS256, None, &claims("x"), &keys.rsa),
        ),
        (
            "expired beyond the leeway",
            sign(Algorithm::RS256, Some("rsa-1"), &expired, &keys.rsa),
        ),
        (
            "missing exp",
            sign(Algorithm::RS256, Some("rsa-1"), &no_exp, &keys.rsa),
        ),
        (
            "not valid yet",
            sign(Algorithm::RS256, Some("rsa-1"), &not_yet, &keys.rsa),
        ),
        (
            "wrong iss",
            sign(Algorithm::RS256, Some("rsa-1"), &wrong_iss, &keys.rsa),
        ),
        (
            "wrong aud",
            sign(Algorithm::ES256, Some("ec-1"), &wrong_aud, &keys.ec),
        ),
        (
            "partner key, default issuer",
            sign(Algorithm::ES256, Some("partner"), &claims("x"), &keys.ec),
        ),
        (
            "unknown kid",
            sign(Algorithm::RS256, Some("rsa-2"), &claims("x"), &keys.rsa),
        ),
        (
            "signed by another EC key",
            sign(Algorithm::ES256, Some("ec-1"), &claims("x"), &keys.ec_jwks),
        ),
        (
            "flipped signature byte",
            String::from_utf8_lossy(&flipped_signature).into_owned(),
        ),
        (
            "flipped payload byte",
            String::from_utf8_lossy(&flipped_payload).into_owned(),
        ),
        ("not a JWT", "not.a.jwt".to_string()),
        ("empty", String::new()),
    ];
    for (name, token) in &bad {
        let r = get_with(&host, "/me", token).await?;
        assert_eq!(r.status, 401, "{name}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{name}");
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{name}"
        );
    }
    assert_eq!(
        host.served("echo").await?,
        good.len() as u64 + 2,
        "no bad token got through"
    );

    // Rate limits keyed by subject: each caller has a bucket of its own.
    let ada = sign(Algorithm::ES256, Some("ec-1"), &claims("ada"), &keys.ec);
    let bob = sign(Algorithm::ES256, Some("ec-1"), &claims("bob"), &keys.ec);
    assert_eq!(get_with(&host, "/rl", &ada).await?.status, 200);
    assert_eq!(get_with(&host, "/rl", &ada).await?.status, 429);
    assert_eq!(get_with(&host, "/rl", &bob).await?.status, 200);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_configuration_is_a_clear_start_up_error() -> anyhow::Result<()> {
    let dir = data_dir();
    let services = [Svc::new("echo", "/", "test-echo")];
    let cases = [
        (
            "[[auth.key]]\nkid = \"k\"\nalg = \"none\"\npublic_key = \"x.pem\"\n",
            "`key.alg`",
        ),
        (
            "[[auth.key]]\nkid = \"k\"\nalg = \"HS256\"\npublic_key = \"x.pem\"\n",
            "`key.secret_env`",
        ),
        (
            "[[auth.key]]\nkid = \"k\"\nalg = \"RS256\"\n",
            "`key.public_key`",
        ),
        (
            "[[auth.key]]\nkid = \"microhost\"\nalg = \"RS256\"\npublic_key = \"x.pem\"\n",
            "`key.kid`",
        ),
        (
            "[[auth.key]]\nkid = \"k\"\nalg = \"RS256\"\npublic_key = \"missing.pem\"\n",
            "missing.pem",
        ),
        ("[auth]\njwks = \"nope.json\"\n", "nope.json"),
    ];
    for (auth, expected) in cases {
        let text = format!("{auth}{}", manifest_toml(&services));
        let message = match Manifest::from_toml(
            &text,
            &dir.path().join("m.toml"),
            dir.path().to_path_buf(),
        ) {
            Err(e) => e.to_string(),
            Ok(manifest) => {
                let mut cfg = config(&services, dir.path())?;
                cfg.manifest = manifest;
                match microhost::start(cfg).await {
                    Err(e) => format!("{e:#}"),
                    Ok(running) => {
                        running.shutdown().await;
                        "started".to_string()
                    }
                }
            }
        };
        assert!(message.contains(expected), "{auth}: {message}");
    }
    Ok(())
}
