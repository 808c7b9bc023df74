//! A set of catalogue versions: what intake promises with (the current one)
//! and what replay and the other services look cases up in (the pinned one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::catalog::{Catalog, CatalogPin};
use crate::error::{Error, Result};
use crate::version::CatalogVersion;

/// Every loaded catalogue version, keyed by version.
///
/// Published versions are immutable: loading the same version twice with the
/// same bytes is harmless (deployments often keep copies), but two different
/// files claiming one version is [`Error::ConflictingVersion`]. Old versions
/// must stay deployed for as long as cases pinned to them can be replayed.
#[derive(Debug, Clone)]
pub struct Catalogs {
    by_version: BTreeMap<CatalogVersion, Catalog>,
}

impl Catalogs {
    /// Builds the set from catalogues already loaded. Empty input is
    /// [`Error::NoCatalog`].
    pub fn new(catalogs: impl IntoIterator<Item = Catalog>) -> Result<Self> {
        let mut by_version: BTreeMap<CatalogVersion, Catalog> = BTreeMap::new();
        for catalog in catalogs {
            match by_version.get(catalog.version()) {
                Some(existing) if existing.digest() == catalog.digest() => {}
                Some(existing) => {
                    return Err(Error::ConflictingVersion {
                        version: catalog.version().to_string(),
                        first: existing.origin().to_owned(),
                        first_digest: existing.digest().to_owned(),
                        second: catalog.origin().to_owned(),
                        second_digest: catalog.digest().to_owned(),
                    });
                }
                None => {
                    by_version.insert(catalog.version().clone(), catalog);
                }
            }
        }
        if by_version.is_empty() {
            return Err(Error::NoCatalog {
                origin: "the list of catalogues".into(),
            });
        }
        Ok(Self { by_version })
    }

    /// Loads the given files (in order, so conflicts name them in order).
    pub fn load_files<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Result<Self> {
        let catalogs = paths
            .into_iter()
            .map(Catalog::load)
            .collect::<Result<Vec<_>>>()?;
        Self::new(catalogs)
    }

    /// Loads every `*.toml` file directly inside `dir` (not subdirectories),
    /// in file-name order.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let read_error = |source| Error::Read {
            path: dir.to_owned(),
            source,
        };
        let mut paths: Vec<PathBuf> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_error)? {
            let path = entry.map_err(read_error)?.path();
            if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(Error::NoCatalog {
                origin: dir.display().to_string(),
            });
        }
        Self::load_files(paths)
    }

    /// The catalogue to make new promises with: the highest version (see
    /// [`CatalogVersion`] for the order).
    pub fn current(&self) -> &Catalog {
        // `new` refuses an empty set.
        self.by_version
            .values()
            .next_back()
            .expect("a Catalogs is never empty")
    }

    /// The catalogue with exactly this version.
    pub fn get(&self, version: &str) -> Option<&Catalog> {
        let version = CatalogVersion::parse(version).ok()?;
        self.by_version.get(&version)
    }

    /// The catalogue a case is pinned to, checking that its bytes are the
    /// ones the case was pinned with.
    pub fn pinned(&self, pin: &CatalogPin) -> Result<&Catalog> {
        let catalog = self
            .get(&pin.version)
            .ok_or_else(|| Error::UnknownVersion {
                version: pin.version.clone(),
                known: self.versions().map(|v| v.to_string()).collect(),
            })?;
        if catalog.digest() != pin.digest {
            return Err(Error::DigestMismatch {
                version: pin.version.clone(),
                expected: pin.digest.clone(),
                actual: catalog.digest().to_owned(),
                origin: catalog.origin().to_owned(),
            });
        }
        Ok(catalog)
    }

    /// The loaded versions, oldest first.
    pub fn versions(&self) -> impl Iterator<Item = &CatalogVersion> {
        self.by_version.keys()
    }

    /// The loaded catalogues, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Catalog> {
        self.by_version.values()
    }

    /// How many versions are loaded (at least 1).
    pub fn len(&self) -> usize {
        self.by_version.len()
    }

    /// Always false: a `Catalogs` holds at least one catalogue.
    pub fn is_empty(&self) -> bool {
        self.by_version.is_empty()
    }
}
