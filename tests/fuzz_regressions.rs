//! Every input a fuzz target failed on, replayed through the very checks the target
//! runs (`fuzz/src/checks.rs`, compiled in here). Inputs live as base64 literals
//! below or as files under `tests/fuzz_regressions/<target>/` (drop a crash file from
//! `fuzz/artifacts/<target>/` there and it is replayed by the target's test).

#[path = "../fuzz/src/checks.rs"]
mod checks;

use base64::Engine as _;
use lwm2m_gateway::formats::fmt_id;
use std::path::Path;

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64 test input")
}

/// Replays every file under `tests/fuzz_regressions/<target>/` and the seed corpus.
fn replay_files(target: &str, f: impl Fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [
        root.join("tests/fuzz_regressions").join(target),
        root.join("fuzz/seeds").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).expect("regression input");
            f(&data);
        }
    }
}

#[test]
fn coap_message() {
    for s in ["QAEAAA==", "UAIAAbJyZA==", "QAIAAf8=", "RAIAAQECAwSxcg=="] {
        checks::coap_message(&b64(s));
    }
    replay_files("coap_message", checks::coap_message);
}

#[test]
fn link_format() {
    for s in [
        "PC8xLzA+LDwvMy8wPg==",
        "PC9sd20yPjtydD0ib21hLmx3bTJtIiw8L2x3bTIvMy8wPg==",
        "PCI+LDw+",
    ] {
        checks::link_format(&b64(s));
    }
    replay_files("link_format", checks::link_format);
}

/// CBOR widens an f32 to its shortest decimal; the encoder writes an exact f32 back
/// as f32 (half float 0x0041 at /3/0/22).
#[test]
fn cbor_float_widening_round_trip() {
    checks::decode_format(fmt_id::CBOR, &b64("9/kAQQ=="));
}

/// A tagged CBOR Time at a String or Float resource (written back untagged).
#[test]
fn cbor_time_at_other_resource_types() {
    checks::decode_format(fmt_id::CBOR, &b64("C8Eg"));
    checks::decode_format(fmt_id::CBOR, &b64("3MEg"));
}

/// Non-UTF-8 text at a String resource decodes as untyped bytes.
#[test]
fn text_untyped_bytes() {
    checks::decode_format(fmt_id::TEXT, &b64("iryK"));
}

#[test]
fn every_format_from_files() {
    for (target, fmt) in [
        ("tlv", fmt_id::TLV),
        ("oma_json", fmt_id::OMA_JSON),
        ("senml_json", fmt_id::SENML_JSON),
        ("senml_cbor", fmt_id::SENML_CBOR),
        ("lwm2m_cbor", fmt_id::LWM2M_CBOR),
        ("text", fmt_id::TEXT),
    ] {
        replay_files(target, |d| checks::decode_format(fmt, d));
    }
}

#[test]
fn command_json() {
    for s in [
        r#"{"reqID":1,"msgType":"write","data":{"path":"/3/0/13","type":"Time","value":1}}"#,
        r#"{"msgType":"read","data":{"path":"3/0"}}"#,
        r#"[1,2"#,
    ] {
        for enc in 0u8..6 {
            let mut d = vec![enc];
            d.extend_from_slice(s.as_bytes());
            checks::command_json(&d);
        }
    }
    replay_files("command_json", checks::command_json);
}

#[test]
fn config_and_objects() {
    checks::config_toml(b"[mqtt]\nserver = 3\n");
    checks::config_toml(b"mountpoint = \"lwm2m/${endpoint_name}/\"\n");
    checks::objects_xml(b"<LWM2M><Object><ObjectID>1</ObjectID></Object></LWM2M>");
    replay_files("config_toml", checks::config_toml);
    replay_files("objects_xml", checks::objects_xml);
}

/// A device reusing a message ID for a new request gets the cached reply of the
/// first one, token included (RFC 7252 §4.5): not a mismatch.
#[test]
fn core_reused_message_id_is_a_duplicate() {
    checks::core_endpoint(&b64("AGMAAAAAAAAAACA="));
}

/// A Register altered in flight registers a name the sender never meant.
#[test]
fn core_mutated_register() {
    checks::core_endpoint(&b64("BgYVAQAAABUAABwHv///1tss29vc"));
}

#[test]
fn core_endpoint_files() {
    replay_files("core_endpoint", checks::core_endpoint);
}

/// Three shards, no immediate delivery: dev-a registers on shard A, then on shard B
/// (which claims the directory and queues an Evict for A), then on A again before
/// the Evict arrives. A finds the name in its own table and replaces it locally, so
/// it never evicts B's registration; the Evict then names A's old location and does
/// nothing. dev-a stays registered on two shards and B's copy outlives the directory
/// entry (never evicted, never routed to).
/// Fixed in src/lwm2m/core.rs `register()`: the other shard's copy is evicted even
/// when the name is also found locally.
#[test]
fn core_same_name_on_two_shards() {
    checks::core_endpoint(&b64("CgAAAAAAAAAAAABkAAAAD///////AHY="));
}

/// Found by tests/hostile_network.rs (a duplicate delayed past the next exchange):
/// the reply cache keeps only the endpoint's last reply, so a retransmission of an
/// earlier Update arriving after a newer Update (well within EXCHANGE_LIFETIME) is
/// executed again: a second MQTT update message, and the older parameters (here
/// the lifetime) roll back. It also evicts the newer reply, so the newer request's
/// own retransmissions are executed again too.
/// Fixed in src/lwm2m/core.rs (replies remembered per message ID, RFC 7252 §4.5).
#[test]
fn core_reordered_duplicate_of_an_earlier_update() {
    use lwm2m_gateway::coap::codes::POST;
    let mut w = checks::World::new(1);
    let reg = checks::request(
        true,
        POST,
        1,
        &[1],
        &[b"rd"],
        &[b"ep=dev-a", b"lt=100"],
        b"</3/0>",
    );
    w.datagram(0, &reg);
    let loc = w.locations[0].clone();
    let a = checks::request(
        true,
        POST,
        2,
        &[2],
        &[b"rd", loc.as_bytes()],
        &[b"lt=60"],
        b"",
    );
    let b = checks::request(
        true,
        POST,
        3,
        &[3],
        &[b"rd", loc.as_bytes()],
        &[b"lt=300"],
        b"",
    );
    w.datagram(0, &a);
    w.datagram(0, &b);
    let before = w.publishes;
    // A retransmission of A, delayed by the network past B.
    w.datagram(0, &a);
    let (_, ep) = w.cores[0].endpoints().slots().next().expect("registered");
    assert_eq!(
        ep.lifetime_s, 300,
        "the stale duplicate rolled the lifetime back"
    );
    assert_eq!(w.publishes, before, "the stale duplicate published again");
}

/// Three shards, no immediate delivery: dev-a registers on shard 0 (location L0),
/// then from another address on shard 1 (which claims the directory and queues an
/// Evict for shard 0); before the Evict lands, the old address de-registers L0 on
/// shard 0. Shard 0 removes its copy and unsubscribes `lwm2m/dev-a/dn/#`, the filter
/// the live registration on shard 1 needs: commands to dev-a are no longer received.
/// Fix belongs in src/lwm2m/core.rs `remove_endpoint()`: do not unsubscribe (or clear
/// the route) when the directory names a newer registration with the same mountpoint.
#[test]
fn core_subscription_lost() {
    checks::core_endpoint(&b64("AgAAAAAFEAABAAABJAAFEAAAAggACwkA"));
}
