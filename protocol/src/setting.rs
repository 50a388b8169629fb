//! [`InvalidSetting`]: the error every crate's config check returns, so that the binary can
//! report the file, the dotted key and the problem without reading them back out of a string.

/// A setting that does not hold: its dotted key as written in `edgewatch.toml` (for example
/// `live.read_filters` or `serial[0].baud`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidSetting {
    /// The dotted key.
    pub key: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl InvalidSetting {
    /// The setting `key` is wrong: `message`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}
