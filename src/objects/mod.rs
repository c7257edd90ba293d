//! The LwM2M object registry: OMA object definitions (XML) loaded from a
//! directory, shared read-mostly between shards, and reloaded without a restart.
//!
//! - [`xml`] parses one OMA object XML file ([`parse_file`], [`parse_str`]).
//! - [`ObjectRegistry`] is one loaded, immutable set of definitions and
//!   implements [`ObjectModel`](crate::model::ObjectModel).
//! - [`SharedRegistry`] holds the current registry behind an `Arc`; readers take
//!   a snapshot with [`SharedRegistry::load`], reloads swap it atomically.
//! - [`builtin_registry`] holds the shipped definitions, compiled in.
//! - [`spawn_watcher`] reloads when the directory changes or on SIGHUP.

pub mod builtin;
pub mod registry;
pub mod reload;
pub mod xml;

pub use builtin::builtin_registry;
pub use registry::{LoadError, LoadedObject, ObjectRegistry};
pub use reload::{spawn_watcher, ReloadError, Reloaded, SharedRegistry};
pub use xml::{parse_file, parse_str, ObjectVersion, ParsedObject, XmlError, MAX_FILE_BYTES};
