//! The shape the project keeps, checked on its sources:
//!
//! - the protocol core (`proto/`, the lwm2m-proto crate) stays sans-IO: no socket,
//!   thread, channel or lock, and it never reads a clock (as a crate of its own it
//!   cannot import the gateway's I/O modules at all);
//! - the core's modules import each other without a circle (a machine never needs the
//!   dispatcher that drives it);
//! - `unsafe` code lives only in `netio/`, and the other crates forbid it;
//! - no function is longer than 150 lines without a reason written beside it (a
//!   comment line starting with `// Long:` right above it).
//!
//! Test code (`#[cfg(test)]` modules, `tests/` folders) is not held to these.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const MAX_FN_LINES: usize = 150;

/// What the core may not name, and why.
const FORBIDDEN_IN_CORE: &[(&str, &str)] = &[
    ("UdpSocket", "a socket"),
    ("TcpStream", "a socket"),
    ("TcpListener", "a socket"),
    ("mio::", "an event loop"),
    ("std::thread", "a thread"),
    ("Mutex", "a lock"),
    ("RwLock", "a lock"),
    ("Condvar", "a lock"),
    ("parking_lot", "a lock"),
    ("mpsc", "a channel"),
    ("crossbeam", "a channel"),
    ("Instant::now", "the clock"),
    ("SystemTime::now", "the clock"),
    ("lwm2m_gateway", "the gateway's I/O side"),
];

#[test]
fn the_core_owns_no_socket_thread_channel_lock_or_clock() {
    let mut found = Vec::new();
    for file in rust_files(&root().join("proto/src")) {
        for (i, line) in non_test_code(&file).iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (name, what) in FORBIDDEN_IN_CORE {
                if code.contains(name) {
                    found.push(format!("{}:{}: {what} ({name})", shown(&file), i + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the core must stay sans-IO:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_cores_modules_import_each_other_without_a_circle() {
    let dir = root().join("proto/src/lwm2m");
    let module_of = |file: &Path| -> String {
        let rel = file.strip_prefix(&dir).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        first.trim_end_matches(".rs").to_string()
    };
    let files: Vec<PathBuf> = rust_files(&dir)
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "mod.rs") || f.parent() != Some(&*dir))
        .collect();
    let modules: std::collections::BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for f in &files {
        let from = module_of(f);
        let code: Vec<String> = non_test_code(f)
            .iter()
            .map(|l| l.split("//").next().unwrap_or("").to_string())
            .collect();
        let code = code.join("\n");
        for m in &modules {
            let named = [format!("super::{m}::"), format!("crate::lwm2m::{m}::")]
                .iter()
                .any(|p| code.contains(p.as_str()) && !f.starts_with(dir.join(m)))
                || (m == "core" && code.contains("super::ShardCore") && from != "core");
            if named && *m != from {
                edges.entry(from.clone()).or_default().insert(m.clone());
            }
        }
    }
    // A circle is a module reachable from itself.
    for start in &modules {
        let mut seen = std::collections::BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((m, path)) = stack.pop() {
            for next in edges.get(&m).into_iter().flatten() {
                if next == start {
                    panic!(
                        "the core's modules import in a circle: {} -> {start}",
                        path.join(" -> ")
                    );
                }
                if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
}

#[test]
fn unsafe_code_lives_in_netio_only() {
    for lib in ["src/lib.rs", "src/main.rs", "proto/src/lib.rs"] {
        let text = std::fs::read_to_string(root().join(lib)).unwrap();
        assert!(
            text.contains("#![forbid(unsafe_code)]"),
            "{lib} forbids unsafe code"
        );
    }
    let mut found = Vec::new();
    for dir in ["src", "proto/src", "shard/src", "loadgen/src", "bench/src"] {
        for file in rust_files(&root().join(dir)) {
            for (i, line) in std::fs::read_to_string(&file).unwrap().lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if code.contains("unsafe ") || code.contains("unsafe{") {
                    found.push(format!("{}:{}", shown(&file), i + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "unsafe outside netio/:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_function_is_longer_than_150_lines_without_a_reason() {
    let mut long = Vec::new();
    for dir in ["src", "proto/src", "shard/src", "netio/src", "loadgen/src"] {
        for file in rust_files(&root().join(dir)) {
            let lines = non_test_code(&file);
            for (start, name, len) in functions(&lines) {
                let reason = lines[..start]
                    .iter()
                    .rev()
                    .take_while(|l| {
                        let t = l.trim_start();
                        t.starts_with("//") || t.starts_with("#[")
                    })
                    .any(|l| l.trim_start().starts_with("// Long:"));
                if len > MAX_FN_LINES && !reason {
                    long.push(format!(
                        "{}:{}: {name}, {len} lines",
                        shown(&file),
                        start + 1
                    ));
                }
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them, or say why beside them with `// Long:`):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_function_finder_counts_bodies_not_strings() {
    let src = [
        "fn a() {",
        "    let s = \"${\";",
        "    let c = '{';",
        "    if x { y() }",
        "}",
        "fn b(x: u8) -> u8 { x }",
        "fn declared();",
    ];
    let lines: Vec<String> = src.iter().map(|s| s.to_string()).collect();
    let found: Vec<(usize, String, usize)> = functions(&lines);
    assert_eq!(found, [(0, "a".to_string(), 5), (5, "b".to_string(), 1)]);
}

fn root() -> PathBuf {
    PathBuf::from(ROOT)
}

fn shown(p: &Path) -> String {
    p.strip_prefix(ROOT).unwrap_or(p).display().to_string()
}

/// The `.rs` files under `dir`, test folders and files left out.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if name != "tests" {
                    stack.push(p);
                }
            } else if name.ends_with(".rs") && name != "tests.rs" {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A file's lines up to its `#[cfg(test)]` module (tests come last in this project).
fn non_test_code(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .map(String::from)
        .collect()
}

/// (first line, name, lines) of every function with a body; braces inside string and
/// character literals and comments do not count.
fn functions(lines: &[String]) -> Vec<(usize, String, usize)> {
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else {
            continue;
        };
        let mut depth = 0i64;
        let mut opened = false;
        for (j, l) in lines[i..].iter().enumerate() {
            for c in code_chars(l) {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    ';' if !opened && depth == 0 => break,
                    _ => {}
                }
            }
            if !opened && code_chars(l).any(|c| c == ';') {
                break;
            }
            if opened && depth <= 0 {
                out.push((i, name, j + 1));
                break;
            }
        }
    }
    out
}

/// The name of the function a line declares, if it declares one.
fn fn_name(line: &str) -> Option<String> {
    let code = line.split("//").next()?;
    let at = code.find("fn ")?;
    let before = code[..at].trim();
    let words_ok = before
        .split_whitespace()
        .all(|w| w.starts_with("pub") || matches!(w, "const" | "async" | "unsafe" | "extern"));
    if !words_ok {
        return None;
    }
    let name: String = code[at + 3..]
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The characters of a line outside comments and string or character literals.
fn code_chars(line: &str) -> impl Iterator<Item = char> + '_ {
    let mut in_str = false;
    let mut escaped = false;
    let mut prev = ' ';
    let mut chars = line.chars().peekable();
    let mut out = Vec::new();
    while let Some(c) = chars.next() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        } else if c == '/' && chars.peek() == Some(&'/') {
            break;
        } else if c == '\'' && !prev.is_alphanumeric() {
            // A character literal ('{', '\''), not a lifetime ('a): skip to its end.
            let lit: String = chars.clone().take(4).collect();
            if let Some(end) = lit.find('\'') {
                if end <= 2 {
                    for _ in 0..=end {
                        chars.next();
                    }
                    continue;
                }
            }
        } else {
            out.push(c);
        }
        prev = c;
    }
    out.into_iter()
}
