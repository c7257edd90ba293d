//! The object definitions shipped in `etc/lwm2m_xml/`, compiled into the binary (see
//! `build.rs`): what the gateway uses when its `xml_dir` does not exist.

use std::path::PathBuf;

use super::registry::ObjectRegistry;
use super::xml::parse_str;

include!(concat!(env!("OUT_DIR"), "/builtin_objects.rs"));

/// The shipped definitions as a registry, each object's source named `built-in/<file>`.
/// A test checks that every file parses and that the result equals the directory's.
pub fn builtin_registry() -> ObjectRegistry {
    ObjectRegistry::from_sources(FILES.iter().flat_map(|(name, xml)| {
        let source = PathBuf::from("built-in").join(name);
        parse_str(xml)
            .unwrap_or_default()
            .into_iter()
            .map(move |o| (source.clone(), o))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_definitions_are_the_shipped_directory() {
        for (name, xml) in FILES {
            assert!(parse_str(xml).is_ok(), "{name}");
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/lwm2m_xml");
        let (from_dir, errors) = ObjectRegistry::load_dir(&dir);
        assert!(errors.is_empty(), "{errors:?}");
        let built_in = builtin_registry();
        assert_eq!(built_in.len(), from_dir.len());
        for (a, b) in built_in.iter().zip(from_dir.iter()) {
            assert_eq!((&a.def, a.version), (&b.def, b.version));
            assert_eq!(a.source.file_name(), b.source.file_name());
        }
        assert!(built_in.get(3).is_some());
    }
}
