//! The recovery service's one error type and its one mapping to gRPC
//! status codes.

use casework_runtime::reconcile::Failure;

/// Everything that can go wrong in the recovery service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: names the field and how to fix it.
    #[error("{field}: {why}")]
    InvalidArgument {
        /// The request field.
        field: &'static str,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// An unknown case or compensation.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the case's state (already decided…).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The log is unavailable or kept changing: try again.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a broken store.
    #[error("{0}")]
    Internal(String),
    /// The per-case log failed (mapped by the runtime's one mapping).
    #[error(transparent)]
    Log(#[from] casework_caselog::Error),
    /// The decide-append loop did not finish.
    #[error("{0:?}")]
    Failed(Failure),
}

/// Result alias with the service's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Failure> for Error {
    fn from(f: Failure) -> Self {
        Error::Failed(f)
    }
}

/// The one mapping from [`Error`] to a gRPC status.
pub fn to_status(e: Error) -> tonic::Status {
    let msg = e.to_string();
    match e {
        Error::InvalidArgument { .. } => tonic::Status::invalid_argument(msg),
        Error::NotFound(_) => tonic::Status::not_found(msg),
        Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
        Error::Unavailable(_) => tonic::Status::unavailable(msg),
        Error::Internal(_) => tonic::Status::internal(msg),
        Error::Log(e) => casework_runtime::grpc::log_status(&e),
        Error::Failed(f) => casework_runtime::grpc::failure_status(&f),
    }
}
