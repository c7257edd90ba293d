//! The LwM2M data model shared by the content formats and the object registry:
//! paths (`/3/0/1/2`) and object/resource definitions.

mod path;
mod types;

pub use path::{LwPath, PathError};
pub use types::{ObjectDef, ObjectModel, Operations, ResourceDef, ResourceType};
