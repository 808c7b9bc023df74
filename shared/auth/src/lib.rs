//! `casework-auth` owns who is calling (DESIGN.md §5): a bearer token
//! verified against a JWKS (issuer, audience, expiry and not-before checked,
//! RS256, ES256 and EdDSA) or a client certificate mapped to a principal,
//! the roles a principal holds per tenant, and the one policy table every
//! RPC is checked against, with its refusals as gRPC statuses. It must not
//! do I/O beyond reading a key file, know any service's rules, or log a
//! token: it decides who someone is and what they may do, nothing else.
//!
//! Layout: `role` (roles and the RPC table), `principal` (grants and
//! checks), `verify` (tokens and certificates), `settings` (the options).

mod principal;
mod role;
mod settings;
mod verify;

pub use principal::{AuthMethod, Principal, TenantScope};
pub use role::{Role, required_role};
pub use settings::{AuthMode, AuthSettings, CertificateMapping};
pub use verify::Verifier;

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No credentials, or credentials that do not prove anyone.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known principal without the role for this tenant.
    #[error(
        "{subject} may not do this for tenant {tenant}: it needs the {role} role there (or admin)"
    )]
    PermissionDenied {
        /// Who asked.
        subject: String,
        /// The role needed.
        role: Role,
        /// The tenant asked for (`*` for every tenant).
        tenant: String,
    },
    /// The request names a person other than the caller.
    #[error("{0}")]
    NotYou(String),
}

impl Refusal {
    /// The metric label of this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::PermissionDenied { .. } => "permission_denied",
            Refusal::NotYou(_) => "not_the_caller",
        }
    }

    /// Counts the refusal (`casework_auth_refused_total{service,reason}`)
    /// and logs it with the principal, never with a token.
    pub fn record(&self, service: &'static str, subject: Option<&str>) {
        metrics::counter!("casework_auth_refused_total", "service" => service, "reason" => self.reason())
            .increment(1);
        tracing::warn!(service, subject = subject.unwrap_or("(anonymous)"), refusal = %self, "call refused");
    }
}

impl From<Refusal> for tonic::Status {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Unauthenticated(why) => tonic::Status::unauthenticated(why),
            other => tonic::Status::permission_denied(other.to_string()),
        }
    }
}
