//! A device's MQTT subscriptions (`.../clients/{clientid}/subscriptions`), EMQX's
//! endpoints, answered truthfully for this gateway: a device has exactly one
//! subscription, the filter that brings it its commands (the mountpoint rendered for it,
//! then the command translator's topic), subscribed for it alone with
//! `mqtt.subscribe = "per_endpoint"` or covered by the gateway's one wildcard filter.
//! It lives as long as the registration: adding another topic or removing it is refused
//! with a message saying so (EMQX lets a gateway client subscribe anything; this gateway
//! routes commands by topic from the mountpoint and could not deliver them).

use simd_json::prelude::*;

use super::http::{Request, Response};
use super::routes::{bad_request, not_found, Ctx};
use super::CommandSubscription;
use crate::json;

fn subscription_json(out: &mut Vec<u8>, s: &CommandSubscription) {
    out.push(b'{');
    json::key(out, "topic");
    json::string(out, &s.topic);
    out.extend_from_slice(b",\"qos\":");
    json::uint(out, u64::from(s.qos));
    out.extend_from_slice(b",\"nl\":0,\"rap\":0,\"rh\":0,\"mode\":");
    json::string(
        out,
        if s.per_endpoint {
            "per_endpoint"
        } else {
            "wildcard"
        },
    );
    out.extend_from_slice(b",\"filter\":");
    json::string(out, &s.filter);
    out.push(b'}');
}

fn of(ctx: &Ctx, id: &str) -> Result<CommandSubscription, Response> {
    ctx.admin
        .command_subscription(id)
        .ok_or_else(|| not_found("Client not found"))
}

/// `GET`: a list of one.
pub(super) fn list(ctx: &Ctx, id: &str) -> Response {
    match of(ctx, id) {
        Ok(s) => {
            let mut out = b"[".to_vec();
            subscription_json(&mut out, &s);
            out.push(b']');
            Response::json(200, out)
        }
        Err(r) => r,
    }
}

/// `POST {"topic":..,"qos":..}`: the device's own command topic is accepted (201, it is
/// subscribed); anything else is refused.
pub(super) fn add(ctx: &Ctx, req: &Request, id: &str) -> Response {
    let mut copy = req.body.clone();
    let body = match simd_json::to_owned_value(&mut copy) {
        Ok(v) if v.is_object() => v,
        Ok(_) => return bad_request("the request body must be a JSON object {\"topic\":..}"),
        Err(e) => return bad_request(&format!("the request body is not valid JSON: {e}")),
    };
    let Some(topic) = body.get("topic").and_then(|t| t.as_str()).map(String::from) else {
        return bad_request("topic: required (a string)");
    };
    let s = match of(ctx, id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if topic != s.topic {
        return bad_request(&format!(
            "the gateway subscribes one topic per device, {:?} (the mountpoint and the \
             command translator's topic); {topic:?} cannot be added: commands are routed \
             to devices by that topic",
            s.topic
        ));
    }
    if let Some(q) = body.get("qos") {
        if q.as_u64() != Some(u64::from(s.qos)) {
            return bad_request(&format!(
                "qos: the command subscription's QoS is translators.command.qos ({}); \
                 change it with PUT /api/v5/gateways/lwm2m",
                s.qos
            ));
        }
    }
    let mut out = Vec::with_capacity(128);
    subscription_json(&mut out, &s);
    Response::json(201, out)
}

/// `DELETE .../subscriptions/{topic}`: refused for the device's command topic, 404 for
/// any other.
pub(super) fn remove(ctx: &Ctx, id: &str, topic: &str) -> Response {
    let s = match of(ctx, id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if topic == s.topic {
        bad_request(&format!(
            "{topic:?} brings the device its commands for as long as it is registered: it \
             cannot be removed (DELETE the client to end the registration)"
        ))
    } else {
        not_found(&format!(
            "the device has no subscription {topic:?} (its one subscription is {:?})",
            s.topic
        ))
    }
}
