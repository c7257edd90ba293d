//! Test vectors for the content formats: the OMA TLV example both ways, every format decoded and
//! round-tripped, rendering, write-value parsing, and hostile input (truncations, random bytes,
//! oversized length fields, deep nesting).

use std::collections::BTreeMap;

use super::*;
use crate::model::{ObjectDef, Operations, ResourceDef, ResourceType};

fn res(id: u16, kind: ResourceType, multiple: bool) -> (u16, ResourceDef) {
    (
        id,
        ResourceDef {
            id,
            name: format!("r{id}"),
            kind,
            operations: Operations::from_xml("RW"),
            multiple,
        },
    )
}

/// Device (3) as in the OMA registry, and a test object 9999 with one resource of every type.
fn model() -> BTreeMap<u16, ObjectDef> {
    use ResourceType::*;
    let device = [
        res(0, String, false),
        res(1, String, false),
        res(2, String, false),
        res(3, String, false),
        res(4, None, false),
        res(5, None, false),
        res(6, Integer, true),
        res(7, Integer, true),
        res(8, Integer, true),
        res(9, Integer, false),
        res(10, Integer, false),
        res(11, Integer, true),
        res(12, None, false),
        res(13, Time, false),
        res(14, String, false),
        res(15, String, false),
        res(16, String, false),
        res(22, Objlnk, true),
    ];
    let all = [
        res(0, String, false),
        res(1, Integer, false),
        res(2, UnsignedInteger, false),
        res(3, Float, false),
        res(4, Boolean, false),
        res(5, Opaque, false),
        res(6, Time, false),
        res(7, Objlnk, false),
        res(8, Corelnk, false),
        res(9, Integer, true),
        res(300, String, false),
    ];
    let access_control = [
        res(0, Integer, false),
        res(1, Integer, false),
        res(2, Integer, true),
        res(3, Integer, false),
    ];
    // The specification's hypothetical objects with object links (§6.4.3.3).
    let links_65 = [
        res(0, Objlnk, true),
        res(1, String, false),
        res(2, Integer, false),
    ];
    let links_66 = [
        res(0, String, false),
        res(1, String, false),
        res(2, Objlnk, false),
    ];
    let mut m = BTreeMap::new();
    for (id, name, r) in [
        (2u16, "Access Control", &access_control[..]),
        (3, "Device", &device[..]),
        (65, "Object links 65", &links_65[..]),
        (66, "Object links 66", &links_66[..]),
        (9999, "All", &all[..]),
    ] {
        m.insert(
            id,
            ObjectDef {
                id,
                name: name.into(),
                multiple: id != 3,
                resources: r.iter().cloned().collect(),
            },
        );
    }
    m
}

fn p(s: &str) -> LwPath {
    LwPath::parse(s).unwrap()
}

fn item(path: &str, value: Value) -> ContentItem {
    ContentItem {
        path: p(path),
        value,
    }
}

fn witems(items: &[ContentItem]) -> Vec<WriteItem> {
    items
        .iter()
        .map(|i| WriteItem {
            path: i.path,
            value: i.value.clone(),
        })
        .collect()
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

/// OMA-TS-LightweightM2M-V1_0 §6.4.3.1: Read of the single-instance Device object, /3/0.
const SPEC_DEVICE_TLV: &[u8] = &[
    0xC8, 0x00, 0x14, b'O', b'p', b'e', b'n', b' ', b'M', b'o', b'b', b'i', b'l', b'e', b' ', b'A',
    b'l', b'l', b'i', b'a', b'n', b'c', b'e', //
    0xC8, 0x01, 0x16, b'L', b'i', b'g', b'h', b't', b'w', b'e', b'i', b'g', b'h', b't', b' ', b'M',
    b'2', b'M', b' ', b'C', b'l', b'i', b'e', b'n', b't', //
    0xC8, 0x02, 0x09, b'3', b'4', b'5', b'0', b'0', b'0', b'1', b'2', b'3', //
    0xC3, 0x03, b'1', b'.', b'0', //
    0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01, 0x05, //
    0x88, 0x07, 0x08, 0x42, 0x00, 0x0E, 0xD8, 0x42, 0x01, 0x13, 0x88, //
    0x87, 0x08, 0x41, 0x00, 0x7D, 0x42, 0x01, 0x03, 0x84, //
    0xC1, 0x09, 0x64, //
    0xC1, 0x0A, 0x0F, //
    0x83, 0x0B, 0x41, 0x00, 0x00, //
    0xC4, 0x0D, 0x51, 0x82, 0x42, 0x8F, //
    0xC6, 0x0E, b'+', b'0', b'2', b':', b'0', b'0', //
    0xC1, 0x10, b'U',
];

fn spec_device_items() -> Vec<ContentItem> {
    use Value::*;
    vec![
        item("/3/0/0", s("Open Mobile Alliance")),
        item("/3/0/1", s("Lightweight M2M Client")),
        item("/3/0/2", s("345000123")),
        item("/3/0/3", s("1.0")),
        item("/3/0/6/0", Integer(1)),
        item("/3/0/6/1", Integer(5)),
        item("/3/0/7/0", Integer(3800)),
        item("/3/0/7/1", Integer(5000)),
        item("/3/0/8/0", Integer(125)),
        item("/3/0/8/1", Integer(900)),
        item("/3/0/9", Integer(100)),
        item("/3/0/10", Integer(15)),
        item("/3/0/11/0", Integer(0)),
        item("/3/0/13", Time(0x5182428F)),
        item("/3/0/14", s("+02:00")),
        item("/3/0/16", s("U")),
    ]
}

/// OMA-TS-LightweightM2M-V1_0 §6.4.3.2: Read of the Access Control object, /2, with two
/// instances (the second with a resource instance whose id needs 16 bits).
const SPEC_ACCESS_CONTROL_TLV: &[u8] = &[
    0x08, 0x00, 0x0E, 0xC1, 0x00, 0x01, 0xC1, 0x01, 0x00, 0x83, 0x02, 0x41, 0x7F, 0x07, 0xC1, 0x03,
    0x7F, //
    0x08, 0x02, 0x12, 0xC1, 0x00, 0x03, 0xC1, 0x01, 0x00, 0x87, 0x02, 0x41, 0x7F, 0x07, 0x61, 0x01,
    0x36, 0x01, 0xC1, 0x03, 0x7F,
];

fn spec_access_control_items() -> Vec<ContentItem> {
    use Value::Integer;
    vec![
        item("/2/0/0", Integer(1)),
        item("/2/0/1", Integer(0)),
        item("/2/0/2/127", Integer(7)),
        item("/2/0/3", Integer(127)),
        item("/2/2/0", Integer(3)),
        item("/2/2/1", Integer(0)),
        item("/2/2/2/127", Integer(7)),
        item("/2/2/2/310", Integer(1)),
        item("/2/2/3", Integer(127)),
    ]
}

/// OMA-TS-LightweightM2M-V1_0 §6.4.3.3, example 1: Read of /65/0, whose resource 0 is a
/// multiple resource of object links (to 66:0 and 66:1).
const SPEC_OBJLNK_65_TLV: &[u8] = &[
    0x88, 0x00, 0x0C, 0x44, 0x00, 0x00, 0x42, 0x00, 0x00, 0x44, 0x01, 0x00, 0x42, 0x00,
    0x01, //
    0xC8, 0x01, 0x0D, b'8', b'6', b'1', b'3', b'8', b'0', b'0', b'7', b'5', b'5', b'5', b'0', b'0',
    0xC4, 0x02, 0x12, 0x34, 0x56, 0x78,
];

/// §6.4.3.3, example 2: Read of /66, two instances each with an object link (the second one
/// the null link 65535:65535).
const SPEC_OBJLNK_66_TLV: &[u8] = &[
    0x08, 0x00, 0x26, //
    0xC8, 0x00, 0x0B, b'm', b'y', b'S', b'e', b'r', b'v', b'i', b'c', b'e', b' ', b'1', //
    0xC8, 0x01, 0x0F, b'I', b'n', b't', b'e', b'r', b'n', b'e', b't', b'.', b'1', b'5', b'.', b'2',
    b'3', b'4', //
    0xC4, 0x02, 0x00, 0x43, 0x00, 0x00, //
    0x08, 0x01, 0x26, //
    0xC8, 0x00, 0x0B, b'm', b'y', b'S', b'e', b'r', b'v', b'i', b'c', b'e', b' ', b'2', //
    0xC8, 0x01, 0x0F, b'I', b'n', b't', b'e', b'r', b'n', b'e', b't', b'.', b'1', b'5', b'.', b'2',
    b'3', b'5', //
    0xC4, 0x02, 0xFF, 0xFF, 0xFF, 0xFF,
];

// ---------------------------------------------------------------- TLV

#[test]
fn tlv_spec_object_links_both_ways() {
    let want_65 = vec![
        item("/65/0/0/0", Value::Objlnk(66, 0)),
        item("/65/0/0/1", Value::Objlnk(66, 1)),
        item("/65/0/1", s("8613800755500")),
        item("/65/0/2", Value::Integer(305_419_896)),
    ];
    let got = decode(Some(fmt_id::TLV), SPEC_OBJLNK_65_TLV, &p("/65/0"), &model()).unwrap();
    assert_eq!(got, want_65);
    let bytes = encode(fmt_id::TLV, &p("/65/0"), &witems(&want_65)).unwrap();
    assert_eq!(bytes, SPEC_OBJLNK_65_TLV);

    let want_66 = vec![
        item("/66/0/0", s("myService 1")),
        item("/66/0/1", s("Internet.15.234")),
        item("/66/0/2", Value::Objlnk(67, 0)),
        item("/66/1/0", s("myService 2")),
        item("/66/1/1", s("Internet.15.235")),
        item("/66/1/2", Value::Objlnk(65535, 65535)),
    ];
    let got = decode(Some(fmt_id::TLV), SPEC_OBJLNK_66_TLV, &p("/66"), &model()).unwrap();
    assert_eq!(got, want_66);
    let bytes = encode(fmt_id::TLV, &p("/66"), &witems(&want_66)).unwrap();
    assert_eq!(bytes, SPEC_OBJLNK_66_TLV);
    // As MQTT content: object links as "O:I".
    let mut out = Vec::new();
    write_content_json(&got[2..3], &mut out);
    assert_eq!(out, br#"[{"path":"/66/0/2","value":"67:0"}]"#);
}

#[test]
fn tlv_spec_multiple_object_instances_both_ways() {
    let got = decode(
        Some(fmt_id::TLV),
        SPEC_ACCESS_CONTROL_TLV,
        &p("/2"),
        &model(),
    )
    .unwrap();
    assert_eq!(got, spec_access_control_items());
    let bytes = encode(fmt_id::TLV, &p("/2"), &witems(&spec_access_control_items())).unwrap();
    assert_eq!(bytes, SPEC_ACCESS_CONTROL_TLV);
}

#[test]
fn tlv_spec_device_read_decodes() {
    let got = decode(Some(fmt_id::TLV), SPEC_DEVICE_TLV, &p("/3/0"), &model()).unwrap();
    assert_eq!(got, spec_device_items());
    // Old content-format number and a missing option (instance path → TLV) decode the same.
    assert_eq!(
        decode(Some(fmt_id::OLD_TLV), SPEC_DEVICE_TLV, &p("/3/0"), &model()).unwrap(),
        got
    );
    assert_eq!(
        decode(None, SPEC_DEVICE_TLV, &p("/3/0"), &model()).unwrap(),
        got
    );
}

#[test]
fn tlv_spec_device_read_encodes_byte_for_byte() {
    let bytes = encode(fmt_id::TLV, &p("/3/0"), &witems(&spec_device_items())).unwrap();
    assert_eq!(bytes, SPEC_DEVICE_TLV);
}

#[test]
fn tlv_levels_relative_to_request_path() {
    let m = model();
    // Read of /3: object instance wrapper.
    let mut wrapped = vec![0x08, 0x00, SPEC_DEVICE_TLV.len() as u8];
    wrapped.extend_from_slice(SPEC_DEVICE_TLV);
    let got = decode(Some(fmt_id::TLV), &wrapped, &p("/3"), &m).unwrap();
    assert_eq!(got, spec_device_items());
    // Read of /3/0 answered with the wrapper as well.
    assert_eq!(
        decode(Some(fmt_id::TLV), &wrapped, &p("/3/0"), &m).unwrap(),
        got
    );
    // Read of /3/0/7: the multiple resource element...
    let r7 = [
        0x88, 0x07, 0x08, 0x42, 0x00, 0x0E, 0xD8, 0x42, 0x01, 0x13, 0x88,
    ];
    let want = vec![
        item("/3/0/7/0", Value::Integer(3800)),
        item("/3/0/7/1", Value::Integer(5000)),
    ];
    assert_eq!(
        decode(Some(fmt_id::TLV), &r7, &p("/3/0/7"), &m).unwrap(),
        want
    );
    // ...or bare resource instances.
    assert_eq!(
        decode(Some(fmt_id::TLV), &r7[3..], &p("/3/0/7"), &m).unwrap(),
        want
    );
    // Read of /3/0/9 and of a resource instance.
    assert_eq!(
        decode(Some(fmt_id::TLV), &[0xC1, 0x09, 0x64], &p("/3/0/9"), &m).unwrap(),
        vec![item("/3/0/9", Value::Integer(100))]
    );
    assert_eq!(
        decode(Some(fmt_id::TLV), &[0x41, 0x01, 0x05], &p("/3/0/6/1"), &m).unwrap(),
        vec![item("/3/0/6/1", Value::Integer(5))]
    );
    // Two instances of object 9999 with a 16-bit resource id.
    let two = [
        0x08, 0x01, 0x03, 0xC1, 0x01, 0x07, 0x08, 0x02, 0x05, 0xE2, 0x01, 0x2C, b'h', b'i',
    ];
    assert_eq!(
        decode(Some(fmt_id::TLV), &two, &p("/9999"), &m).unwrap(),
        vec![
            item("/9999/1/1", Value::Integer(7)),
            item("/9999/2/300", s("hi"))
        ]
    );
    // A resource element where instances are expected, and a resource in a multiple resource.
    assert!(decode(Some(fmt_id::TLV), &[0xC1, 0x09, 0x64], &p("/3"), &m).is_err());
    assert!(decode(
        Some(fmt_id::TLV),
        &[0x83, 0x0B, 0xC1, 0x00, 0x00],
        &p("/3/0"),
        &m
    )
    .is_err());
    assert!(decode(Some(fmt_id::TLV), &[0x41, 0x00, 0x00], &p("/3/0"), &m).is_err());
    // Empty payload: no items.
    assert_eq!(
        decode(Some(fmt_id::TLV), &[], &p("/3/0"), &m).unwrap(),
        vec![]
    );
}

#[test]
fn tlv_decodes_all_widths_and_types() {
    let m = model();
    let dec = |bytes: &[u8], path: &str| {
        let got = decode(Some(fmt_id::TLV), bytes, &p(path), &m).unwrap();
        assert_eq!(got.len(), 1);
        got.into_iter().next().unwrap().value
    };
    assert_eq!(dec(&[0xC1, 0x01, 0xFF], "/9999/0/1"), Value::Integer(-1));
    assert_eq!(
        dec(&[0xC2, 0x01, 0x80, 0x00], "/9999/0/1"),
        Value::Integer(-32768)
    );
    assert_eq!(
        dec(&[0xC4, 0x01, 0x7F, 0xFF, 0xFF, 0xFF], "/9999/0/1"),
        Value::Integer(i32::MAX as i64)
    );
    assert_eq!(
        dec(&[0xC8, 0x01, 0x08, 0x80, 0, 0, 0, 0, 0, 0, 0], "/9999/0/1"),
        Value::Integer(i64::MIN)
    );
    assert_eq!(dec(&[0xC1, 0x02, 0xFF], "/9999/0/2"), Value::Unsigned(255));
    assert_eq!(
        dec(
            &[0xC8, 0x02, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
            "/9999/0/2"
        ),
        Value::Unsigned(u64::MAX)
    );
    assert_eq!(
        dec(&[0xC4, 0x03, 0x3F, 0xC0, 0, 0], "/9999/0/3"),
        Value::Float(1.5)
    );
    // A single-precision float reads as its shortest decimal.
    let f = 1.1f32.to_be_bytes();
    assert_eq!(
        dec(&[0xC4, 0x03, f[0], f[1], f[2], f[3]], "/9999/0/3"),
        Value::Float(1.1)
    );
    let d = 0.1f64.to_be_bytes();
    let mut v = vec![0xC8, 0x03, 0x08];
    v.extend_from_slice(&d);
    assert_eq!(dec(&v, "/9999/0/3"), Value::Float(0.1));
    assert_eq!(dec(&[0xC1, 0x04, 0x01], "/9999/0/4"), Value::Boolean(true));
    assert_eq!(dec(&[0xC1, 0x04, 0x00], "/9999/0/4"), Value::Boolean(false));
    assert_eq!(
        dec(&[0xC2, 0x05, 0xDE, 0xAD], "/9999/0/5"),
        Value::Opaque(vec![0xDE, 0xAD])
    );
    assert_eq!(
        dec(&[0xC4, 0x07, 0x00, 0x03, 0x00, 0x01], "/9999/0/7"),
        Value::Objlnk(3, 1)
    );
    assert_eq!(
        dec(&[0xC3, 0x08, b'<', b'/', b'>'], "/9999/0/8"),
        Value::Corelnk("</>".into())
    );
    // Data that does not fit the defined type, and unknown objects, come out untyped.
    assert_eq!(
        dec(&[0xC3, 0x01, 1, 2, 3], "/9999/0/1"),
        Value::Untyped(vec![1, 2, 3])
    );
    assert_eq!(
        dec(&[0xC1, 0x04, 0x07], "/9999/0/4"),
        Value::Untyped(vec![7])
    );
    assert_eq!(
        dec(&[0xC2, 0x00, 0xFF, 0xFE], "/9999/0/0"),
        Value::Untyped(vec![0xFF, 0xFE])
    );
    assert_eq!(
        dec(&[0xC1, 0x05, 0x2A], "/4242/0/5"),
        Value::Untyped(vec![0x2A])
    );
}

#[test]
fn tlv_encoding_is_conformant() {
    let enc = |path: &str, v: Value| {
        encode(
            fmt_id::TLV,
            &p(path),
            &[WriteItem {
                path: p(path),
                value: v,
            }],
        )
        .unwrap()
    };
    // Smallest signed width of 1, 2, 4 or 8 bytes.
    assert_eq!(enc("/9999/0/1", Value::Integer(127)), [0xC1, 0x01, 0x7F]);
    assert_eq!(enc("/9999/0/1", Value::Integer(-128)), [0xC1, 0x01, 0x80]);
    assert_eq!(
        enc("/9999/0/1", Value::Integer(128)),
        [0xC2, 0x01, 0x00, 0x80]
    );
    assert_eq!(
        enc("/9999/0/1", Value::Integer(-129)),
        [0xC2, 0x01, 0xFF, 0x7F]
    );
    assert_eq!(
        enc("/9999/0/1", Value::Integer(32768)),
        [0xC4, 0x01, 0x00, 0x00, 0x80, 0x00]
    );
    assert_eq!(
        enc("/9999/0/1", Value::Integer(1 << 31)),
        [0xC8, 0x01, 0x08, 0, 0, 0, 0, 0x80, 0, 0, 0]
    );
    assert_eq!(
        enc("/9999/0/6", Value::Time(1_700_000_000)),
        [0xC4, 0x06, 0x65, 0x53, 0xF1, 0x00]
    );
    assert_eq!(enc("/9999/0/2", Value::Unsigned(255)), [0xC1, 0x02, 0xFF]);
    // A Float is always a float: 4 bytes when exact in f32, else 8.
    assert_eq!(
        enc("/9999/0/3", Value::Float(1.0)),
        [0xC4, 0x03, 0x3F, 0x80, 0, 0]
    );
    let mut want = vec![0xC8, 0x03, 0x08];
    want.extend_from_slice(&0.1f64.to_be_bytes());
    assert_eq!(enc("/9999/0/3", Value::Float(0.1)), want);
    assert_eq!(enc("/9999/0/4", Value::Boolean(true)), [0xC1, 0x04, 0x01]);
    assert_eq!(
        enc("/9999/0/7", Value::Objlnk(3, 1)),
        [0xC4, 0x07, 0x00, 0x03, 0x00, 0x01]
    );
    // 16-bit identifier.
    assert_eq!(enc("/9999/0/300", s("a")), [0xE1, 0x01, 0x2C, b'a']);
    // Length types: in the type byte, 8, 16 and 24 bits.
    let long = |n: usize| Value::Opaque(vec![0xAB; n]);
    assert_eq!(enc("/9999/0/5", long(7))[..2], [0xC7, 0x05]);
    assert_eq!(enc("/9999/0/5", long(8))[..3], [0xC8, 0x05, 0x08]);
    assert_eq!(enc("/9999/0/5", long(300))[..4], [0xD0, 0x05, 0x01, 0x2C]);
    assert_eq!(
        enc("/9999/0/5", long(70000))[..5],
        [0xD8, 0x05, 0x01, 0x11, 0x70]
    );
    assert!(matches!(
        encode(
            fmt_id::TLV,
            &p("/9999/0/5"),
            &[WriteItem {
                path: p("/9999/0/5"),
                value: long(1 << 24)
            }]
        ),
        Err(EncodeError::TooLarge(_))
    ));
    // Non-finite floats are refused.
    assert!(encode(
        fmt_id::TLV,
        &p("/9999/0/3"),
        &[WriteItem {
            path: p("/9999/0/3"),
            value: Value::Float(f64::NAN)
        }]
    )
    .is_err());
}

#[test]
fn tlv_encodes_create_and_multiple_resources() {
    let items = vec![
        item("/9999/1/0", s("x")),
        item("/9999/1/9/0", Value::Integer(1)),
        item("/9999/1/9/1", Value::Integer(2)),
        item("/9999/2/1", Value::Integer(3)),
    ];
    let bytes = encode(fmt_id::TLV, &p("/9999"), &witems(&items)).unwrap();
    assert_eq!(
        bytes,
        [
            0x08, 0x01, 0x0B, 0xC1, 0x00, b'x', 0x86, 0x09, 0x41, 0x00, 0x01, 0x41, 0x01,
            0x02, //
            0x03, 0x02, 0xC1, 0x01, 0x03
        ]
    );
    assert_eq!(
        decode(Some(fmt_id::TLV), &bytes, &p("/9999"), &model()).unwrap(),
        items
    );
    // Write to a multiple resource: the multiple resource element.
    let inst = &items[1..3];
    let bytes = encode(fmt_id::TLV, &p("/9999/1/9"), &witems(inst)).unwrap();
    assert_eq!(bytes, [0x86, 0x09, 0x41, 0x00, 0x01, 0x41, 0x01, 0x02]);
    // Items outside the base or above resource level are refused.
    assert!(matches!(
        encode(fmt_id::TLV, &p("/3/0"), &witems(&items)),
        Err(EncodeError::OutsideBase { .. })
    ));
    assert!(encode(fmt_id::TLV, &p("/9999/1/9"), &witems(&items[..1])).is_err());
}

// ---------------------------------------------------------------- text, opaque, link

#[test]
fn text_plain_is_typed_by_the_model() {
    let m = model();
    let dec = |payload: &str, path: &str| {
        decode(Some(fmt_id::TEXT), payload.as_bytes(), &p(path), &m).unwrap()[0]
            .value
            .clone()
    };
    assert_eq!(
        dec("Lightweight M2M Client", "/3/0/1"),
        s("Lightweight M2M Client")
    );
    assert_eq!(dec("100", "/3/0/9"), Value::Integer(100));
    assert_eq!(dec("-7", "/9999/0/1"), Value::Integer(-7));
    assert_eq!(
        dec("18446744073709551615", "/9999/0/2"),
        Value::Unsigned(u64::MAX)
    );
    assert_eq!(dec("1.25", "/9999/0/3"), Value::Float(1.25));
    assert_eq!(dec("1700000000", "/3/0/13"), Value::Time(1_700_000_000));
    for (t, b) in [("1", true), ("0", false), ("true", true), ("false", false)] {
        assert_eq!(dec(t, "/9999/0/4"), Value::Boolean(b));
    }
    assert_eq!(dec("3:0", "/9999/0/7"), Value::Objlnk(3, 0));
    assert_eq!(dec("3:0", "/3/0/22/1"), Value::Objlnk(3, 0));
    assert_eq!(dec("AQI=", "/9999/0/5"), Value::Opaque(vec![1, 2]));
    // Unknown resources and values that do not parse are untyped.
    assert_eq!(dec("abc", "/4242/0/1"), Value::Untyped(b"abc".to_vec()));
    assert_eq!(dec("abc", "/3/0/9"), Value::Untyped(b"abc".to_vec()));
    assert_eq!(dec("inf", "/9999/0/3"), Value::Untyped(b"inf".to_vec()));
    // Without a Content-Format a single resource is text/plain.
    assert_eq!(
        decode(None, b"100", &p("/3/0/9"), &m).unwrap(),
        vec![item("/3/0/9", Value::Integer(100))]
    );
    assert!(matches!(
        decode(Some(fmt_id::TEXT), b"1", &p("/3/0"), &m),
        Err(DecodeError::NotSingleResource(..))
    ));
}

#[test]
fn opaque_and_link_payloads() {
    let m = model();
    assert_eq!(
        decode(Some(fmt_id::OPAQUE), &[0, 255], &p("/5/0/0"), &m).unwrap(),
        vec![item("/5/0/0", Value::Opaque(vec![0, 255]))]
    );
    assert!(decode(Some(fmt_id::OPAQUE), &[0], &p("/5/0"), &m).is_err());
    assert_eq!(
        decode(Some(fmt_id::LINK), b"</3/0>", &p("/3/0"), &m).unwrap(),
        vec![item("/3/0", Value::Corelnk("</3/0>".into()))]
    );
    assert!(matches!(
        decode(Some(4711), b"", &p("/3/0"), &m),
        Err(DecodeError::UnsupportedFormat(4711))
    ));
}

#[test]
fn links_split_and_parse() {
    let payload =
        "</3/0>;pmin=10,</3/0/1>, </3/0/7>;dim=2;title=\"a,b;c\",\n</1/0>;rt=\"oma.lwm2m\";obs";
    assert_eq!(
        split_links(payload),
        vec![
            "</3/0>;pmin=10",
            "</3/0/1>",
            "</3/0/7>;dim=2;title=\"a,b;c\"",
            "</1/0>;rt=\"oma.lwm2m\";obs"
        ]
    );
    let links = parse_links(payload).unwrap();
    assert_eq!(links.len(), 4);
    assert_eq!(links[0].target, "/3/0");
    assert_eq!(links[0].attrs, vec![("pmin", Some("10"))]);
    assert_eq!(
        links[2].attrs,
        vec![("dim", Some("2")), ("title", Some("a,b;c"))]
    );
    assert_eq!(links[3].attr("rt"), Some(Some("oma.lwm2m")));
    assert_eq!(links[3].attr("obs"), Some(None));
    assert_eq!(links[3].attr("ct"), None);
    assert_eq!(split_links(""), Vec::<&str>::new());
    assert!(parse_links("").unwrap().is_empty());
    assert!(parse_links("/3/0").is_err());
    assert!(parse_links("</3/0").is_err());
    assert!(parse_links("</3/0>x").is_err());
    // A comma inside the URI does not split.
    assert_eq!(split_links("</a,b>;x=1,</c>"), vec!["</a,b>;x=1", "</c>"]);
}

// ---------------------------------------------------------------- JSON formats

#[test]
fn oma_json_decodes() {
    let m = model();
    let payload = br#"{"bn":"/3/0/","e":[
        {"n":"0","sv":"Open Mobile Alliance"},{"n":"9","v":100},{"n":"13","v":1367491215},
        {"n":"7/0","v":3800},{"n":"22/0","ov":"3:0"}]}"#;
    let got = decode(Some(fmt_id::OMA_JSON), payload, &p("/3/0"), &m).unwrap();
    assert_eq!(
        got,
        vec![
            item("/3/0/0", s("Open Mobile Alliance")),
            item("/3/0/9", Value::Integer(100)),
            item("/3/0/13", Value::Time(1367491215)),
            item("/3/0/7/0", Value::Integer(3800)),
            item("/3/0/22/0", Value::Objlnk(3, 0)),
        ]
    );
    // Without bn names are relative to the request path; old number 1543; bv, opaque in sv.
    let payload = br#"{"e":[{"n":"4","bv":true},{"n":"5","sv":"AQI="},{"n":"3","v":2}]}"#;
    let got = decode(Some(fmt_id::OLD_JSON), payload, &p("/9999/1"), &m).unwrap();
    assert_eq!(
        got,
        vec![
            item("/9999/1/4", Value::Boolean(true)),
            item("/9999/1/5", Value::Opaque(vec![1, 2])),
            item("/9999/1/3", Value::Float(2.0)),
        ]
    );
    assert!(decode(Some(fmt_id::OMA_JSON), b"[]", &p("/3/0"), &m).is_err());
    assert!(decode(
        Some(fmt_id::OMA_JSON),
        b"{\"e\":[{\"n\":\"x\",\"v\":1}]}",
        &p("/3/0"),
        &m
    )
    .is_err());
    assert!(decode(Some(fmt_id::OMA_JSON), b"{\"e\":", &p("/3/0"), &m).is_err());
}

#[test]
fn senml_json_decodes() {
    let m = model();
    let payload = br#"[{"bn":"/3/0/","bt":1700000000,"n":"0","vs":"Open Mobile Alliance"},
        {"n":"9","v":100,"t":-5},{"n":"7/1","v":5000},{"n":"13","v":1367491215},
        {"bn":"/9999/1/","n":"3","v":1.5},{"n":"4","vb":false},{"n":"5","vd":"AQL_"},
        {"n":"7","vlo":"3:1"},{"n":"2","v":18446744073709551615},
        {"bn":"/4242/0/1","vs":"free"},{"bn":"/4242/0/","n":"2","v":-3}]"#;
    let got = decode(Some(fmt_id::SENML_JSON), payload, &p("/"), &m).unwrap();
    assert_eq!(
        got,
        vec![
            item("/3/0/0", s("Open Mobile Alliance")),
            item("/3/0/9", Value::Integer(100)),
            item("/3/0/7/1", Value::Integer(5000)),
            item("/3/0/13", Value::Time(1367491215)),
            item("/9999/1/3", Value::Float(1.5)),
            item("/9999/1/4", Value::Boolean(false)),
            item("/9999/1/5", Value::Opaque(vec![1, 2, 0xFF])),
            item("/9999/1/7", Value::Objlnk(3, 1)),
            item("/9999/1/2", Value::Unsigned(u64::MAX)),
            // Unknown objects keep the type the payload carries.
            item("/4242/0/1", s("free")),
            item("/4242/0/2", Value::Integer(-3)),
        ]
    );
    // bv is added to v.
    let got = decode(
        Some(fmt_id::SENML_JSON),
        br#"[{"bn":"/3/0/","bv":10,"n":"9","v":5}]"#,
        &p("/3/0"),
        &m,
    )
    .unwrap();
    assert_eq!(got, vec![item("/3/0/9", Value::Integer(15))]);
    for bad in [
        &b"{}"[..],
        b"[1]",
        b"[{\"n\":\"/a\",\"v\":1}]",
        b"[{\"n\":\"/3/0/1\",\"vlo\":\"x\"}]",
        b"[{\"n\":\"/3/0/1\",\"vd\":\"***\"}]",
        b"[{\"n\":5,\"v\":1}]",
        b"[",
        b"",
    ] {
        assert!(
            decode(Some(fmt_id::SENML_JSON), bad, &p("/3/0"), &m).is_err(),
            "{:?}",
            std::str::from_utf8(bad)
        );
    }
}

// ---------------------------------------------------------------- CBOR formats

#[test]
fn senml_cbor_decodes_literal_vector() {
    let m = model();
    // [{-2: "/3/0/", 0: "0", 3: "OMA"}, {0: "9", 2: 100}, {0: "13", 2: 1367491215},
    //  {0: "7/0", 2: 3800}, {-2: "/9999/0/", 0: "3", 2: 1.5 (half)}, {0: "4", 4: true},
    //  {0: "5", 8: h'0102'}, {0: "7", "vlo": "3:1"}]
    let mut v = vec![0x88];
    v.extend_from_slice(&[0xA3, 0x21, 0x65]);
    v.extend_from_slice(b"/3/0/");
    v.extend_from_slice(&[0x00, 0x61, b'0', 0x03, 0x63, b'O', b'M', b'A']);
    v.extend_from_slice(&[0xA2, 0x00, 0x61, b'9', 0x02, 0x18, 0x64]);
    v.extend_from_slice(&[
        0xA2, 0x00, 0x62, b'1', b'3', 0x02, 0x1A, 0x51, 0x82, 0x42, 0x8F,
    ]);
    v.extend_from_slice(&[0xA2, 0x00, 0x63, b'7', b'/', b'0', 0x02, 0x19, 0x0E, 0xD8]);
    v.extend_from_slice(&[0xA3, 0x21, 0x68]);
    v.extend_from_slice(b"/9999/0/");
    v.extend_from_slice(&[0x00, 0x61, b'3', 0x02, 0xF9, 0x3E, 0x00]);
    v.extend_from_slice(&[0xA2, 0x00, 0x61, b'4', 0x04, 0xF5]);
    v.extend_from_slice(&[0xA2, 0x00, 0x61, b'5', 0x08, 0x42, 0x01, 0x02]);
    v.extend_from_slice(&[
        0xA2, 0x00, 0x61, b'7', 0x63, b'v', b'l', b'o', 0x63, b'3', b':', b'1',
    ]);
    let got = decode(Some(fmt_id::SENML_CBOR), &v, &p("/3/0"), &m).unwrap();
    assert_eq!(
        got,
        vec![
            item("/3/0/0", s("OMA")),
            item("/3/0/9", Value::Integer(100)),
            item("/3/0/13", Value::Time(1367491215)),
            item("/3/0/7/0", Value::Integer(3800)),
            item("/9999/0/3", Value::Float(1.5)),
            item("/9999/0/4", Value::Boolean(true)),
            item("/9999/0/5", Value::Opaque(vec![1, 2])),
            item("/9999/0/7", Value::Objlnk(3, 1)),
        ]
    );
}

#[test]
fn lwm2m_cbor_decodes_literal_vectors() {
    let m = model();
    // {3: {0: {0: "OMA", 7: {0: 3800, 1: 5000}, 9: 100, 13: 1(1367491215)}}}
    let v = [
        0xA1, 0x03, 0xA1, 0x00, 0xA4, 0x00, 0x63, b'O', b'M', b'A', 0x07, 0xA2, 0x00, 0x19, 0x0E,
        0xD8, 0x01, 0x19, 0x13, 0x88, 0x09, 0x18, 0x64, 0x0D, 0xC1, 0x1A, 0x51, 0x82, 0x42, 0x8F,
    ];
    let want = vec![
        item("/3/0/0", s("OMA")),
        item("/3/0/7/0", Value::Integer(3800)),
        item("/3/0/7/1", Value::Integer(5000)),
        item("/3/0/9", Value::Integer(100)),
        item("/3/0/13", Value::Time(1367491215)),
    ];
    assert_eq!(
        decode(Some(fmt_id::LWM2M_CBOR), &v, &p("/3/0"), &m).unwrap(),
        want
    );
    // Same with an array key [3, 0], indefinite-length maps, a null leaf, an objlnk as text.
    let v = [
        0xBF, 0x82, 0x03, 0x00, 0xBF, 0x00, 0x63, b'O', b'M', b'A', 0x01, 0xF6, 0x82, 0x16, 0x01,
        0x63, b'3', b':', b'2', 0xFF, 0xFF,
    ];
    assert_eq!(
        decode(Some(fmt_id::LWM2M_CBOR), &v, &p("/3/0"), &m).unwrap(),
        vec![
            item("/3/0/0", s("OMA")),
            item("/3/0/22/1", Value::Objlnk(3, 2))
        ]
    );
    // A value above resource level; a negative path component; trailing bytes.
    assert!(decode(
        Some(fmt_id::LWM2M_CBOR),
        &[0xA1, 0x03, 0xA1, 0x00, 0x01],
        &p("/3"),
        &m
    )
    .is_err());
    assert!(decode(Some(fmt_id::LWM2M_CBOR), &[0xA1, 0x20, 0x01], &p("/3"), &m).is_err());
    assert!(decode(Some(fmt_id::LWM2M_CBOR), &[0xA0, 0x00], &p("/3"), &m).is_err());
    // Plain CBOR (60) for one resource.
    assert_eq!(
        decode(Some(fmt_id::CBOR), &[0x18, 0x64], &p("/3/0/9"), &m).unwrap(),
        vec![item("/3/0/9", Value::Integer(100))]
    );
}

#[test]
fn cbor_reader_details() {
    use super::cbor::{f16_to_f64, parse, Item};
    assert_eq!(f16_to_f64(0x3C00), 1.0);
    assert_eq!(f16_to_f64(0xC000), -2.0);
    assert_eq!(f16_to_f64(0x0001), 5.960464477539063e-8);
    assert!(f16_to_f64(0x7C00).is_infinite());
    assert!(f16_to_f64(0x7E00).is_nan());
    assert_eq!(
        parse(&[0x3B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]).unwrap(),
        Item::Nint(u64::MAX)
    );
    // Indefinite text in chunks.
    match parse(&[0x7F, 0x62, b'a', b'b', 0x61, b'c', 0xFF]).unwrap() {
        Item::Text(t) => assert_eq!(t, "abc"),
        other => panic!("{other:?}"),
    }
    // Stray break, reserved info, chunk of the wrong type, bad UTF-8.
    for bad in [
        &[0xFF][..],
        &[0x1C],
        &[0x7F, 0x41, 0x00, 0xFF],
        &[0x62, 0xC3, 0x28],
        &[0x5F, 0x00],
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
    // Lengths beyond the input are refused before allocating.
    assert!(matches!(
        parse(&[0x9B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
        Err(DecodeError::Truncated(_))
    ));
    assert!(matches!(
        parse(&[0x5A, 0xFF, 0xFF, 0xFF, 0xFF, 0x00]),
        Err(DecodeError::Truncated(_))
    ));
    // Nesting depth is bounded.
    let deep = vec![0x81; 10_000];
    assert!(matches!(parse(&deep), Err(DecodeError::TooDeep(_))));
    let deep = vec![0xC6; 10_000];
    assert!(matches!(parse(&deep), Err(DecodeError::TooDeep(_))));
}

// ---------------------------------------------------------------- round trips

/// One item of every type (absolute paths under /9999/1), plus resource instances.
fn every_type() -> Vec<ContentItem> {
    vec![
        item("/9999/1/0", s("h\u{e9}llo \"w\"\n")),
        item("/9999/1/1", Value::Integer(-1234567890123)),
        item("/9999/1/2", Value::Unsigned(u64::MAX)),
        item("/9999/1/3", Value::Float(-0.1)),
        item("/9999/1/4", Value::Boolean(true)),
        item("/9999/1/5", Value::Opaque(vec![0, 1, 2, 0xFE, 0xFF])),
        item("/9999/1/6", Value::Time(1_700_000_000)),
        item("/9999/1/7", Value::Objlnk(65535, 0)),
        item("/9999/1/8", Value::Corelnk("</3/0>;ver=1.1".into())),
        item("/9999/1/9/0", Value::Integer(1)),
        item("/9999/1/9/7", Value::Integer(-40000)),
        item("/9999/1/300", s("")),
    ]
}

#[test]
fn round_trip_every_format_and_type() {
    let m = model();
    let items = every_type();
    for fmt in [
        fmt_id::TLV,
        fmt_id::SENML_JSON,
        fmt_id::SENML_CBOR,
        fmt_id::LWM2M_CBOR,
        fmt_id::OMA_JSON,
    ] {
        // Write to the instance, and create on the object (not for TLV, which wraps instances).
        for base in ["/9999/1", "/9999"] {
            let bytes = encode(fmt, &p(base), &witems(&items)).unwrap();
            let mut got = decode(Some(fmt), &bytes, &p(base), &m)
                .unwrap_or_else(|e| panic!("format {fmt} base {base}: {e}"));
            got.sort_by_key(|i| i.path);
            assert_eq!(got, items, "format {fmt} base {base}");
        }
        // Floats of every kind.
        for f in [0.0, 1.0, 1.5, 3.4e38, 1e300, -2.5e-300, 16777217.0] {
            let one = vec![item("/9999/1/3", Value::Float(f))];
            let bytes = encode(fmt, &p("/9999/1/3"), &witems(&one)).unwrap();
            assert_eq!(
                decode(Some(fmt), &bytes, &p("/9999/1/3"), &m).unwrap(),
                one,
                "{fmt} {f}"
            );
        }
        // Integers at every width boundary.
        for i in [
            0,
            127,
            128,
            -128,
            -129,
            32767,
            32768,
            -32769,
            i32::MAX as i64 + 1,
            i64::MIN,
            i64::MAX,
        ] {
            let one = vec![item("/9999/1/1", Value::Integer(i))];
            let bytes = encode(fmt, &p("/9999/1"), &witems(&one)).unwrap();
            assert_eq!(
                decode(Some(fmt), &bytes, &p("/9999/1"), &m).unwrap(),
                one,
                "{fmt} {i}"
            );
        }
    }
    // Single-resource formats, every type.
    for it in &items {
        if it.path.len() != 3 {
            continue;
        }
        for fmt in [
            fmt_id::TEXT,
            fmt_id::CBOR,
            fmt_id::TLV,
            fmt_id::SENML_JSON,
            fmt_id::SENML_CBOR,
            fmt_id::LWM2M_CBOR,
        ] {
            let bytes = encode(fmt, &it.path, &witems(std::slice::from_ref(it))).unwrap();
            let got = decode(Some(fmt), &bytes, &it.path, &m).unwrap();
            assert_eq!(got, vec![it.clone()], "format {fmt}");
        }
    }
    let op = item("/9999/1/5", Value::Opaque(vec![9, 8, 7]));
    let bytes = encode(fmt_id::OPAQUE, &op.path, &witems(std::slice::from_ref(&op))).unwrap();
    assert_eq!(bytes, [9, 8, 7]);
    assert_eq!(
        decode(Some(fmt_id::OPAQUE), &bytes, &op.path, &m).unwrap(),
        vec![op]
    );
    assert!(matches!(
        encode(fmt_id::TEXT, &p("/9999/1"), &witems(&items)),
        Err(EncodeError::NotSingleResource(_))
    ));
    assert!(matches!(
        encode(fmt_id::LINK, &p("/9999/1"), &[]),
        Err(EncodeError::UnsupportedFormat(40))
    ));
}

#[test]
fn encoded_forms_look_right() {
    let items = vec![
        item("/3/0/1", s("x")),
        item("/3/0/7/0", Value::Integer(5)),
        item("/3/0/22/0", Value::Objlnk(3, 1)),
    ];
    let senml = encode(fmt_id::SENML_JSON, &p("/3/0"), &witems(&items)).unwrap();
    assert_eq!(
        std::str::from_utf8(&senml).unwrap(),
        r#"[{"bn":"/3/0/","n":"1","vs":"x"},{"n":"7/0","v":5},{"n":"22/0","vlo":"3:1"}]"#
    );
    let oma = encode(fmt_id::OMA_JSON, &p("/3/0"), &witems(&items)).unwrap();
    assert_eq!(
        std::str::from_utf8(&oma).unwrap(),
        r#"{"bn":"/3/0/","e":[{"n":"1","sv":"x"},{"n":"7/0","v":5},{"n":"22/0","ov":"3:1"}]}"#
    );
    // {[3, 0]: {1: "x", 7: {0: 5}, 22: {0: "3:1"}}}
    let cbor = encode(fmt_id::LWM2M_CBOR, &p("/3/0"), &witems(&items)).unwrap();
    assert_eq!(
        cbor,
        [
            0xA1, 0x82, 0x03, 0x00, 0xA3, 0x01, 0x61, b'x', 0x07, 0xA1, 0x00, 0x05, 0x16, 0xA1,
            0x00, 0x63, b'3', b':', b'1'
        ]
    );
    // bn + n (RFC 8428 concatenation) is each written path: a value at the request path names it
    // whole in bn (the LwM2M 1.1 single-resource form), values below it share "<path>/".
    let senml = |base: &str, items: &[ContentItem]| {
        let out = encode(fmt_id::SENML_JSON, &p(base), &witems(items)).unwrap();
        String::from_utf8(out).unwrap()
    };
    assert_eq!(
        senml("/3/0/14", &[item("/3/0/14", s("+02"))]),
        r#"[{"bn":"/3/0/14","vs":"+02"}]"#
    );
    assert_eq!(
        senml("/3/0/7/1", &[item("/3/0/7/1", Value::Integer(3800))]),
        r#"[{"bn":"/3/0/7/1","v":3800}]"#
    );
    let instances = [
        item("/3/0/7/0", Value::Integer(5000)),
        item("/3/0/7/1", Value::Integer(3800)),
    ];
    assert_eq!(
        senml("/3/0/7", &instances),
        r#"[{"bn":"/3/0/7/","n":"0","v":5000},{"n":"1","v":3800}]"#
    );
    // The request path and a path below it in one pack: bn changes where the names need it.
    let mixed = [
        item("/3/0/7", Value::Integer(1)),
        item("/3/0/7/0", Value::Integer(2)),
        item("/3/0/7", Value::Integer(3)),
    ];
    assert_eq!(
        senml("/3/0/7", &mixed),
        r#"[{"bn":"/3/0/7","v":1},{"bn":"/3/0/7/","n":"0","v":2},{"bn":"/3/0/7","v":3}]"#
    );
    let m = model();
    for fmt in [fmt_id::SENML_JSON, fmt_id::SENML_CBOR] {
        let bytes = encode(fmt, &p("/3/0/7"), &witems(&mixed)).unwrap();
        assert_eq!(decode(Some(fmt), &bytes, &p("/3/0/7"), &m).unwrap(), mixed);
    }
    // OMA LwM2M JSON names the same way: bn + n is the written path.
    let one = witems(&[item("/3/0/14", s("+02"))]);
    let oma = encode(fmt_id::OMA_JSON, &p("/3/0/14"), &one).unwrap();
    assert_eq!(
        String::from_utf8(oma.clone()).unwrap(),
        r#"{"bn":"/3/0/14","e":[{"n":"","sv":"+02"}]}"#
    );
    assert_eq!(
        decode(Some(fmt_id::OMA_JSON), &oma, &p("/3/0/14"), &m).unwrap(),
        [item("/3/0/14", s("+02"))]
    );
    // [{-2: "/3/0/14", 3: "+02"}]
    let cbor = encode(
        fmt_id::SENML_CBOR,
        &p("/3/0/14"),
        &witems(&[item("/3/0/14", s("+02"))]),
    )
    .unwrap();
    assert_eq!(
        cbor,
        [
            0x81, 0xA2, 0x21, 0x67, b'/', b'3', b'/', b'0', b'/', b'1', b'4', 0x03, 0x63, b'+',
            b'0', b'2'
        ]
    );
    let text = encode(
        fmt_id::TEXT,
        &p("/9999/0/4"),
        &[WriteItem {
            path: p("/9999/0/4"),
            value: Value::Boolean(true),
        }],
    )
    .unwrap();
    assert_eq!(text, b"1");
}

// ---------------------------------------------------------------- MQTT JSON

#[test]
fn content_json_rendering() {
    let items = vec![
        item("/3/0/1", s("Lightweight M2M Client")),
        item("/3/0/9", Value::Integer(-5)),
        item("/9999/0/2", Value::Unsigned(u64::MAX)),
        item("/9999/0/3", Value::Float(1.5)),
        item("/9999/0/3", Value::Float(100.0)),
        item("/9999/0/3", Value::Float(f64::NAN)),
        item("/9999/0/3", Value::Float(f64::NEG_INFINITY)),
        item("/9999/0/4", Value::Boolean(false)),
        item("/9999/0/5", Value::Opaque(vec![1, 2, 3, 4])),
        item("/3/0/13", Value::Time(1_700_000_000)),
        item("/3/0/22/1", Value::Objlnk(3, 0)),
        item("/4242/0/0", Value::Untyped(vec![0xFF])),
    ];
    let mut out = b"prefix:".to_vec();
    write_content_json(&items, &mut out);
    let want = concat!(
        "prefix:[",
        r#"{"path":"/3/0/1","value":"Lightweight M2M Client"},"#,
        r#"{"path":"/3/0/9","value":-5},"#,
        r#"{"path":"/9999/0/2","value":18446744073709551615},"#,
        r#"{"path":"/9999/0/3","value":1.5},"#,
        r#"{"path":"/9999/0/3","value":100.0},"#,
        r#"{"path":"/9999/0/3","value":null},"#,
        r#"{"path":"/9999/0/3","value":null},"#,
        r#"{"path":"/9999/0/4","value":false},"#,
        r#"{"path":"/9999/0/5","value":"AQIDBA=="},"#,
        r#"{"path":"/3/0/13","value":1700000000},"#,
        r#"{"path":"/3/0/22/1","value":"3:0"},"#,
        r#"{"path":"/4242/0/0","value":"/w==","type":"untyped"}"#,
        "]"
    );
    assert_eq!(std::str::from_utf8(&out).unwrap(), want);
    // The output is valid JSON.
    let mut copy = out[7..].to_vec();
    assert!(simd_json::to_borrowed_value(&mut copy).is_ok());
    let mut out = Vec::new();
    write_content_json(&[], &mut out);
    assert_eq!(out, b"[]");
}

#[test]
fn json_string_escaping() {
    let mut out = Vec::new();
    write_json_string(
        "a\"b\\c\nd\re\tf\u{8}\u{c}\u{1}\u{1f}\u{7f}\u{e9}\u{2028}",
        &mut out,
    );
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        "\"a\\\"b\\\\c\\nd\\re\\tf\\b\\f\\u0001\\u001f\\u007f\u{e9}\u{2028}\""
    );
    let mut copy = out.clone();
    let v = simd_json::to_borrowed_value(&mut copy).unwrap();
    use simd_json::prelude::*;
    assert_eq!(
        v.as_str(),
        Some("a\"b\\c\nd\re\tf\u{8}\u{c}\u{1}\u{1f}\u{7f}\u{e9}\u{2028}")
    );
}

// ---------------------------------------------------------------- write values

fn pwv(type_name: Option<&str>, json: &str, hex: bool, path: &str) -> Result<Value, String> {
    let mut b = json.as_bytes().to_vec();
    let v = simd_json::to_borrowed_value(&mut b).unwrap();
    parse_write_value(type_name, &v, hex, &p(path), &model())
}

#[test]
fn write_values_are_parsed_liberally() {
    let ok = |t: Option<&str>, j: &str, path: &str| pwv(t, j, false, path).unwrap();
    assert_eq!(ok(Some("Integer"), "42", "/9999/0/1"), Value::Integer(42));
    assert_eq!(
        ok(Some("integer"), "\"42\"", "/9999/0/1"),
        Value::Integer(42)
    );
    assert_eq!(
        ok(Some("INTEGER"), "\" -7 \"", "/9999/0/1"),
        Value::Integer(-7)
    );
    assert_eq!(ok(Some("Integer"), "5.0", "/9999/0/1"), Value::Integer(5));
    assert_eq!(ok(Some("Float"), "\"5.5\"", "/9999/0/3"), Value::Float(5.5));
    assert_eq!(ok(Some("Float"), "3", "/9999/0/3"), Value::Float(3.0));
    for (j, b) in [
        ("true", true),
        ("false", false),
        ("\"true\"", true),
        ("\"False\"", false),
        ("1", true),
        ("0", false),
        ("\"1\"", true),
    ] {
        assert_eq!(
            ok(Some("Boolean"), j, "/9999/0/4"),
            Value::Boolean(b),
            "{j}"
        );
    }
    assert_eq!(
        ok(Some("Time"), "1700000000", "/3/0/13"),
        Value::Time(1_700_000_000)
    );
    assert_eq!(
        ok(Some("Time"), "\"1700000000\"", "/3/0/13"),
        Value::Time(1_700_000_000)
    );
    assert_eq!(ok(Some("String"), "\"a\"", "/9999/0/0"), s("a"));
    assert_eq!(ok(Some("String"), "12", "/9999/0/0"), s("12"));
    assert_eq!(
        ok(Some("Opaque"), "\"AQID\"", "/9999/0/5"),
        Value::Opaque(vec![1, 2, 3])
    );
    assert_eq!(
        ok(Some("Opaque"), "\"_-8\"", "/9999/0/5"),
        Value::Opaque(vec![0xFF, 0xEF])
    );
    assert_eq!(
        ok(Some("Objlnk"), "\"3:0\"", "/9999/0/7"),
        Value::Objlnk(3, 0)
    );
    assert_eq!(
        ok(
            Some("Unsigned Integer"),
            "\"18446744073709551615\"",
            "/9999/0/2"
        ),
        Value::Unsigned(u64::MAX)
    );
    // Without a type name: the model decides, else the JSON type.
    assert_eq!(ok(None, "\"100\"", "/3/0/9"), Value::Integer(100));
    assert_eq!(ok(None, "\"0\"", "/9999/0/4"), Value::Boolean(false));
    assert_eq!(ok(None, "2", "/9999/0/3"), Value::Float(2.0));
    assert_eq!(ok(None, "2", "/4242/0/0"), Value::Integer(2));
    assert_eq!(ok(None, "2.5", "/4242/0/0"), Value::Float(2.5));
    assert_eq!(ok(None, "true", "/4242/0/0"), Value::Boolean(true));
    assert_eq!(ok(None, "\"x\"", "/4242/0/0"), s("x"));
    // Hex encoding: raw bytes.
    assert_eq!(
        pwv(Some("Opaque"), "\"DEADbeef\"", true, "/9999/0/5").unwrap(),
        Value::Opaque(vec![0xDE, 0xAD, 0xBE, 0xEF])
    );
    assert_eq!(
        pwv(None, "\"0102\"", true, "/9999/0/5").unwrap(),
        Value::Opaque(vec![1, 2])
    );
    assert_eq!(
        pwv(None, "\"0102\"", true, "/4242/0/5").unwrap(),
        Value::Opaque(vec![1, 2])
    );
    assert_eq!(
        pwv(Some("Integer"), "\"0064\"", true, "/9999/0/1").unwrap(),
        Value::Integer(100)
    );
    assert_eq!(
        pwv(Some("String"), "\"6869\"", true, "/9999/0/0").unwrap(),
        s("hi")
    );
    assert_eq!(
        pwv(Some("Integer"), "100", true, "/9999/0/1").unwrap(),
        Value::Integer(100)
    );
}

#[test]
fn write_value_errors_say_what_is_wrong() {
    let err = |t: Option<&str>, j: &str, path: &str| pwv(t, j, false, path).unwrap_err();
    assert_eq!(
        err(Some("Integer"), "\"abc\"", "/9999/0/1"),
        "value \"abc\" is not an Integer"
    );
    assert_eq!(
        err(Some("Integer"), "1.5", "/9999/0/1"),
        "value 1.5 is not an Integer"
    );
    assert_eq!(
        err(Some("Float"), "\"x\"", "/9999/0/3"),
        "value \"x\" is not a Float"
    );
    assert_eq!(
        err(Some("Float"), "\"NaN\"", "/9999/0/3"),
        "value \"NaN\" is not a Float"
    );
    assert_eq!(
        err(Some("Boolean"), "2", "/9999/0/4"),
        "value 2 is not a Boolean"
    );
    assert_eq!(
        err(Some("Boolean"), "\"yes\"", "/9999/0/4"),
        "value \"yes\" is not a Boolean"
    );
    assert_eq!(
        err(Some("Objlnk"), "\"3\"", "/9999/0/7"),
        "value \"3\" is not an Objlnk (\"O:I\")"
    );
    assert_eq!(
        err(Some("Opaque"), "\"***\"", "/9999/0/5"),
        "value \"***\" is not an Opaque (base64)"
    );
    assert_eq!(
        err(Some("Time"), "null", "/3/0/13"),
        "value null is not a Time"
    );
    assert_eq!(
        err(Some("Unsigned Integer"), "-1", "/9999/0/2"),
        "value -1 is not an Unsigned Integer"
    );
    assert_eq!(
        err(Some("Decimal"), "1", "/9999/0/1"),
        "unknown value type \"Decimal\""
    );
    assert!(err(None, "1", "/3/0/4").contains("executable"));
    assert!(err(None, "[1]", "/4242/0/0").contains("no type"));
    assert_eq!(
        pwv(Some("Opaque"), "\"abc\"", true, "/9999/0/5").unwrap_err(),
        "value \"abc\" is not a hex string"
    );
    assert_eq!(
        pwv(Some("Integer"), "\"010203\"", true, "/9999/0/1").unwrap_err(),
        "value \"010203\" is not an Integer"
    );
}

// ---------------------------------------------------------------- hostile input

const ALL_FORMATS: [Option<u16>; 12] = [
    None,
    Some(fmt_id::TEXT),
    Some(fmt_id::LINK),
    Some(fmt_id::OPAQUE),
    Some(fmt_id::CBOR),
    Some(fmt_id::SENML_JSON),
    Some(fmt_id::SENML_CBOR),
    Some(fmt_id::TLV),
    Some(fmt_id::OMA_JSON),
    Some(fmt_id::LWM2M_CBOR),
    Some(fmt_id::OLD_TLV),
    Some(fmt_id::OLD_JSON),
];

const PATHS: [&str; 6] = ["/", "/3", "/3/0", "/3/0/7", "/3/0/7/0", "/9999/1"];

fn decode_everywhere(bytes: &[u8], m: &BTreeMap<u16, ObjectDef>) {
    for fmt in ALL_FORMATS {
        for path in PATHS {
            let _ = decode(fmt, bytes, &p(path), m);
        }
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        let _ = split_links(s);
        let _ = parse_links(s);
    }
}

fn valid_vectors() -> Vec<(u16, Vec<u8>)> {
    let items = every_type();
    let mut v = vec![(fmt_id::TLV, SPEC_DEVICE_TLV.to_vec())];
    for fmt in [
        fmt_id::TLV,
        fmt_id::SENML_JSON,
        fmt_id::SENML_CBOR,
        fmt_id::LWM2M_CBOR,
        fmt_id::OMA_JSON,
    ] {
        for base in ["/9999", "/9999/1"] {
            v.push((fmt, encode(fmt, &p(base), &witems(&items)).unwrap()));
        }
    }
    v
}

#[test]
fn every_truncation_is_handled() {
    let m = model();
    for (fmt, bytes) in valid_vectors() {
        for end in 0..bytes.len() {
            for path in ["/9999", "/9999/1", "/3/0"] {
                // Err or Ok, never a panic; a TLV/CBOR prefix never decodes to the full content.
                let r = decode(Some(fmt), &bytes[..end], &p(path), &m);
                if let Ok(items) = r {
                    let full = decode(Some(fmt), &bytes, &p(path), &m);
                    if fmt == fmt_id::LWM2M_CBOR || fmt == fmt_id::SENML_CBOR {
                        assert!(full.map(|f| f != items).unwrap_or(true));
                    }
                }
            }
        }
        decode_everywhere(&bytes, &m);
    }
}

/// xorshift64*: a small deterministic generator for fuzz-style tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_bytes_never_panic() {
    let m = model();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3000 {
        let len = rng.below(64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        decode_everywhere(&bytes, &m);
    }
    // Mutations of valid vectors reach deeper into the decoders.
    let vectors = valid_vectors();
    for _ in 0..3000 {
        let (fmt, orig) = &vectors[rng.below(vectors.len() as u64) as usize];
        let mut bytes = orig.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(bytes.len() as u64) as usize;
            match rng.below(3) {
                0 => bytes[i] = rng.next() as u8,
                1 => bytes[i] ^= 1 << rng.below(8),
                _ => {
                    bytes.insert(i, rng.next() as u8);
                }
            }
        }
        for path in PATHS {
            let _ = decode(Some(*fmt), &bytes, &p(path), &m);
        }
    }
}

#[test]
fn oversized_lengths_and_deep_nesting_are_refused() {
    let m = model();
    // TLV with a 24-bit length far beyond the payload.
    assert!(matches!(
        decode(
            Some(fmt_id::TLV),
            &[0xD8, 0x00, 0xFF, 0xFF, 0xFF, 0x00],
            &p("/3/0"),
            &m
        ),
        Err(DecodeError::Truncated(_))
    ));
    // Nested TLV whose inner length overruns its container.
    assert!(decode(
        Some(fmt_id::TLV),
        &[0x08, 0x00, 0x03, 0xC8, 0x00, 0x09],
        &p("/3"),
        &m
    )
    .is_err());
    // CBOR map claiming 2^32 entries.
    assert!(decode(
        Some(fmt_id::LWM2M_CBOR),
        &[0xBA, 0xFF, 0xFF, 0xFF, 0xFF],
        &p("/3"),
        &m
    )
    .is_err());
    // Deeply nested JSON and CBOR.
    let mut deep = vec![b'['; 100_000];
    deep.extend(vec![b']'; 100_000]);
    assert!(decode(Some(fmt_id::SENML_JSON), &deep, &p("/3/0"), &m).is_err());
    let mut deep = b"{\"e\":".to_vec();
    deep.extend(vec![b'['; 100_000]);
    assert!(decode(Some(fmt_id::OMA_JSON), &deep, &p("/3/0"), &m).is_err());
    let deep = [0xA1, 0x03].repeat(10_000);
    assert!(decode(Some(fmt_id::LWM2M_CBOR), &deep, &p("/3/0"), &m).is_err());
    // Path keys nested past four levels.
    let five = [
        0xA1, 0x01, 0xA1, 0x01, 0xA1, 0x01, 0xA1, 0x01, 0xA1, 0x01, 0x01,
    ];
    assert!(decode(Some(fmt_id::LWM2M_CBOR), &five, &p("/1"), &m).is_err());
    // Very long names never end up verbatim in errors.
    let long = format!("[{{\"n\":\"{}\",\"v\":1}}]", "x".repeat(10_000));
    let e = decode(Some(fmt_id::SENML_JSON), long.as_bytes(), &p("/3/0"), &m).unwrap_err();
    assert!(e.to_string().len() < 200);
}

// ---- composite operations (LwM2M 1.1) ----

#[test]
fn composite_path_lists_in_senml_json_and_cbor() {
    let paths = [p("/3/0/9"), p("/1/0/1"), p("/3303")];
    let json = encode_paths(fmt_id::SENML_JSON, &paths).unwrap();
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        r#"[{"n":"/3/0/9"},{"n":"/1/0/1"},{"n":"/3303"}]"#
    );
    let cbor = encode_paths(fmt_id::SENML_CBOR, &paths[..1]).unwrap();
    // [{0: "/3/0/9"}]
    assert_eq!(cbor, b"\x81\xa1\x00\x66/3/0/9");
    assert_eq!(
        encode_paths(fmt_id::LWM2M_CBOR, &paths),
        Err(EncodeError::UnsupportedFormat(fmt_id::LWM2M_CBOR))
    );
    // A list of names without values decodes to nothing: no value at any path.
    let m = model();
    assert_eq!(
        decode_composite(None, fmt_id::SENML_JSON, &json, &m),
        Ok(vec![])
    );
}

#[test]
fn composite_writes_name_every_value_absolutely() {
    let items = vec![
        item("/3/0/14", s("+02")),
        item("/1/0/1", Value::Integer(300)),
        item("/9999/0/5", Value::Opaque(vec![0xfb, 0xff])),
        item("/3/0/7/1", Value::Integer(3800)),
    ];
    let json = encode_composite(fmt_id::SENML_JSON, &witems(&items)).unwrap();
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        r#"[{"n":"/3/0/14","vs":"+02"},{"n":"/1/0/1","v":300},{"n":"/9999/0/5","vd":"-_8"},{"n":"/3/0/7/1","v":3800}]"#,
        "opaque as base64url without padding (RFC 8428)"
    );
    let m = model();
    for f in [fmt_id::SENML_JSON, fmt_id::SENML_CBOR, fmt_id::LWM2M_CBOR] {
        let body = encode_composite(f, &witems(&items)).unwrap();
        let back = decode_composite(Some(f), f, &body, &m).unwrap();
        assert_eq!(
            sorted_items(back),
            sorted_items(items.clone()),
            "format {f}"
        );
    }
    let cbor = encode_composite(fmt_id::LWM2M_CBOR, &witems(&items[..1])).unwrap();
    // {3: {0: {14: "+02"}}}
    assert_eq!(cbor, b"\xa1\x03\xa1\x00\xa1\x0e\x63+02");
    // Values only at resources or resource instances; one value per path in LwM2M CBOR.
    let above = [WriteItem {
        path: p("/3/0"),
        value: s("x"),
    }];
    assert!(encode_composite(fmt_id::SENML_JSON, &above).is_err());
    let twice = witems(&[item("/3/0/14", s("a")), item("/3/0/14", s("b"))]);
    assert!(encode_composite(fmt_id::LWM2M_CBOR, &twice).is_err());
    assert_eq!(
        encode_composite(fmt_id::TLV, &witems(&items)),
        Err(EncodeError::UnsupportedFormat(fmt_id::TLV))
    );
}

fn sorted_items(mut v: Vec<ContentItem>) -> Vec<ContentItem> {
    v.sort_by_key(|i| i.path);
    v
}

#[test]
fn composite_answers_decode_from_the_root_and_refuse_what_is_no_resource() {
    let m = model();
    // bn/n resolution as in any SenML payload; values typed by the model.
    let json = br#"[{"bn":"/3/0/","n":"9","v":87},{"bn":"/1/0/","n":"1","v":300},{"bn":"/3/0/","n":"14","vs":"+02"}]"#;
    let items = decode_composite(Some(fmt_id::SENML_JSON), fmt_id::SENML_JSON, json, &m).unwrap();
    assert_eq!(
        items,
        vec![
            item("/3/0/9", Value::Integer(87)),
            item("/1/0/1", Value::Integer(300)),
            item("/3/0/14", s("+02")),
        ]
    );
    // No Content-Format: the format asked for.
    assert_eq!(
        decode_composite(None, fmt_id::SENML_JSON, json, &m)
            .unwrap()
            .len(),
        3
    );
    let bad: &[(&[u8], &str)] = &[
        (br#"[{"n":"/3/0","v":1}]"#, "invalid path"),
        (br#"[{"n":"/x/0/1","v":1}]"#, "invalid path"),
        (br#"[{"n":"/3/0/9","v":"87"}]"#, "v is not a number"),
        (br#"[{"n":"/3/0/9","v":8"#, "JSON"),
        (b"", "JSON"),
    ];
    for (body, want) in bad {
        let e = decode_composite(Some(fmt_id::SENML_JSON), fmt_id::SENML_JSON, body, &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(body));
    }
    // SenML CBOR: a text where a number belongs, a truncated record.
    let wrong = b"\x81\xa2\x00\x66/3/0/9\x02\x62\x38\x37";
    assert!(decode_composite(Some(fmt_id::SENML_CBOR), fmt_id::SENML_CBOR, wrong, &m).is_err());
    let whole = encode_composite(
        fmt_id::SENML_CBOR,
        &witems(&[item("/3/0/9", Value::Integer(87))]),
    )
    .unwrap();
    for cut in 0..whole.len() {
        assert!(
            decode_composite(
                Some(fmt_id::SENML_CBOR),
                fmt_id::SENML_CBOR,
                &whole[..cut],
                &m
            )
            .is_err(),
            "cut at {cut}"
        );
    }
    // LwM2M CBOR: a value above resource level.
    assert!(decode_composite(
        Some(fmt_id::LWM2M_CBOR),
        fmt_id::LWM2M_CBOR,
        b"\xa1\x03\xa1\x00\x01",
        &m
    )
    .is_err());
}
