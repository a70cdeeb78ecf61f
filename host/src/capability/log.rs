//! A guest's stdout and stderr: cut into lines, each tagged with the service, the
//! version, the stream and the request (id, trace and span id) the instance was serving when
//! it wrote it. Each line goes to the host's log (target `guest`) and to the service's
//! [`ServiceLog`]: the last lines, kept in memory for `GET /admin/services/{name}/logs`
//! (and `microhost logs`), and a broadcast for those who follow it.

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::broadcast;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Lines a service's log keeps.
pub(crate) const KEPT_LINES: usize = 1000;
/// Longest line: a longer one is cut into lines of this many bytes.
pub(crate) const MAX_LINE_BYTES: usize = 4096;

/// One line a guest wrote.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct LogLine {
    /// RFC 3339, UTC, milliseconds.
    pub(crate) time: String,
    pub(crate) service: String,
    pub(crate) version: String,
    /// `stdout` or `stderr`.
    pub(crate) stream: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) trace_id: Option<String>,
    /// The span of the request's hop into the service (its `traceparent`'s parent id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) span_id: Option<String>,
    /// The text (invalid UTF-8 replaced), without its newline.
    pub(crate) line: String,
}

/// The last lines of one service, and their broadcast.
pub(crate) struct ServiceLog {
    service: String,
    kept: Mutex<VecDeque<LogLine>>,
    live: broadcast::Sender<LogLine>,
}

impl ServiceLog {
    pub(crate) fn new(service: &str) -> Arc<ServiceLog> {
        Arc::new(ServiceLog {
            service: service.to_string(),
            kept: Mutex::new(VecDeque::with_capacity(64)),
            live: broadcast::channel(KEPT_LINES).0,
        })
    }

    /// The last `limit` lines, oldest first.
    pub(crate) fn tail(&self, limit: usize) -> Vec<LogLine> {
        let kept = self.kept.lock();
        kept.iter()
            .skip(kept.len().saturating_sub(limit))
            .cloned()
            .collect()
    }

    /// The last `limit` lines and every line after them, without a gap between the two.
    pub(crate) fn follow(&self, limit: usize) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let kept = self.kept.lock();
        let receiver = self.live.subscribe();
        let tail = kept
            .iter()
            .skip(kept.len().saturating_sub(limit))
            .cloned()
            .collect();
        (tail, receiver)
    }

    fn push(&self, line: LogLine) {
        tracing::info!(
            target: "guest",
            service = %line.service,
            version = %line.version,
            stream = line.stream,
            request_id = line.request_id.as_deref().unwrap_or("-"),
            trace_id = line.trace_id.as_deref().unwrap_or("-"),
            span_id = line.span_id.as_deref().unwrap_or("-"),
            "{}",
            line.line
        );
        let mut kept = self.kept.lock();
        if kept.len() == KEPT_LINES {
            kept.pop_front();
        }
        kept.push_back(line.clone());
        // Sent under the lock, so that `follow` never sees a line twice or misses one.
        let _ = self.live.send(line);
    }
}

/// What an instance is serving now: renewed with each request a warm instance takes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Serving {
    pub(crate) version: String,
    pub(crate) request_id: Option<String>,
    pub(crate) trace_id: Option<String>,
    pub(crate) span_id: Option<String>,
}

impl Serving {
    pub(crate) fn of(request: &super::RequestContext) -> Serving {
        let part = |n: usize| {
            let traceparent = request.traceparent.as_deref()?;
            let part = traceparent.split('-').nth(n)?;
            Some(part.to_string())
        };
        Serving {
            version: request.version.clone(),
            request_id: request.request_id.clone(),
            trace_id: part(1),
            span_id: part(2),
        }
    }
}

/// One instance's stdout or stderr.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    inner: Arc<Mutex<Pending>>,
}

/// The bytes of the line being written, and where lines go.
struct Pending {
    log: Arc<ServiceLog>,
    serving: Arc<Mutex<Serving>>,
    stream: &'static str,
    partial: Vec<u8>,
}

impl Pending {
    fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = MAX_LINE_BYTES - self.partial.len();
            match bytes.iter().take(room).position(|&b| b == b'\n') {
                Some(end) => {
                    self.partial.extend_from_slice(&bytes[..end]);
                    self.emit();
                    bytes = &bytes[end + 1..];
                }
                None => {
                    let take = bytes.len().min(room);
                    self.partial.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.partial.len() == MAX_LINE_BYTES {
                        self.emit();
                    }
                }
            }
        }
    }

    fn emit(&mut self) {
        let mut text = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        if text.ends_with('\r') {
            text.pop();
        }
        let serving = self.serving.lock().clone();
        self.log.push(LogLine {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            service: self.log.service.clone(),
            version: serving.version,
            stream: self.stream,
            request_id: serving.request_id,
            trace_id: serving.trace_id,
            span_id: serving.span_id,
            line: text,
        });
    }
}

impl Drop for Pending {
    /// A last line without its newline is still a line.
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            self.emit();
        }
    }
}

impl GuestOutput {
    pub(crate) fn new(
        log: Arc<ServiceLog>,
        serving: Arc<Mutex<Serving>>,
        stream: &'static str,
    ) -> GuestOutput {
        GuestOutput {
            inner: Arc::new(Mutex::new(Pending {
                log,
                serving,
                stream,
                partial: Vec::new(),
            })),
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.inner.lock().write(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(MAX_LINE_BYTES)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.inner.lock().write(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_into_tagged_lines_and_the_last_ones_kept() {
        let log = ServiceLog::new("svc");
        let serving = Arc::new(Mutex::new(Serving {
            version: "v1".into(),
            request_id: Some("r-1".into()),
            trace_id: None,
            span_id: None,
        }));
        let (_, mut live) = log.follow(0);
        let out = GuestOutput::new(log.clone(), serving.clone(), "stdout");
        out.inner.lock().write(b"one\ntw");
        out.inner.lock().write(b"o\r\n");
        serving.lock().request_id = Some("r-2".into());
        out.inner.lock().write(&vec![b'x'; MAX_LINE_BYTES + 3]);
        drop(out);
        let lines = log.tail(10);
        let text: Vec<(&str, Option<&str>, usize)> = lines
            .iter()
            .map(|l| {
                (
                    l.line.get(..3).unwrap_or(&l.line),
                    l.request_id.as_deref(),
                    l.line.len(),
                )
            })
            .collect();
        assert_eq!(
            text,
            [
                ("one", Some("r-1"), 3),
                ("two", Some("r-1"), 3),
                ("xxx", Some("r-2"), MAX_LINE_BYTES),
                ("xxx", Some("r-2"), 3),
            ]
        );
        assert_eq!(live.try_recv().map(|l| l.line), Ok("one".to_string()));
        for i in 0..KEPT_LINES + 5 {
            log.push(LogLine {
                line: i.to_string(),
                ..lines[0].clone()
            });
        }
        let tail = log.tail(usize::MAX);
        assert_eq!(tail.len(), KEPT_LINES);
        assert_eq!(tail.last().map(|l| l.line.as_str()), Some("1004"));
        assert_eq!(log.tail(2).len(), 2);
    }
}
