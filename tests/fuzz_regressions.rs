//! Every input a fuzz target failed on, replayed through the very checks the target
//! runs (`fuzz/src/checks.rs`, compiled in here). Inputs live as base64 literals
//! below or as files under `tests/fuzz_regressions/<target>/` (drop a crash file from
//! `fuzz/artifacts/<target>/` there and it is replayed by the target's test).

// `pub` for the fuzz targets, which call them from their own crate.
#[allow(unreachable_pub)]
#[path = "../fuzz/src/checks.rs"]
mod checks;
#[allow(unreachable_pub)]
#[path = "../fuzz/src/send.rs"]
mod send;

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

/// Composite commands and fuzzed answers: the seeds (each device format, read and observe,
/// answers in every format, notifications, a cancel, Block2) and the regressions under
/// tests/fuzz_regressions/composite_response: an answer in link-format listed as links
/// (`answer_in_link_format`), and the timed-out fetch of a Block2 notification's rest
/// publishing a second final message for its observe (`notification_block_fetch_timed_out`).
#[test]
fn composite_response() {
    for s in ["", "AA==", "gP8=", "gv8AAQ==", "gz8EAAIAAwQKBgc="] {
        checks::composite_response(&b64(s));
    }
    replay_files("composite_response", checks::composite_response);
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

/// Every input under tests/fuzz_regressions/core_endpoint and the seeds. Among them, two
/// nodes leaving a record in the store once every registration ended (`two_nodes::finish`
/// asserts none): a take the node did not take in (it held the name), then its own
/// older registration let go, both removals in one batch
/// (`two_nodes_take_not_taken_in_leaves_no_record`); an adopted registration's Update and
/// removal in one batch (`two_nodes_adopted_record_removed_with_its_update`); a released
/// registration's Update (`two_nodes_released_update_leaves_no_record`); and a record lost
/// while its registration lives, an Update of an older registration coalesced behind a
/// newer registration's claim (`two_nodes_update_of_an_older_registration_before_a_newer_claim`).
/// A stale Evict removing a registration its shard had taken back in from the store,
/// leaving its subscription behind (`two_nodes_subscription_left_after_cross_shard_supersede_a`,
/// `_b`); a registration taken in with nobody subscribed and taken over again before its
/// SUBACK (`two_nodes_taken_over_again_before_its_suback`, not a handover: docs/reliability.md);
/// a node's take of its own record bringing an ended registration back, whose record was
/// then lost while it lived (`two_nodes_ended_registration_taken_back_from_the_own_record`).
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
/// Fixed: `remove_endpoint()` leaves the route and the subscription alone when the
/// directory names a newer registration with the same mountpoint.
#[test]
fn core_subscription_lost() {
    checks::core_endpoint(&b64("AgAAAAAFEAABAAABJAAFEAAAAggACwkA"));
}

/// Commands through the stateful check: a read answered piggybacked, an observe
/// answered with Observe and then notified, an execute acknowledged empty and
/// answered separately (CON, then a duplicate of it), a read reset, a delete met by
/// silence (coap_timeout) with a read queued behind it (the device is not in queue
/// mode, so the queue TTL does not apply: the read goes out when the delete timed out,
/// and is met by silence too), a command for an unknown endpoint, one that
/// is not JSON and one with an unknown msgType; then 300 s and two days. Every
/// command gets exactly one final message (checked inside).
#[test]
fn core_commands_every_outcome() {
    let w = checks::run_core(&b64(
        "AIEAAAAoEAABAQcKAAAAAA0AAAAACgEAAwINAAAASAABDwAAAAAJAAIKAAAEBQ0AAAABDQAAAAIAMgUAAAAACgAAAAENAAAABAoAAAUDCgAAAAAKAPoAAAoAAEAAEQoAAAkABgDIBgD/",
    ));
    eprintln!(
        "{} commands, {} finals, {} acks, {} notifications, {} requests",
        w.cmds.len(),
        w.finals,
        w.acks,
        w.notifies,
        w.requests
    );
    assert_eq!(w.cmds.len(), 9);
    assert_eq!(
        w.finals, 9,
        "one final each (the one not JSON without reqID)"
    );
    assert_eq!(w.anon_finals, 1);
    assert_eq!(w.acks, 1, "the empty ACK's event");
    assert_eq!(w.notifies, 1);
    // read, observe, execute, read, delete and the read behind it, with 4
    // retransmissions each.
    assert_eq!(w.requests, 14);
}

/// Found by `core_endpoint` (run C, without commands): three shards; dev-a registers
/// on shard 2; an Update of its location arrives on shard 1 (a new NAT binding), so
/// shard 1 asks shard 2 for it (Takeover) and shard 2 sends it over (Adopt); before
/// the Adopt lands, dev-a registers again on shard 0, which claims the directory and
/// evicts shard 2 (where nothing is left). Shard 1 then adopts the stale copy: it
/// only looks for the name in its own table, not at the directory, which names the
/// newer registration on shard 0. dev-a stays registered on shards 0 and 1 (the stale
/// copy is never routed to and lives out its lifetime).
/// Fixed: `handle_message` (`ShardMsg::Adopt`) treats the adopted endpoint as stale
/// when the directory names another location.
#[test]
fn core_adopt_after_reregistration_elsewhere() {
    checks::core_endpoint(&b64("AgAAAgAABRAAATIgAQACD9nZ2QDZ2fgACQA="));
}

/// Found by tests/hostile_network.rs (with command traffic, seed 0x5eed0001): a
/// device's Update A is answered; the device moves to a new NAT binding (another
/// shard takes the registration over with Update B); then a delayed duplicate of A
/// arrives from the old address. The reply cache is looked up by the endpoint's
/// current peer only, so A is executed again: a second update message, and the
/// registration moves back to the address the device has left (downlink requests
/// go there until its next Update). RFC 7252 §4.5 keys duplicates by source
/// endpoint, so the fix is a policy choice for the core.
/// Belongs to src/lwm2m/core.rs `answer_duplicate()` (line 433): also match the
/// cached replies of the endpoint whose location the request names, or remember
/// the previous peer's replies after a takeover.
#[test]
fn core_duplicate_from_an_old_nat_binding() {
    use lwm2m_gateway::coap::codes::POST;
    let mut w = checks::World::new(2);
    let reg = checks::request(
        true,
        POST,
        1,
        &[1],
        &[b"rd"],
        &[b"ep=dev-a", b"lt=300"],
        b"</3/0>",
    );
    w.datagram(0, &reg);
    let loc = w.locations[0].clone();
    let upd = |mid: u16| {
        checks::request(
            true,
            POST,
            mid,
            &[mid as u8],
            &[b"rd", loc.as_bytes()],
            &[],
            b"",
        )
    };
    let a = upd(2);
    w.datagram(0, &a);
    // Update B from the device's new address, on the other shard: a takeover.
    w.datagram(1, &upd(3));
    w.deliver_all();
    let peer = |w: &checks::World| {
        w.cores
            .iter()
            .flat_map(|c| c.endpoints().slots().map(|(_, e)| e.peer))
            .collect::<Vec<_>>()
    };
    let moved = peer(&w);
    let before = w.publishes;
    // The network delivers a late copy of A from the old address.
    w.datagram(0, &a);
    w.deliver_all();
    assert_eq!(
        peer(&w),
        moved,
        "the stale duplicate moved the registration back"
    );
    assert_eq!(w.publishes, before, "the stale duplicate published again");
}

/// Found by `core_endpoint` (run C, with commands): dev-a on shard 0 has a read in
/// flight; an Update from a new address reaches shard 1, which asks shard 0 for the
/// registration (Takeover), and shard 0 sends it, session included (Adopt). Before
/// the Adopt lands, dev-a registers again from the new address on shard 1. Shard 1
/// then finds the name in its table and drops the adopted registration as stale,
/// session and all: the read never gets a final message (no response, no timeout,
/// no error), and nothing holds it any more. Fixed: `handle_message`
/// (`ShardMsg::Adopt`) finishes the stale endpoint's session ("endpoint registered
/// again") before dropping it.
#[test]
fn core_command_lost_with_a_stale_adopted_registration() {
    use lwm2m_gateway::coap::codes::POST;
    let mut w = checks::World::new(2);
    let reg = |mid: u16| {
        checks::request(
            true,
            POST,
            mid,
            &[mid as u8],
            &[b"rd"],
            &[b"ep=dev-a", b"lt=300"],
            b"</3/0>",
        )
    };
    w.datagram(0, &reg(1));
    let loc = w.locations[0].clone();
    w.command(
        0,
        1,
        "dev-a",
        Some("read"),
        r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/1"}}"#.into(),
        false,
    );
    assert_eq!(w.requests, 1, "the read went out");
    // An Update from a new address on shard 1: Takeover to shard 0, Adopt back.
    let upd = checks::request(true, POST, 2, &[2], &[b"rd", loc.as_bytes()], &[], b"");
    w.datagram(1, &upd);
    w.deliver(0);
    // dev-a registers again from that address before the Adopt lands.
    w.datagram(1, &reg(3));
    w.deliver_all();
    w.check_quiescent();
}

#[test]
fn dtls_records() {
    checks::dtls_records(b"");
    checks::dtls_records(&[0, 0, 4, 0x16, 0xfe, 0xfd, 0, 1]);
    // A real ClientHello from a PSK client, then junk from the same peer.
    checks::dtls_records(&client_hello_input());
    // The same ClientHellos with the record version mbedTLS 2.x sends (0xFE00).
    let mut fe00 = client_hello_input();
    let len = u16::from_be_bytes([fe00[1], fe00[2]]) as usize;
    fe00[5] = 0x00;
    fe00[3 + len + 1 + 5] = 0x00;
    checks::dtls_records(&fe00);
    replay_files("dtls_records", checks::dtls_records);
}

#[test]
fn dtls_cid_records() {
    checks::dtls_cid_records(b"");
    // Genuine records from three addresses, replays, altered records, forged
    // records for this shard and the other one.
    checks::dtls_cid_records(&[
        0, 1, 0, 0, 5, 3, 1, 6, 0, 2, 6, 9, 2, 7, 200, 3, 9, 4, 1, 2, 3, 4, 3, 9, 5, 1, 2, 3, 4, 5,
        0, 9, 1, 1, 1, 0, 0, 1, 0,
    ]);
    replay_files("dtls_cid_records", checks::dtls_cid_records);
}

/// `[peer 0][len][a ClientHello made by dimpl's client][step]` twice, then junk.
fn client_hello_input() -> Vec<u8> {
    use std::sync::Arc;
    struct Key;
    impl dimpl::PskResolver for Key {
        fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
            Some((0u8..16).collect())
        }
    }
    let config = dimpl::Config::builder()
        .dtls12_cipher_suites(&[dimpl::crypto::Dtls12CipherSuite::PSK_AES128_CCM_8])
        .with_psk_client(b"dev-1".to_vec(), Arc::new(Key))
        .build()
        .expect("client config");
    let now = std::time::Instant::now();
    let mut c = dimpl::Dtls::new_12_psk(Arc::new(config), now);
    c.set_active(true);
    c.handle_timeout(now).expect("client start");
    let mut buf = vec![0u8; 4096];
    let mut hello = Vec::new();
    while let dimpl::Output::Packet(p) = c.poll_output(&mut buf) {
        hello = p.to_vec();
    }
    assert!(hello.len() > 50, "dimpl produced a ClientHello");
    let mut input = Vec::new();
    for _ in 0..2 {
        input.push(0);
        input.extend_from_slice(&(hello.len() as u16).to_be_bytes());
        input.extend_from_slice(&hello);
        input.push(1);
    }
    input.extend_from_slice(&[0, 0, 3, 0x17, 0xfe, 0xfd, 9]);
    input
}

/// Found by `core_endpoint` after the takeover-race fixes (see docs/reliability.md).
#[test]
fn core_directory_entry_after_takeover_race() {
    checks::core_endpoint(&b64(
        "SgAAN2MKXV1dXV1dXV1dXThlNTAAXV1dXV1dXV1dXV0dXV1dXU9dXV39/F1dyjBdADhdll0=",
    ));
}

/// Found by `core_endpoint` after the fourth takeover fix (see docs/reliability.md).
#[test]
fn core_subscription_after_stale_adopt() {
    checks::core_endpoint(&b64("AgAAAgIAAAkBAAABHwAAAAAAAAAkMAUQAgAFAADU1NTUAAICAAAAAgAAAgIAAAkBAAABHwAAAAAAAAAkAAUQAgAFAADU1NTKAAICAAAACQAAANTU1NTU1NQCAAUAANTU1NTU1NTU//+mpqb//////////6WlpaXopaWlpaWlpaWlpaVERERERERERERERKWlpaWlpaWlpaampqb/ADs="));
}

/// Found by `core_endpoint`: an endpoint that left a shard and came back to the same
/// slot met its old retransmission timers (now tied to the slot's incarnation).
#[test]
fn core_stale_timers_after_return_to_the_same_slot() {
    checks::core_endpoint(&b64("+////wAAODUspqKioqKioqKioqKioqKioqJnZ2dnZ2dnZ2dnJmdnNzAsKiwsLCwsLCwsLCwsLCwseiwCAAACAP9mZ2dnZ2dnZ///////////////////////////////////////////////////////////////////////CQEJ//X//w1nZ+kNZ2eZmJiYaGfwBQEBZ2cNZGdnZ2c4NSwqLCwsAQEBAQEBAQEBAQEBAQEsLCwsLCwsLCwsLCwCAAACAP9mZ2dnZwBlZ2xnZ6KioqIAAAAPoqKioqKioqKioqKioqKiFgAAAAAAAACioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqIOAKKioqKioqKioqKioqKioqKioqKmoqKioqKioqKioqKioqKiomdnZ2dnZ2dnZ2cmZ2c3MCwqLCwsLCwsLCwsLCwsLCwsAgAAAgD/ZmdnZ2dnZ2f/////////////////////////////////////////////oqKioqKioqKioqKioqKioqKiol5dXV+ioqKioqKioqKioqKioqKioqKmoqKioqKioqKioqKioqKiomdnZ2dnZ2dnZ2cmZ2c3MCwqLCwsLCwsLCwsLCwsLCx6LAIAAAIA/2ZnZ2dnZ2dn//////////////////////////////////////////////////////////////////////8JAQn/9f//DWdnDQ1nZ5mYmJiYmBAAAQFnZw1kZ2dnZzg1LCosLCwsLCwsLCwsLCwsAQAADQACAP9mZ2dnZwBlZ2xnZ6KioqIAAAAPoqKioqKioqKioqKioqKiFgAAAAAAAACioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqIOAKKioqKioqKioqKioqKioqKioqKmoqKioqKioqKioqKioqKiomdnZ2dnZ2dnZ2cmZ2c3MCwqLCwsLCwsLCwsLCwsLCwsAgAAAgD/ZmdnZ2dnZ2f//////////////////////////wkBCf/1//8NZ2cNDWdnmZhnZ2dnZ2dn"));
}

/// Found by `core_endpoint` once subscriptions got a home shard: a subscribe sent to
/// the home of a filter lost to a release racing it.
#[test]
fn core_subscription_home_race() {
    checks::core_endpoint(&b64("AWYBAQBBAQHc3Nzc3Nzc3Nzc3NzcAQAAICoQAAABAQAB/xwC3Nxw5HRo3Jzc/xwC3Nxw5HRo3Nzc3Nzc3AsG3Ny/v7+/v7+/v7+/3Nzc3Nw="));
}

#[test]
fn send_from_files() {
    replay_files("send", send::send);
}

/// Hand-made inputs of the Send target: each content format and refusal, whole and
/// block-wise, and the shapes a hostile device may send.
#[test]
fn send_edges() {
    let cases: &[&[u8]] = &[
        b"",
        b"\x00",
        b"\x00[",
        b"\x00[{\"n\":\"/3/0\",\"v\":1}]",
        b"\x00[{\"bn\":\"/3/0/9/\",\"v\":1},{\"n\":\"x\",\"v\":2}]",
        b"\x00[{\"n\":\"/3/0/9\",\"v\":1,\"bt\":1e308,\"t\":1e308}]",
        b"\x01\x81\xa1\x02",
        b"\x02\xa1\x03\xa1\x00\xa1\x09\x80",
        b"\x03\xc1\x09\x57",
        b"\x05[{\"n\":\"/3/0/9\",\"v\":1}]",
        b"\x18[{\"n\":\"/3/0/9\",\"v\":87},{\"n\":\"/3/0/0\",\"vs\":\"M\"}]",
        b"\x10[{\"n\":\"/3/0/9\",\"v\":87},{\"n\":\"/3/0/0\",\"vs\":\"M\"",
    ];
    for c in cases {
        send::send(c);
    }
}

/// The model's restart (`core_endpoint` with mode 0x40 or 0xC0, 0xC1): two shards, dev-a
/// registers and is observed (`/3/0/1`, Observe 5), the gateway restarts on its store
/// (every registration must come back as it was, checked inside), and a notification
/// on the old token is delivered after it with the observe's reqID (checked inside);
/// everything expires in the end and the store is left empty.
#[test]
fn core_restart_on_the_store_keeps_registrations_and_observations() {
    let input = [
        1, 0xC0, // two shards; 17 ops, the last a restart
        0, 0, 0, 40, 0x10, 0, 1, 0, // dev-a registers (lt 280 s, an object list)
        10, 0, 0, 3, 0, // an MQTT observe of /3/0/1 for dev-a
        13, 0, 0, 0, 66, 0, 5, // dev-a answers 2.05 with Observe 5
        16, 0, // the gateway restarts on its store
        15, 0, 0, 1, 0, 9, 0, 6, // a NON notification, Observe 6, on the old token
    ];
    let w = checks::run_core(&input);
    assert_eq!(w.restarts, 1);
    assert_eq!(w.notifies, 1, "the notification after the restart");
    assert_eq!(w.lost_at_restart, 0);
}

/// Every seed of `core_endpoint` in restart mode, a restart op after its last op (a
/// seed whose ops end in a cut parameter, or that reaches the 256-op cap, gives those
/// bytes to the cut op instead).
#[test]
fn core_endpoint_seeds_with_restarts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/core_endpoint");
    let (mut seeds, mut restarts) = (0, 0);
    for e in std::fs::read_dir(&root).expect("seeds").flatten() {
        let mut data = std::fs::read(e.path()).expect("seed");
        if data.len() > 1 {
            data[1] = data[1] & 0x81 | 0x40;
            // The restart op: the last of 11, or of 17 with 0x80.
            data.extend([if data[1] & 0x80 != 0 { 16 } else { 10 }, 0]);
            seeds += 1;
            restarts += checks::run_core(&data).restarts;
        }
    }
    assert!(seeds > 0);
    assert!(restarts >= 1, "{restarts} restarts in {seeds} seeds");
}

/// `core_endpoint` with two nodes sharing a store (mode 0x20): dev-a registers on node 0,
/// whose batch is written; its Update from a new address reaches node 1, which holds it
/// and asks the store; the take answers it (2.04) and node 0 hears the release (keeping
/// the subscription until node 1's is acknowledged, then told to let it go). A read
/// published then reaches node 1 (the one subscriber of the filter) and is answered
/// there, once.
#[test]
fn core_two_nodes_take_over_a_moved_device() {
    let input = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/core_endpoint/two_nodes_takeover"),
    )
    .expect("seed");
    let c = checks::two_nodes::run_ops(&input);
    assert_eq!((c.adopted, c.released, c.unheard), (1, 1, 0));
    // Node 0 kept dev-a's subscription until node 1's was acknowledged.
    assert_eq!(c.confirmed, 1);
    let kept = c.nodes[0].cores.iter().map(|k| k.stats().handovers_kept);
    assert_eq!(kept.sum::<u64>(), 1);
    assert_eq!(c.store.regs["dev-a"].2, 1, "node 1 owns dev-a");
    let held = |n: usize| c.nodes[n].cores.iter().map(|k| k.endpoints().len()).sum();
    assert_eq!((held(0), held(1)), (0usize, 1usize));
    assert!(c.nodes[0].cmds.is_empty());
    let finals: Vec<u32> = c.nodes[1].cmds.values().map(|k| k.finals).collect();
    assert_eq!(finals, [1], "the read answered once, on node 1");
    let mut c = c;
    checks::two_nodes::finish(&mut c);
}

/// Two nodes: a read in flight on node 0 when node 1 takes dev-a over ends on node 0
/// with one final message (the error of a registration that moved), before any time
/// passes; node 1 never saw it.
#[test]
fn core_two_nodes_release_ends_the_old_nodes_commands() {
    let input = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/core_endpoint/two_nodes_release"),
    )
    .expect("seed");
    let c = checks::two_nodes::run_ops(&input);
    assert_eq!((c.adopted, c.released), (1, 1));
    assert_eq!(
        c.nodes[0].requests, 1,
        "the read went to the device from node 0"
    );
    let finals: Vec<u32> = c.nodes[0].cmds.values().map(|k| k.finals).collect();
    assert_eq!(finals, [1], "ended by the release");
    assert!(c.nodes[1].cmds.is_empty());
    let mut c = c;
    checks::two_nodes::finish(&mut c);
}

/// Every seed of `core_endpoint` replayed with two nodes (mode 0x20, and 0x60 with
/// restarts of a node): the seeds' bytes read as two-node ops.
#[test]
fn core_endpoint_seeds_with_two_nodes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/core_endpoint");
    let mut runs = 0;
    for e in std::fs::read_dir(&root).expect("seeds").flatten() {
        let seed = std::fs::read(e.path()).expect("seed");
        if seed.len() < 2 {
            continue;
        }
        for bits in [0x20, 0x60] {
            let mut data = seed.clone();
            data[1] = data[1] & 0x81 | bits;
            checks::core_endpoint(&data);
            runs += 1;
        }
    }
    assert!(runs >= 6, "{runs} runs");
}
