//! The crate's one error enum and the one function that turns it into a gRPC
//! status.

use casework_caselog::Error as LogError;

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing, malformed or too long.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field, as named in the proto (e.g. `service_code`).
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// No such case.
    #[error("case {tenant}/{case_id} not found")]
    NotFound {
        /// The tenant asked for.
        tenant: String,
        /// The case id asked for.
        case_id: String,
    },
    /// Something other than a case is not there (a customer to erase).
    #[error("{0}")]
    NotFoundCustomer(String),
    /// The case's state does not allow the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// An idempotency key or request id was used for a different request.
    #[error("{0}")]
    AlreadyExists(String),
    /// The log refused or could not be reached.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The case kept changing under us, or another transient condition.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or corrupt data.
    #[error("{0}")]
    Internal(String),
    /// The decide-append loop did not finish (a case that cannot be
    /// decided, or a transient failure).
    #[error("{0:?}")]
    Failed(casework_runtime::reconcile::Failure),
}

/// Result alias with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An `InvalidArgument` for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The one mapping from errors to gRPC statuses.
pub fn to_status(e: Error) -> tonic::Status {
    use tonic::Status;
    match &e {
        Error::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
        Error::NotFound { .. } | Error::NotFoundCustomer(_) => Status::not_found(e.to_string()),
        Error::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
        Error::AlreadyExists(_) => Status::already_exists(e.to_string()),
        Error::Unavailable(_) => Status::unavailable(e.to_string()),
        Error::Internal(_) => Status::internal(e.to_string()),
        Error::Log(l) => casework_runtime::grpc::log_status(l),
        Error::Failed(f) => casework_runtime::grpc::failure_status(f),
    }
}

impl From<casework_privacy::Error> for Error {
    fn from(e: casework_privacy::Error) -> Self {
        if e.is_transient() {
            Error::Unavailable(e.to_string())
        } else {
            Error::Internal(e.to_string())
        }
    }
}

/// A decide-append loop that did not finish, as the API's error.
pub fn failure_to_error(f: casework_runtime::reconcile::Failure) -> Error {
    Error::Failed(f)
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        to_status(e)
    }
}
