//! A loaded, immutable set of object definitions.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::model::{ObjectDef, ObjectModel};

use super::xml::{parse_file, ObjectVersion, ParsedObject, XmlError};

/// One object definition of the registry, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedObject {
    pub def: ObjectDef,
    pub version: ObjectVersion,
    pub lwm2m_version: Option<ObjectVersion>,
    /// The file it was loaded from (empty for objects built in code).
    pub source: PathBuf,
}

/// A file (or the directory itself) that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub struct LoadError {
    pub path: PathBuf,
    #[source]
    pub error: XmlError,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.error)
    }
}

/// The object definitions the gateway types values with.
///
/// Immutable once built; lookups are a binary search over a `Vec` sorted by
/// object id (a few hundred entries: no hashing, cache friendly).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectRegistry {
    objects: Vec<LoadedObject>,
}

impl ObjectRegistry {
    /// A registry without definitions: every value is untyped.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads every `*.xml` file of `dir` (extension case-insensitive, symlinks
    /// followed, not recursive; hidden files, whose name starts with `.`, are
    /// skipped).
    ///
    /// A file that cannot be read or parsed is reported in the returned errors
    /// and skipped; the other files still load. If `dir` itself cannot be
    /// read, the registry is empty and the one error names `dir`.
    ///
    /// When several files define the same object id, the definition with the
    /// higher `ObjectVersion` wins (a file without one is version 1.0); on
    /// equal versions the file whose name sorts last (byte order) wins.
    pub fn load_dir(dir: &Path) -> (ObjectRegistry, Vec<LoadError>) {
        match Self::try_load_dir(dir) {
            Ok(r) => r,
            Err(e) => (
                Self::empty(),
                vec![LoadError {
                    path: dir.to_path_buf(),
                    error: XmlError::Io(e),
                }],
            ),
        }
    }

    /// Like [`load_dir`](Self::load_dir), but fails if the directory itself
    /// cannot be listed.
    pub fn try_load_dir(dir: &Path) -> std::io::Result<(ObjectRegistry, Vec<LoadError>)> {
        let files = xml_files(dir)?;
        let mut errors = Vec::new();
        let mut builder = Builder::default();
        for path in files {
            match parse_file(&path) {
                Ok(objs) => {
                    for o in objs {
                        builder.add(o, &path);
                    }
                }
                Err(error) => errors.push(LoadError { path, error }),
            }
        }
        Ok((builder.finish(), errors))
    }

    /// Builds a registry from already parsed objects, with the same
    /// precedence as [`load_dir`](Self::load_dir) (higher version wins, then
    /// the later one).
    pub fn from_parsed(objects: impl IntoIterator<Item = ParsedObject>) -> Self {
        Self::from_sources(objects.into_iter().map(|o| (PathBuf::new(), o)))
    }

    /// As [`from_parsed`](Self::from_parsed), each object with the source it came from.
    pub fn from_sources(objects: impl IntoIterator<Item = (PathBuf, ParsedObject)>) -> Self {
        let mut builder = Builder::default();
        for (source, o) in objects {
            builder.add(o, &source);
        }
        builder.finish()
    }

    /// Number of object definitions.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Object ids, ascending.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = u16> + '_ {
        self.objects.iter().map(|o| o.def.id)
    }

    /// All definitions, by ascending object id.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &LoadedObject> + '_ {
        self.objects.iter()
    }

    /// The definition of `obj` with its version and source file.
    pub fn get(&self, obj: u16) -> Option<&LoadedObject> {
        self.objects
            .binary_search_by_key(&obj, |o| o.def.id)
            .ok()
            .map(|i| &self.objects[i])
    }
}

impl ObjectModel for ObjectRegistry {
    #[inline]
    fn object(&self, obj: u16) -> Option<&ObjectDef> {
        self.get(obj).map(|o| &o.def)
    }
}

#[derive(Default)]
struct Builder {
    by_id: BTreeMap<u16, LoadedObject>,
}

impl Builder {
    fn add(&mut self, o: ParsedObject, source: &Path) {
        if let Some(old) = self.by_id.get(&o.def.id) {
            if o.version < old.version {
                tracing::debug!(
                    object = o.def.id,
                    kept = %old.source.display(),
                    ignored = %source.display(),
                    "object defined twice; keeping the higher ObjectVersion {}", old.version
                );
                return;
            }
            tracing::debug!(
                object = o.def.id,
                kept = %source.display(),
                ignored = %old.source.display(),
                "object defined twice; keeping ObjectVersion {} of the later file", o.version
            );
        }
        self.by_id.insert(
            o.def.id,
            LoadedObject {
                def: o.def,
                version: o.version,
                lwm2m_version: o.lwm2m_version,
                source: source.to_path_buf(),
            },
        );
    }

    fn finish(self) -> ObjectRegistry {
        // BTreeMap iterates in ascending id order: the Vec is sorted.
        ObjectRegistry {
            objects: self.by_id.into_values().collect(),
        }
    }
}

/// The `*.xml` files of `dir` (not recursive), sorted by file name.
pub fn xml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut names: Vec<OsString> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !is_xml_name(&name) {
            continue;
        }
        // Follows symlinks; skips directories and dangling links.
        match std::fs::metadata(entry.path()) {
            Ok(m) if m.is_file() => names.push(name),
            _ => {}
        }
    }
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

pub fn is_xml_name(name: &std::ffi::OsStr) -> bool {
    let name = name.as_encoded_bytes();
    // Hidden files (editor swap files, `.foo.xml.tmp`-style partial writes
    // that end in .xml) are skipped.
    name.len() > 4 && name[0] != b'.' && name[name.len() - 4..].eq_ignore_ascii_case(b".xml")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Operations, ResourceDef, ResourceType};

    fn obj(id: u16, name: &str, version: ObjectVersion) -> ParsedObject {
        let mut resources = BTreeMap::new();
        resources.insert(
            1,
            ResourceDef {
                id: 1,
                name: "r".into(),
                kind: ResourceType::Integer,
                operations: Operations::from_xml("R"),
                multiple: false,
            },
        );
        ParsedObject {
            def: ObjectDef {
                id,
                name: name.into(),
                multiple: true,
                resources,
            },
            version,
            lwm2m_version: None,
        }
    }

    #[test]
    fn lookups_and_precedence() {
        let v10 = ObjectVersion::V1_0;
        let v11 = ObjectVersion { major: 1, minor: 1 };
        let r = ObjectRegistry::from_parsed([
            obj(3303, "new", v11),
            obj(3303, "old", v10),
            obj(1, "a", v10),
            obj(1, "b", v10),
            obj(65535, "max", v10),
        ]);
        assert_eq!(r.len(), 3);
        assert_eq!(r.ids().collect::<Vec<_>>(), vec![1, 3303, 65535]);
        assert_eq!(r.object(3303).unwrap().name, "new");
        assert_eq!(r.get(3303).unwrap().version, v11);
        assert_eq!(r.object(1).unwrap().name, "b");
        assert_eq!(r.resource(65535, 1).unwrap().kind, ResourceType::Integer);
        assert!(r.resource(65535, 2).is_none());
        assert!(r.object(0).is_none());
        assert!(r.object(2).is_none());
        assert!(ObjectRegistry::empty().is_empty());
        assert!(ObjectRegistry::empty().object(3).is_none());
    }

    #[test]
    fn xml_names() {
        use std::ffi::OsStr;
        assert!(is_xml_name(OsStr::new("3.xml")));
        assert!(is_xml_name(OsStr::new("3.XML")));
        assert!(!is_xml_name(OsStr::new(".3.xml")));
        assert!(!is_xml_name(OsStr::new(".xml")));
        assert!(!is_xml_name(OsStr::new("3.xml.bak")));
        assert!(!is_xml_name(OsStr::new("generate.py")));
    }
}
