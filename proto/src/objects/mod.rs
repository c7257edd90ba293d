//! The LwM2M object registry: OMA object definitions (XML) as an immutable registry the
//! core types values with. The gateway shares one between its shards and swaps it on
//! reload (its `objects` module); the core only ever holds a snapshot.
//!
//! - [`xml`] parses one OMA object XML file ([`parse_file`], [`parse_str`]).
//! - [`ObjectRegistry`] is one loaded, immutable set of definitions and
//!   implements [`ObjectModel`](crate::model::ObjectModel).
//! - [`builtin_registry`] holds the shipped definitions, compiled in.

pub mod builtin;
pub mod registry;
pub mod xml;

pub use builtin::builtin_registry;
pub use registry::{is_xml_name, xml_files, LoadError, LoadedObject, ObjectRegistry};
pub use xml::{parse_file, parse_str, ObjectVersion, ParsedObject, XmlError, MAX_FILE_BYTES};
