//! The CLI's side of the admin API: find it, authenticate, call it, explain failures.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::Path;

/// Where the admin API is and how to authenticate to it.
pub struct AdminClient {
    base: String,
    token: String,
}

impl AdminClient {
    /// `base` is like `http://127.0.0.1:3100`.
    pub fn new(base: &str, token: String) -> anyhow::Result<AdminClient> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            bail!("admin URL {base:?} must start with http://");
        }
        Ok(AdminClient { base, token })
    }

    /// Uploads `file` as a new version of `service`, with the deploy's query parameters
    /// (`version`, `canary`, `activate`); returns the API's JSON answer.
    pub async fn deploy(
        &self,
        service: &str,
        file: &Path,
        query: &[(&str, String)],
    ) -> anyhow::Result<serde_json::Value> {
        let wasm = std::fs::read(file).with_context(|| format!("failed to read {file:?}"))?;
        let mut url = format!("{}/admin/services/{service}/versions", self.base);
        for (i, (name, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("{name}={value}"));
        }
        self.send(http::Method::POST, &url, Bytes::from(wasm)).await
    }

    /// `GET` an admin path (e.g. `/admin/services`).
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        self.send(http::Method::GET, &url, Bytes::new()).await
    }

    /// `POST` to an admin path with an empty body.
    pub async fn post(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        self.send(http::Method::POST, &url, Bytes::new()).await
    }

    /// `GET`s a server-sent-events path and calls `on_event(event, data)` for each event
    /// until the server ends the stream.
    pub async fn follow(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str, &str),
    ) -> anyhow::Result<()> {
        let url = format!("{}{path}", self.base);
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = http::Request::get(&url)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::ACCEPT, "text/event-stream")
            .body(Full::new(Bytes::new()))
            .with_context(|| format!("invalid admin URL {url:?}"))?;
        let response = client.request(request).await.with_context(|| {
            format!("cannot reach the admin API at {url} (is the host running?)")
        })?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            bail!("{status}: {}", String::from_utf8_lossy(&bytes));
        }
        let mut pending = Vec::new();
        let (mut event, mut data) = (String::new(), String::new());
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the admin API's stream broke off")?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                if line.is_empty() {
                    if !data.is_empty() || !event.is_empty() {
                        on_event(if event.is_empty() { "message" } else { &event }, &data);
                    }
                    event.clear();
                    data.clear();
                } else if let Some(value) = line.strip_prefix("event:") {
                    event = value.trim_start().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        method: http::Method,
        url: &str,
        body: Bytes,
    ) -> anyhow::Result<serde_json::Value> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = http::Request::builder()
            .method(method)
            .uri(url)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/wasm")
            .body(Full::new(body))
            .with_context(|| format!("invalid admin URL {url:?}"))?;
        let response = client.request(request).await.with_context(|| {
            format!("cannot reach the admin API at {url} (is the host running?)")
        })?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("failed to read the admin API's answer")?
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
        if !status.is_success() {
            let detail = json
                .get("detail")
                .and_then(|d| d.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| json.to_string());
            bail!("{status}: {detail}");
        }
        Ok(json)
    }
}
