//! The crate's one error type and the [`Problem`] it carries for a catalogue
//! that does not validate.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong while reading catalogues.
///
/// Callers match on the variant; the text is for people. A file that does not
/// validate gives one [`Error::Invalid`] listing *every* problem found, so an
/// author can fix them all in one go.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("{}: cannot read the catalogue: {source}", path.display())]
    Read {
        /// The file or directory that was read.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The catalogue is not valid TOML or breaks a rule of the schema.
    #[error("{}", Problems(problems))]
    Invalid {
        /// The file (or other origin) that was being loaded.
        origin: String,
        /// Every problem found, in the order found; never empty.
        problems: Vec<Problem>,
    },
    /// Two files claim the same catalogue version with different bytes.
    #[error(
        "catalogue version {version:?} is declared by two different files: {first} (sha256 {first_digest}) and {second} (sha256 {second_digest}); a published version never changes, so give the new file a new `version`"
    )]
    ConflictingVersion {
        /// The version both files declare.
        version: String,
        /// Origin of the file loaded first.
        first: String,
        /// Its digest.
        first_digest: String,
        /// Origin of the file loaded second.
        second: String,
        /// Its digest.
        second_digest: String,
    },
    /// A set of catalogues was asked for, but there were none.
    #[error("{origin}: no catalogue found; add at least one `*.toml` catalogue file")]
    NoCatalog {
        /// The directory or list that was empty.
        origin: String,
    },
    /// A case is pinned to a version that is not loaded.
    #[error(
        "catalogue version {version:?} is not loaded (loaded: {}); deploy the catalogue file that declares it",
        known.join(", ")
    )]
    UnknownVersion {
        /// The version asked for.
        version: String,
        /// The versions that are loaded.
        known: Vec<String>,
    },
    /// A case is pinned to (version, digest) but the loaded file with that
    /// version has other bytes: the file was changed after cases used it.
    #[error(
        "catalogue version {version:?} was pinned with sha256 {expected} but the loaded file {origin} has sha256 {actual}; a published catalogue must never be edited — restore the original file and publish changes under a new version"
    )]
    DigestMismatch {
        /// The pinned version.
        version: String,
        /// The digest the case was pinned to.
        expected: String,
        /// The digest of the loaded file.
        actual: String,
        /// The loaded file.
        origin: String,
    },
}

/// Result alias with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One thing wrong with a catalogue file: where it is and how to fix it.
///
/// Its `Display` is a complete sentence naming the file, the line when the
/// TOML parser knows it, the service (when the problem is inside one) and the
/// field path, e.g.
/// `catalog.toml: service "refund": promise.deadline: "4 buisness hours" is not a deadline; write e.g. "4 business hours", …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or other origin) the problem is in.
    pub origin: String,
    /// 1-based line and column, when known (syntax and schema errors).
    pub position: Option<(usize, usize)>,
    /// The service code, when the problem is inside a service.
    pub service: Option<String>,
    /// Dotted field path, relative to the service when `service` is set
    /// (e.g. `steps[1].retry.jitter`), else from the top of the file
    /// (e.g. `calendars.berlin_office.closes`). Empty for the whole file.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(service) = &self.service {
            write!(f, ": service {service:?}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}
