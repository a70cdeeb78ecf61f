//! `[service.secrets]`: values a service reads through `wasi:config/store` like its
//! `config`, taken from an environment variable or a file the manifest names, never from
//! the manifest itself. They are read when the manifest is (at start, `apply`, a
//! `--watch` reload), so a missing one refuses the manifest, naming it; their values are
//! never printed (`Debug` shows the source only) and never persisted.

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// One secret: where it comes from and, once read, its value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "SecretSource")]
pub struct Secret {
    pub source: SecretSource,
    /// Empty until [`Secret::read`].
    value: String,
}

/// Where a secret's value is read from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretSource {
    /// `{ env = "NAME" }`: the host process's environment variable.
    Env(String),
    /// `{ file = "path" }`: a file's contents, one trailing newline removed; a relative
    /// path is resolved against the manifest's directory.
    File(PathBuf),
}

impl From<SecretSource> for Secret {
    fn from(source: SecretSource) -> Secret {
        Secret {
            source,
            value: String::new(),
        }
    }
}

impl Secret {
    /// Reads the value from its source; the error names the source, never a value.
    pub(super) fn read(&mut self, base_dir: &Path) -> Result<(), String> {
        self.value = match &self.source {
            SecretSource::Env(name) => match std::env::var(name) {
                Ok(value) => value,
                Err(std::env::VarError::NotPresent) => {
                    return Err(format!("environment variable {name:?} is not set"));
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!("environment variable {name:?} is not UTF-8"));
                }
            },
            SecretSource::File(path) => {
                let path = base_dir.join(path);
                let mut text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read secret file {path:?}: {e}"))?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                text
            }
        };
        Ok(())
    }

    /// The value, for the service's `wasi:config/store` only.
    pub(crate) fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("source", &self.source)
            .field("value", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_secret_is_read_without_its_newline_and_never_printed() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("key"), "s3cr3t-value\n").map_err(|e| e.to_string())?;
        let mut secret = Secret::from(SecretSource::File("key".into()));
        secret.read(dir.path())?;
        assert_eq!(secret.value(), "s3cr3t-value");
        assert!(!format!("{secret:?}").contains("s3cr3t"), "{secret:?}");

        let mut missing = Secret::from(SecretSource::File("nope".into()));
        let error = missing.read(dir.path()).err().unwrap_or_default();
        assert!(error.contains("nope"), "{error}");
        Ok(())
    }
}
