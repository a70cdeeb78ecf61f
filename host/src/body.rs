//! Bodies read whole, up to a limit: the request at the edge, a guest's response, a
//! guest's call to another service. One place tells "too large" from "broken".

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body could not be read: {0}")]
    Failed(String),
}

/// Reads `body` whole, refusing more than `limit` bytes.
pub(crate) async fn collect<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(limit)),
        Err(e) => Err(BodyError::Failed(e.to_string())),
    }
}
