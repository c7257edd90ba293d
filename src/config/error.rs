//! The configuration error type: every variant names where the problem is.

use std::path::PathBuf;

/// An error loading or validating the configuration.
///
/// Every variant names its location: the file for I/O errors, the key path
/// (`listeners.udp.default.bind`) for parse and validation errors, or the
/// command-line flag (`--recv-batch`) for overrides given on the command line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type or form.
    /// `path_in_file` is the dotted key path (empty for a syntax error, whose
    /// message then carries the line and column).
    #[error("{}", join(path_in_file, message))]
    Parse {
        path_in_file: String,
        message: String,
    },
    /// A value is well-formed but not acceptable (out of range, inconsistent).
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// A validation error for `key`.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The key path (or flag) the error is about; `None` for I/O errors and
    /// TOML syntax errors.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Parse { path_in_file, .. } if path_in_file.is_empty() => None,
            ConfigError::Parse { path_in_file, .. } => Some(path_in_file),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

fn join(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}
