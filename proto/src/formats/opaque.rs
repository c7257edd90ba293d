//! application/octet-stream (42): the raw bytes of one resource (or resource instance).

use super::value::{ContentItem, Value};
use super::DecodeError;
use crate::model::LwPath;

pub(crate) fn decode(
    payload: &[u8],
    req: &LwPath,
    out: &mut Vec<ContentItem>,
) -> Result<(), DecodeError> {
    if req.len() < 3 {
        return Err(DecodeError::NotSingleResource("opaque", *req));
    }
    out.push(ContentItem {
        path: *req,
        value: Value::Opaque(payload.to_vec()),
    });
    Ok(())
}
