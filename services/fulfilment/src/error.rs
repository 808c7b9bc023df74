//! The crate's one error type and its one mapping to gRPC status codes.

use crate::decide::Refusal;

/// Everything that can go wrong in fulfilment's API and engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: names the field and how to fix it.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such case, run, step or attempt.
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the case's state refuses it (stale task,
    /// wrong handler, case withdrawn or closed, leased to another worker).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The case cannot be decided (catalogue reference missing).
    #[error("case cannot be decided: {0}")]
    Undecidable(String),
    /// The per-case log failed.
    #[error(transparent)]
    Log(#[from] casework_caselog::Error),
    /// A transient failure (the case kept changing, the broker is away).
    #[error("{0}")]
    Unavailable(String),
    /// A fault to fix, not to wait out (a wrong KEK, a damaged key).
    #[error("{0}")]
    Internal(String),
}

/// Result alias with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::UnknownAttempt(a) => {
                Error::NotFound(format!("no task {a} in this case's log"))
            }
            Refusal::Stale(m) | Refusal::CaseEnded(m) | Refusal::WrongHandler(m) => {
                Error::FailedPrecondition(m)
            }
            Refusal::AlreadyCompleted { event_id } => {
                Error::FailedPrecondition(format!("the task already completed (event {event_id})"))
            }
            Refusal::AlreadyFailed { event_id, .. } => {
                Error::FailedPrecondition(format!("the task already failed (event {event_id})"))
            }
            Refusal::Undecidable(m) => Error::Undecidable(m),
        }
    }
}

/// The one mapping from errors to gRPC status codes.
pub fn to_status(e: Error) -> tonic::Status {
    match e {
        Error::InvalidArgument(m) => tonic::Status::invalid_argument(m),
        Error::NotFound(m) => tonic::Status::not_found(m),
        Error::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
        e @ Error::Undecidable(_) => tonic::Status::failed_precondition(e.to_string()),
        // The one mapping of log errors, shared by every service.
        Error::Log(e) => casework_runtime::grpc::log_status(&e),
        Error::Unavailable(m) => tonic::Status::unavailable(m),
        Error::Internal(m) => tonic::Status::internal(m),
    }
}
