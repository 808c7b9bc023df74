//! The ledger's one error enum and the one function mapping it to gRPC.

/// Everything that can go wrong in the ledger.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is invalid.
    #[error("{field}: {why}")]
    InvalidArgument {
        /// The request field.
        field: &'static str,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// The case (or other thing) is not in the archive.
    #[error("{0}")]
    NotFound(String),
    /// The stream cannot be reached.
    #[error("the stream is unavailable: {0}")]
    Unavailable(String),
    /// redb failed.
    #[error("archive: {0}")]
    Store(#[from] redb::Error),
    /// The archive's file cannot be read as written (a damaged page, a
    /// read that panicked inside redb).
    #[error(
        "{0}; the archive's file may be damaged: stop the ledger, move its data directory aside and start it again to rebuild the archive from the stream (then verify again)"
    )]
    Damaged(String),
    /// Anything else that should not happen.
    #[error("{0}")]
    Internal(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Store(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<casework_caselog::Error> for Error {
    fn from(e: casework_caselog::Error) -> Self {
        use casework_caselog::Error as E;
        match e {
            E::Invalid(d) => Error::InvalidArgument {
                field: "case",
                why: d.to_string(),
            },
            other => Error::Unavailable(other.to_string()),
        }
    }
}

/// Result alias with the ledger's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The one mapping of ledger errors to gRPC statuses.
pub fn to_status(e: Error) -> tonic::Status {
    match e {
        Error::InvalidArgument { .. } => tonic::Status::invalid_argument(e.to_string()),
        Error::NotFound(_) => tonic::Status::not_found(e.to_string()),
        Error::Unavailable(_) => tonic::Status::unavailable(e.to_string()),
        Error::Store(redb::Error::Corrupted(_)) | Error::Damaged(_) => {
            tracing::error!(error = %e, "the archive cannot be read");
            tonic::Status::data_loss(e.to_string())
        }
        Error::Store(_) | Error::Internal(_) => {
            tracing::error!(error = %e, "internal error");
            tonic::Status::internal(e.to_string())
        }
    }
}

/// Runs a read of the archive on the blocking pool. A read that panics
/// (redb does, on some damaged pages) is [`Error::Damaged`], not a panic of
/// the handler: the caller is told DATA_LOSS and the service goes on.
pub async fn read_blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(Error::Damaged(match e.try_into_panic() {
            Ok(p) => format!(
                "a read of the archive failed: {}",
                casework_runtime::panic_message(p.as_ref())
            ),
            Err(_) => "a read of the archive was cancelled".to_owned(),
        })),
    }
}
