//! text/plain (0): one resource (or resource instance) value as text, typed from the model.

use super::value::{from_text, resource_kind, ContentItem, Value};
use super::DecodeError;
use crate::model::{LwPath, ObjectModel};

pub(crate) fn decode(
    payload: &[u8],
    req: &LwPath,
    model: &dyn ObjectModel,
    out: &mut Vec<ContentItem>,
) -> Result<(), DecodeError> {
    if req.len() < 3 {
        return Err(DecodeError::NotSingleResource("text/plain", *req));
    }
    let value = std::str::from_utf8(payload)
        .ok()
        .and_then(|s| resource_kind(model, req).and_then(|k| from_text(k, s)))
        .unwrap_or_else(|| Value::Untyped(payload.to_vec()));
    out.push(ContentItem { path: *req, value });
    Ok(())
}
