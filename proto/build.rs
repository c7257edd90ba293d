//! Embeds the shipped object definitions (`etc/lwm2m_xml/*.xml`) into the binary: a gateway
//! started without its `xml_dir` (from another directory, or installed without `etc/`) still
//! types the standard objects' values.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    // The shipped definitions live in the repository's etc/, beside this crate.
    let dir = Path::new(&root).join("../etc/lwm2m_xml");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("etc/lwm2m_xml")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("xml")))
        .collect();
    files.sort();
    let mut out = String::from("/// The shipped object definitions: (file name, XML).\n");
    writeln!(
        out,
        "pub(crate) const FILES: [(&str, &str); {}] = [",
        files.len()
    )
    .unwrap();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f.file_name().unwrap().to_string_lossy();
        writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            f.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("builtin_objects.rs");
    std::fs::write(dest, out).expect("write builtin_objects.rs");
}
