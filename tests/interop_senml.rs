//! The SenML JSON and SenML CBOR payloads of writes, read by a SenML library this project did not
//! write: PyPI's `senml` (with `cbor2` for CBOR), through tests/interop/python/senml_resolve.py.
//! Every record's resolved name (base name + name, RFC 8428) must be exactly the written path.
//! Needs the venv of tests/interop/python (scripts/test.sh).

#[path = "interop/support.rs"]
mod support;

use lwm2m_gateway::formats::{encode, encode_composite, fmt_id, Value, WriteItem};
use lwm2m_gateway::model::LwPath;
use std::io::Write as _;
use std::process::{Command, Stdio};

fn path(s: &str) -> LwPath {
    LwPath::parse(s).unwrap()
}

/// A write to `base` of `items`, and the records a SenML reader must resolve it to.
struct Case {
    base: &'static str,
    items: Vec<(&'static str, Value)>,
    /// `<name> <value as JSON>`, as senml_resolve.py prints them (numbers come out as floats).
    want: Vec<&'static str>,
}

fn cases() -> Vec<Case> {
    let text = |s: &str| Value::String(s.to_string());
    vec![
        Case {
            base: "/3/0/14",
            items: vec![("/3/0/14", text("+02"))],
            want: vec![r#"/3/0/14 "+02""#],
        },
        Case {
            base: "/3/0/7/1",
            items: vec![("/3/0/7/1", Value::Integer(3800))],
            want: vec!["/3/0/7/1 3800.0"],
        },
        Case {
            base: "/3/0/7",
            items: vec![
                ("/3/0/7/0", Value::Integer(5000)),
                ("/3/0/7/1", Value::Integer(3800)),
            ],
            want: vec!["/3/0/7/0 5000.0", "/3/0/7/1 3800.0"],
        },
        Case {
            base: "/3/0",
            items: vec![
                ("/3/0/1", text("x")),
                ("/3/0/7/0", Value::Integer(5)),
                ("/3/0/9", Value::Unsigned(90)),
                ("/3/0/16", text("U")),
                ("/3/0/4242", Value::Boolean(true)),
            ],
            want: vec![
                r#"/3/0/1 "x""#,
                "/3/0/7/0 5.0",
                "/3/0/9 90.0",
                r#"/3/0/16 "U""#,
                "/3/0/4242 true",
            ],
        },
        Case {
            base: "/9999",
            items: vec![("/9999/1/3", Value::Float(1.5))],
            want: vec!["/9999/1/3 1.5"],
        },
    ]
}

/// The input line of senml_resolve.py for one payload.
fn line(format: u16, payload: &[u8]) -> String {
    match format {
        fmt_id::SENML_JSON => format!("json {}", std::str::from_utf8(payload).unwrap()),
        _ => {
            let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
            format!("cbor {hex}")
        }
    }
}

#[test]
fn senml_writes_resolve_to_the_written_paths_in_an_independent_reader() {
    let python = support::venv_python_with("senml");
    let mut input = String::new();
    let mut want = Vec::new();
    for case in cases() {
        let items: Vec<WriteItem> = case
            .items
            .iter()
            .map(|(p, v)| WriteItem {
                path: path(p),
                value: v.clone(),
            })
            .collect();
        for format in [fmt_id::SENML_JSON, fmt_id::SENML_CBOR] {
            let payload = encode(format, &path(case.base), &items).unwrap();
            let sent = line(format, &payload);
            input.push_str(&sent);
            input.push('\n');
            want.push((sent, case.want.clone()));
        }
    }
    check(&python, &input, want);
}

/// The body of a Write-Composite (every record named by its whole path, of several
/// objects) resolves to the written paths as well.
#[test]
fn senml_composite_writes_resolve_to_the_written_paths_in_an_independent_reader() {
    let python = support::venv_python_with("senml");
    let items: Vec<WriteItem> = [
        ("/3/0/14", Value::String("+02".into())),
        ("/1/0/1", Value::Integer(300)),
        ("/3303/0/5700", Value::Float(21.5)),
        ("/3/0/7/1", Value::Integer(3800)),
    ]
    .into_iter()
    .map(|(p, value)| WriteItem {
        path: path(p),
        value,
    })
    .collect();
    let records = vec![
        r#"/3/0/14 "+02""#,
        "/1/0/1 300.0",
        "/3303/0/5700 21.5",
        "/3/0/7/1 3800.0",
    ];
    let mut input = String::new();
    let mut want = Vec::new();
    for format in [fmt_id::SENML_JSON, fmt_id::SENML_CBOR] {
        let sent = line(format, &encode_composite(format, &items).unwrap());
        input.push_str(&sent);
        input.push('\n');
        want.push((sent, records.clone()));
    }
    check(&python, &input, want);
}

/// Runs senml_resolve.py on `input` (one pack a line) and compares each pack's records.
fn check(python: &std::path::Path, input: &str, want: Vec<(String, Vec<&str>)>) {
    let mut child = Command::new(python)
        .current_dir(support::interop_dir("python"))
        .arg("senml_resolve.py")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start senml_resolve.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "senml_resolve.py: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let mut packs = stdout.split_terminator("END\n");
    for (sent, records) in want {
        let got: Vec<&str> = packs.next().unwrap_or("").lines().collect();
        assert_eq!(got, records, "resolved records of {sent}");
    }
    assert_eq!(packs.next(), None, "more packs than sent:\n{stdout}");
}
