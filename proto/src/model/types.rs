//! Object and resource definitions as loaded from OMA object XML files.

use std::collections::BTreeMap;

/// The data type of a resource, as the OMA object XML names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceType {
    String,
    Integer,
    UnsignedInteger,
    Float,
    Boolean,
    Opaque,
    Time,
    Objlnk,
    Corelnk,
    /// Executable resources carry no value.
    None,
}

impl ResourceType {
    /// Parses the XML `<Type>` text (case-insensitive); empty means `None` (executable).
    pub fn from_xml(s: &str) -> Option<Self> {
        let t = s.trim();
        Some(match t.to_ascii_lowercase().as_str() {
            "string" => Self::String,
            "integer" => Self::Integer,
            "unsigned integer" | "unsignedinteger" => Self::UnsignedInteger,
            "float" => Self::Float,
            "boolean" => Self::Boolean,
            "opaque" => Self::Opaque,
            "time" => Self::Time,
            "objlnk" => Self::Objlnk,
            "corelnk" => Self::Corelnk,
            "" | "none" => Self::None,
            _ => return None,
        })
    }

    /// The name used in OMA XML and in MQTT command `type` fields.
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "String",
            Self::Integer => "Integer",
            Self::UnsignedInteger => "Unsigned Integer",
            Self::Float => "Float",
            Self::Boolean => "Boolean",
            Self::Opaque => "Opaque",
            Self::Time => "Time",
            Self::Objlnk => "Objlnk",
            Self::Corelnk => "Corelnk",
            Self::None => "None",
        }
    }
}

/// Allowed operations of a resource (`R`, `W`, `RW`, `E`, or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Operations {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

impl Operations {
    /// Parses the XML `<Operations>` text.
    pub fn from_xml(s: &str) -> Self {
        let s = s.trim().to_ascii_uppercase();
        Self {
            read: s.contains('R'),
            write: s.contains('W'),
            execute: s.contains('E'),
        }
    }
}

/// One resource of an object definition.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceDef {
    pub id: u16,
    pub name: String,
    pub kind: ResourceType,
    pub operations: Operations,
    pub multiple: bool,
}

/// One object definition.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectDef {
    pub id: u16,
    pub name: String,
    pub multiple: bool,
    pub resources: BTreeMap<u16, ResourceDef>,
}

/// What the content-format codecs need from the object registry.
pub trait ObjectModel {
    fn object(&self, obj: u16) -> Option<&ObjectDef>;

    fn resource(&self, obj: u16, res: u16) -> Option<&ResourceDef> {
        self.object(obj).and_then(|o| o.resources.get(&res))
    }
}

/// An empty model: every value is untyped.
impl ObjectModel for () {
    fn object(&self, _obj: u16) -> Option<&ObjectDef> {
        None
    }
}

impl ObjectModel for BTreeMap<u16, ObjectDef> {
    fn object(&self, obj: u16) -> Option<&ObjectDef> {
        self.get(&obj)
    }
}
