//! The `personal_data` section of the options of every service that writes
//! or reads personal data (intake, fulfilment, ledger).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Kek};

/// Whether personal fields are encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyMode {
    /// Encrypted per customer before they are appended (crypto-shredding).
    #[default]
    Encrypt,
    /// Stored in plaintext (no erasure possible; logged loudly at start).
    Plaintext,
}

/// How personal data is protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySettings {
    /// `encrypt` (default) or `plaintext`.
    pub mode: PrivacyMode,
    /// The key-encryption key: a file holding 64 hex digits (32 bytes), the
    /// same for every service; in Kubernetes the Secret
    /// `casework-personal-data-kek`, mounted read-only. Default:
    /// `personal-data.kek` beside the data directory (`<data_dir>/..`),
    /// created when absent — right for one machine, never for a cluster.
    pub kek_file: Option<PathBuf>,
    /// How long a service holds an unwrapped data key before asking the key
    /// stream again (an erasure elsewhere is seen at the latest then).
    pub key_cache_seconds: u64,
    /// Most unwrapped data keys held.
    pub key_cache_capacity: usize,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        Self {
            mode: PrivacyMode::Encrypt,
            kek_file: None,
            key_cache_seconds: 30,
            key_cache_capacity: 10_000,
        }
    }
}

impl PrivacySettings {
    /// Every problem with the settings.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.key_cache_seconds == 0 || self.key_cache_seconds > 3600 {
            p.push(format!(
                "personal_data.key_cache_seconds: {} must be between 1 and 3600",
                self.key_cache_seconds
            ));
        }
        if self.key_cache_capacity == 0 || self.key_cache_capacity > 10_000_000 {
            p.push(format!(
                "personal_data.key_cache_capacity: {} must be between 1 and 10000000",
                self.key_cache_capacity
            ));
        }
        p
    }

    /// The KEK file for a service whose data directory is `data_dir`.
    pub fn kek_path(&self, data_dir: &Path) -> PathBuf {
        self.kek_file.clone().unwrap_or_else(|| {
            let parent = data_dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            parent.join("personal-data.kek")
        })
    }

    /// The KEK, when encrypting: the configured file, or the default one
    /// (created when absent, atomically, so services starting together
    /// agree on one). `None` in plaintext mode.
    pub fn load_kek(&self, data_dir: &Path) -> Result<Option<Kek>, Error> {
        if self.mode == PrivacyMode::Plaintext {
            return Ok(None);
        }
        let path = self.kek_path(data_dir);
        if self.kek_file.is_none() && !path.exists() {
            create_kek_file(&path)?;
            tracing::warn!(
                path = %path.display(),
                "personal_data.kek_file is not set: created a key-encryption key beside the data directory; in production give every service the same KEK from a Secret"
            );
        }
        if !path.is_file() {
            return Err(Error::BadKek {
                from: format!("personal_data.kek_file {}", path.display()),
                why: "does not exist or is not a file; make one with `openssl rand -hex 32 > FILE` (the same file for intake, fulfilment and the ledger)".to_owned(),
            });
        }
        Kek::load(&path).map(Some)
    }
}

/// Writes a new KEK to `path` unless one is there (no replacing: a second
/// process creating at the same moment keeps the first one's).
pub fn create_kek_file(path: &Path) -> Result<(), Error> {
    let bad = |why: String| Error::BadKek {
        from: path.display().to_string(),
        why,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| bad(format!("its directory cannot be made: {e}")))?;
    }
    let (_, text) = Kek::generate();
    let tmp = path.with_extension(format!("tmp-{}", ulid::Ulid::new()));
    write_private(&tmp, &format!("{text}\n"))
        .map_err(|e| bad(format!("cannot be written: {e}")))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(bad(format!("cannot be created: {e}"))),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_kek_sits_beside_the_data_directory_and_is_made_once() {
        let root = tempfile::tempdir().unwrap();
        let s = PrivacySettings::default();
        let a = s.load_kek(&root.path().join("intake")).unwrap().unwrap();
        let b = s.load_kek(&root.path().join("ledger")).unwrap().unwrap();
        assert_eq!(a.id(), b.id(), "services beside each other share the KEK");
        assert!(root.path().join("personal-data.kek").is_file());
        let plain = PrivacySettings {
            mode: PrivacyMode::Plaintext,
            ..Default::default()
        };
        assert!(plain.load_kek(root.path()).unwrap().is_none());
    }

    #[test]
    fn a_configured_kek_file_must_exist() {
        let s = PrivacySettings {
            kek_file: Some("/nonexistent/kek".into()),
            key_cache_seconds: 0,
            ..Default::default()
        };
        let p = s.validate().join("\n");
        assert!(p.contains("key_cache_seconds: 0"), "{p}");
        // The file is checked when the KEK is loaded (at start), naming the
        // setting and how to make one.
        let e = s.load_kek(Path::new("/tmp/x")).unwrap_err().to_string();
        assert!(
            e.contains("personal_data.kek_file /nonexistent/kek")
                && e.contains("openssl rand -hex 32"),
            "{e}"
        );
    }
}
