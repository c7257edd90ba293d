//! Parsing of one OMA LwM2M object definition file.
//!
//! The format is the one of the OMA LwM2M registry (`LWM2M.xsd`,
//! `LWM2M-v1_1.xsd`):
//!
//! ```xml
//! <LWM2M>
//!   <Object ObjectType="MODefinition">
//!     <Name>Device</Name>
//!     <ObjectID>3</ObjectID>
//!     <LWM2MVersion>1.1</LWM2MVersion>      <!-- optional -->
//!     <ObjectVersion>1.2</ObjectVersion>    <!-- optional, 1.0 when absent -->
//!     <MultipleInstances>Single</MultipleInstances>
//!     <Resources>
//!       <Item ID="0">
//!         <Name>Manufacturer</Name>
//!         <Operations>R</Operations>
//!         <MultipleInstances>Single</MultipleInstances>
//!         <Type>String</Type>
//!       </Item>
//!     </Resources>
//!   </Object>
//! </LWM2M>
//! ```
//!
//! Elements are matched by local name (namespaces are ignored); elements the
//! gateway does not use (descriptions, units, ranges, ...) are ignored, as are
//! comments and processing instructions. Text may be split by CDATA sections
//! and entity references. A document type declaration with internal entities
//! is accepted; external entities are not resolved. The parser never panics:
//! anything it cannot make sense of is an [`XmlError`].

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use roxmltree::{Document, Node, ParsingOptions};

use crate::model::{ObjectDef, Operations, ResourceDef, ResourceType};

/// Files larger than this are rejected without being parsed (the largest
/// definition in the OMA registry is about 32 KiB).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Upper bound on XML nodes in one document, entity expansions included.
const MAX_NODES: u32 = 200_000;

/// Why one file could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("file is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    #[error("not valid UTF-8 (byte {0})")]
    NotUtf8(usize),
    #[error("malformed XML: {0}")]
    Syntax(#[from] roxmltree::Error),
    #[error("root element is <{0}>, expected <LWM2M>")]
    NotLwm2m(String),
    #[error("no <Object> in <LWM2M>")]
    NoObject,
    #[error("{context}: missing <{element}>")]
    Missing {
        context: String,
        element: &'static str,
    },
    #[error("{context}: <{element}> appears more than once")]
    Repeated {
        context: String,
        element: &'static str,
    },
    #[error("{context}: invalid {what} {value:?}")]
    Invalid {
        context: String,
        what: &'static str,
        value: String,
    },
    #[error("object {object}: resource {resource} defined twice")]
    DuplicateResource { object: u16, resource: u16 },
    #[error("object {0} defined twice in the same file")]
    DuplicateObject(u16),
}

/// An object version (`ObjectVersion`, `LWM2MVersion`): `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectVersion {
    pub major: u16,
    pub minor: u16,
}

impl ObjectVersion {
    /// The version of an object whose file has no `ObjectVersion`.
    pub const V1_0: ObjectVersion = ObjectVersion { major: 1, minor: 0 };

    /// Parses `"1"`, `"1.2"` (surrounding whitespace allowed).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (major, minor) = match s.split_once('.') {
            Some((a, b)) => (a, b),
            None => (s, "0"),
        };
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        if !digits(major) || !digits(minor) {
            return None;
        }
        Some(Self {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

impl fmt::Display for ObjectVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One `<Object>` of a file: the definition plus its version metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedObject {
    pub def: ObjectDef,
    /// `ObjectVersion`, 1.0 when the file has none.
    pub version: ObjectVersion,
    /// `LWM2MVersion`, if the file has one.
    pub lwm2m_version: Option<ObjectVersion>,
}

/// Reads and parses one file. Every `<Object>` in it is returned; the file is
/// rejected as a whole if any of them is invalid.
pub fn parse_file(path: &Path) -> Result<Vec<ParsedObject>, XmlError> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    // Read at most one byte past the limit so a huge file is not slurped.
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(XmlError::TooLarge);
    }
    let text =
        String::from_utf8(bytes).map_err(|e| XmlError::NotUtf8(e.utf8_error().valid_up_to()))?;
    parse_str(&text)
}

/// Parses the text of one OMA object XML document.
pub fn parse_str(text: &str) -> Result<Vec<ParsedObject>, XmlError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(XmlError::TooLarge);
    }
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let opts = ParsingOptions {
        allow_dtd: true,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(text, opts)?;
    let root = doc.root_element();
    if root.tag_name().name() != "LWM2M" {
        return Err(XmlError::NotLwm2m(truncated(root.tag_name().name())));
    }
    let mut objects: Vec<ParsedObject> = Vec::new();
    for obj in elements(root, "Object") {
        let parsed = parse_object(obj)?;
        if objects.iter().any(|o| o.def.id == parsed.def.id) {
            return Err(XmlError::DuplicateObject(parsed.def.id));
        }
        objects.push(parsed);
    }
    if objects.is_empty() {
        return Err(XmlError::NoObject);
    }
    Ok(objects)
}

fn parse_object(obj: Node<'_, '_>) -> Result<ParsedObject, XmlError> {
    let ctx = || "<Object>".to_string();
    let id_text = required(obj, "ObjectID", ctx)?;
    let id = parse_id(&id_text).ok_or_else(|| XmlError::Invalid {
        context: ctx(),
        what: "ObjectID",
        value: truncated(&id_text),
    })?;
    let ctx = || format!("object {id}");
    let name = required(obj, "Name", ctx)?;
    let multiple = parse_multiple(&required(obj, "MultipleInstances", ctx)?, ctx)?;
    let version = match optional(obj, "ObjectVersion", ctx)? {
        None => ObjectVersion::V1_0,
        Some(v) if v.is_empty() => ObjectVersion::V1_0,
        Some(v) => ObjectVersion::parse(&v).ok_or_else(|| XmlError::Invalid {
            context: ctx(),
            what: "ObjectVersion",
            value: truncated(&v),
        })?,
    };
    let lwm2m_version = match optional(obj, "LWM2MVersion", ctx)? {
        None => None,
        Some(v) if v.is_empty() => None,
        Some(v) => Some(ObjectVersion::parse(&v).ok_or_else(|| XmlError::Invalid {
            context: ctx(),
            what: "LWM2MVersion",
            value: truncated(&v),
        })?),
    };
    let resources_el = single(obj, "Resources", ctx)?.ok_or_else(|| XmlError::Missing {
        context: ctx(),
        element: "Resources",
    })?;
    let mut resources = BTreeMap::new();
    for item in elements(resources_el, "Item") {
        let res = parse_item(id, item)?;
        let rid = res.id;
        if resources.insert(rid, res).is_some() {
            return Err(XmlError::DuplicateResource {
                object: id,
                resource: rid,
            });
        }
    }
    Ok(ParsedObject {
        def: ObjectDef {
            id,
            name,
            multiple,
            resources,
        },
        version,
        lwm2m_version,
    })
}

fn parse_item(obj: u16, item: Node<'_, '_>) -> Result<ResourceDef, XmlError> {
    let ctx = || format!("object {obj}, <Item>");
    let id_attr = item.attribute("ID").ok_or_else(|| XmlError::Missing {
        context: ctx(),
        element: "Item ID=",
    })?;
    let id = parse_id(id_attr).ok_or_else(|| XmlError::Invalid {
        context: ctx(),
        what: "resource ID",
        value: truncated(id_attr),
    })?;
    let ctx = || format!("object {obj}, resource {id}");
    let name = required(item, "Name", ctx)?;
    let ops_text = required(item, "Operations", ctx)?;
    if !ops_text
        .bytes()
        .all(|b| matches!(b, b'R' | b'W' | b'E' | b'r' | b'w' | b'e'))
    {
        return Err(XmlError::Invalid {
            context: ctx(),
            what: "Operations",
            value: truncated(&ops_text),
        });
    }
    let operations = Operations::from_xml(&ops_text);
    let multiple = parse_multiple(&required(item, "MultipleInstances", ctx)?, ctx)?;
    // An executable resource may omit <Type> or leave it empty.
    let type_text = optional(item, "Type", ctx)?.unwrap_or_default();
    let kind = ResourceType::from_xml(&type_text).ok_or_else(|| XmlError::Invalid {
        context: ctx(),
        what: "Type",
        value: truncated(&type_text),
    })?;
    Ok(ResourceDef {
        id,
        name,
        kind,
        operations,
        multiple,
    })
}

/// Child elements of `parent` with local name `name`.
fn elements<'a, 'input: 'a>(
    parent: Node<'a, 'input>,
    name: &'static str,
) -> impl Iterator<Item = Node<'a, 'input>> {
    parent
        .children()
        .filter(move |n| n.is_element() && n.tag_name().name() == name)
}

/// The only child element named `name`, if any.
fn single<'a, 'input: 'a>(
    parent: Node<'a, 'input>,
    name: &'static str,
    ctx: impl Fn() -> String,
) -> Result<Option<Node<'a, 'input>>, XmlError> {
    let mut it = elements(parent, name);
    let first = it.next();
    if it.next().is_some() {
        return Err(XmlError::Repeated {
            context: ctx(),
            element: name,
        });
    }
    Ok(first)
}

fn optional(
    parent: Node<'_, '_>,
    name: &'static str,
    ctx: impl Fn() -> String,
) -> Result<Option<String>, XmlError> {
    Ok(single(parent, name, ctx)?.map(text_of))
}

fn required(
    parent: Node<'_, '_>,
    name: &'static str,
    ctx: impl Fn() -> String,
) -> Result<String, XmlError> {
    let ctx2 = &ctx;
    optional(parent, name, ctx2)?.ok_or_else(|| XmlError::Missing {
        context: ctx2(),
        element: name,
    })
}

/// All text under `node` (text, CDATA, expanded entities), trimmed.
fn text_of(node: Node<'_, '_>) -> String {
    let mut s = String::new();
    for d in node.descendants() {
        if d.is_text() {
            if let Some(t) = d.text() {
                s.push_str(t);
            }
        }
    }
    let trimmed = s.trim();
    if trimmed.len() == s.len() {
        s
    } else {
        trimmed.to_string()
    }
}

fn parse_id(s: &str) -> Option<u16> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_multiple(s: &str, ctx: impl Fn() -> String) -> Result<bool, XmlError> {
    if s.eq_ignore_ascii_case("single") {
        Ok(false)
    } else if s.eq_ignore_ascii_case("multiple") {
        Ok(true)
    } else {
        Err(XmlError::Invalid {
            context: ctx(),
            what: "MultipleInstances",
            value: truncated(s),
        })
    }
}

/// Bounds what an error message quotes from a (possibly hostile) file.
fn truncated(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<!-- license -->
<LWM2M xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="LWM2M.xsd">
  <Object ObjectType="MODefinition">
    <Name>Device</Name>
    <Description1><![CDATA[A <device> & more]]></Description1>
    <ObjectID> 3 </ObjectID>
    <ObjectVersion>1.2</ObjectVersion>
    <MultipleInstances>Single</MultipleInstances>
    <Resources>
      <Item ID="0"><Name>Manu<![CDATA[facturer]]></Name><Operations>R</Operations>
        <MultipleInstances>Single</MultipleInstances><Type>String</Type></Item>
      <!-- <Item ID="1"> commented out </Item> -->
      <Item ID="4"><Name>Reboot</Name><Operations>E</Operations>
        <MultipleInstances>Single</MultipleInstances><Type></Type></Item>
      <Item ID="7"><Name>Power &amp; Voltage</Name><Operations>R</Operations>
        <MultipleInstances>Multiple</MultipleInstances><Type>Integer</Type></Item>
    </Resources>
  </Object>
</LWM2M>"#;

    #[test]
    fn parses_device() {
        let objs = parse_str(DEVICE).unwrap();
        assert_eq!(objs.len(), 1);
        let o = &objs[0];
        assert_eq!(o.def.id, 3);
        assert_eq!(o.def.name, "Device");
        assert!(!o.def.multiple);
        assert_eq!(o.version, ObjectVersion { major: 1, minor: 2 });
        assert_eq!(o.lwm2m_version, None);
        assert_eq!(o.def.resources.len(), 3);
        assert_eq!(o.def.resources[&0].name, "Manufacturer");
        assert_eq!(o.def.resources[&4].kind, ResourceType::None);
        assert!(o.def.resources[&4].operations.execute);
        assert_eq!(o.def.resources[&7].name, "Power & Voltage");
        assert!(o.def.resources[&7].multiple);
    }

    #[test]
    fn bom_doctype_and_entities() {
        let text = format!(
            "\u{FEFF}<?xml version=\"1.0\"?>\n<!DOCTYPE LWM2M [<!ENTITY dev \"Device\">]>\n{}",
            DEVICE
                .split_once("<LWM2M")
                .map(|(_, rest)| format!("<LWM2M{rest}"))
                .unwrap()
                .replace("<Name>Device</Name>", "<Name>&dev;</Name>")
        );
        let objs = parse_str(&text).unwrap();
        assert_eq!(objs[0].def.name, "Device");
    }

    #[test]
    fn versions() {
        assert_eq!(
            ObjectVersion::parse("2"),
            Some(ObjectVersion { major: 2, minor: 0 })
        );
        assert_eq!(
            ObjectVersion::parse(" 1.10 "),
            Some(ObjectVersion {
                major: 1,
                minor: 10
            })
        );
        assert!(ObjectVersion::parse("1.1") < ObjectVersion::parse("1.10"));
        assert_eq!(ObjectVersion::parse("1.x"), None);
        assert_eq!(ObjectVersion::parse("+1"), None);
        assert_eq!(ObjectVersion::parse(""), None);
        assert_eq!(ObjectVersion::parse("99999999.1"), None);
    }

    #[test]
    fn rejects_bad_values() {
        let cases = [
            DEVICE.replace("<ObjectID> 3 </ObjectID>", "<ObjectID>three</ObjectID>"),
            DEVICE.replace("<ObjectID> 3 </ObjectID>", "<ObjectID>70000</ObjectID>"),
            DEVICE.replace("<ObjectID> 3 </ObjectID>", "<ObjectID>-3</ObjectID>"),
            DEVICE.replace("<ObjectID> 3 </ObjectID>", ""),
            DEVICE.replace("Item ID=\"4\"", "Item ID=\"x4\""),
            DEVICE.replace("Item ID=\"4\"", "Item"),
            DEVICE.replace("Item ID=\"4\"", "Item ID=\"0\""),
            DEVICE.replace("<Type>Integer</Type>", "<Type>Quaternion</Type>"),
            DEVICE.replace("<Operations>E</Operations>", "<Operations>X</Operations>"),
            DEVICE.replace("<MultipleInstances>Multiple<", "<MultipleInstances>Many<"),
            DEVICE.replace("<ObjectVersion>1.2<", "<ObjectVersion>one<"),
            DEVICE.replace("<Name>Device</Name>", "<Name>A</Name><Name>B</Name>"),
            DEVICE
                .replace("<Resources>", "<Stuff>")
                .replace("</Resources>", "</Stuff>"),
            DEVICE.replace("LWM2M", "Other"),
            DEVICE.replace("</Resources>", ""),
            DEVICE[..DEVICE.len() / 2].to_string(),
            "<LWM2M></LWM2M>".to_string(),
            String::new(),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(parse_str(c).is_err(), "case {i} should fail");
        }
    }

    #[test]
    fn long_values_are_truncated_in_errors() {
        let long = "9".repeat(10_000);
        let text = DEVICE.replace(
            "<ObjectID> 3 </ObjectID>",
            &format!("<ObjectID>{long}</ObjectID>"),
        );
        let msg = parse_str(&text).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }
}
