//! `casework-auth` owns who is calling (DESIGN.md §5): a bearer token
//! verified against a JWKS (issuer, audience, expiry and not-before checked,
//! RS256, ES256 and EdDSA) or a client certificate mapped to a principal,
//! the roles a principal holds per tenant, and the one policy table every
//! RPC is checked against, with its refusals as gRPC statuses. It must not
//! do I/O beyond reading a key file (fetching a JWKS URL is the runtime's:
//! it hands the keys over with `Verifier::replace_keys`), know any service's rules, or log a
//! token: it decides who someone is and what they may do, nothing else.
//!
//! Layout: `role` (roles and the RPC table), `principal` (grants and
//! checks), `verify` (tokens and certificates), `settings` (the options),
//! `dev` (a development issuer for local use and tests).

pub mod dev;
mod principal;
mod role;
mod settings;
mod verify;

pub use jsonwebtoken::jwk::JwkSet;
pub use principal::{AuthMethod, Principal, TenantScope};
pub use role::{Role, required_role};
pub use settings::{AuthMode, AuthSettings, CertificateMapping};
pub use verify::{RELOAD_AT_MOST_EVERY as JWKS_RELOAD_AT_MOST_EVERY, Verifier, parse_jwks};

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

/// The caller of one RPC, as the gRPC layer admitted it: who, and the role
/// the RPC needs ([`required_role`]). Handlers take it from the request
/// and check the tenant the request is for.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who is calling.
    pub principal: std::sync::Arc<Principal>,
    /// The role this RPC needs.
    pub role: Role,
    /// The service answering (for refusal metrics).
    pub service: &'static str,
}

impl Caller {
    /// The caller the layer put on `req`; none means the layer was not
    /// installed, and the call is refused rather than let through.
    pub fn of<T>(req: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
        req.extensions().get::<Caller>().cloned().ok_or_else(|| {
            tonic::Status::unauthenticated(
                "no credentials were checked for this call (the server has no auth layer)",
            )
        })
    }

    fn refused(&self, r: Refusal) -> tonic::Status {
        r.record(self.service, Some(&self.principal.subject));
        r.into()
    }

    /// The call is for `tenant`: refused unless the caller holds the role
    /// there.
    pub fn for_tenant(&self, tenant: &casework_domain::Tenant) -> Result<(), tonic::Status> {
        self.principal
            .require(self.role, tenant)
            .map_err(|r| self.refused(r))
    }

    /// The call covers every tenant: refused unless the caller holds the
    /// role for all (`*`).
    pub fn for_all_tenants(&self) -> Result<(), tonic::Status> {
        self.principal
            .require_all_tenants(self.role)
            .map_err(|r| self.refused(r))
    }

    /// The tenants a list or stream is narrowed to.
    pub fn scope(&self) -> TenantScope {
        self.principal.scope(self.role)
    }

    /// A person named in the request (`claimed_id`, empty for "me"),
    /// checked against the caller; returns the id to record.
    pub fn as_person(&self, claimed_id: &str) -> Result<String, tonic::Status> {
        self.principal
            .as_person(claimed_id)
            .map_err(|r| self.refused(r))
    }

    /// The person a request names is the caller (DESIGN.md §5): a person
    /// actor must name the caller (or nobody, and the caller is recorded);
    /// any actor records how the caller was authenticated. With
    /// authentication off the request's claim is all there is and is kept
    /// as sent.
    pub fn vouch(
        &self,
        actor: Option<casework_domain::pb::Actor>,
    ) -> Result<Option<casework_domain::pb::Actor>, tonic::Status> {
        use casework_domain::pb;
        let p = &self.principal;
        if p.method == AuthMethod::Unchecked {
            return nobody_is_no_person(actor);
        }
        let authenticated_by = format!("{} sub={}", p.method.describe(), p.subject);
        let person = pb::ActorKind::Person as i32;
        let name = |given: &str| {
            let n = p.display_name(given);
            if n.trim().is_empty() {
                p.subject.clone()
            } else {
                n
            }
        };
        Ok(Some(match actor {
            Some(a) if a.kind == person => pb::Actor {
                kind: person,
                id: self.as_person(&a.id)?,
                display_name: name(&a.display_name),
                authenticated_by,
            },
            // A customer or a system the caller acts for: kept, with who
            // recorded it.
            Some(a) => pb::Actor {
                authenticated_by,
                ..a
            },
            None => pb::Actor {
                kind: match p.method {
                    AuthMethod::Certificate { .. } => pb::ActorKind::System as i32,
                    _ => person,
                },
                id: p.subject.clone(),
                display_name: name(""),
                authenticated_by,
            },
        }))
    }

    /// [`Caller::vouch`] for a person named by id and display name (`None`
    /// when the request names nobody): with authentication on, the caller
    /// (a named someone else is refused), recorded as a person; with it
    /// off, the request's claim as sent.
    pub fn vouch_person(
        &self,
        claimed: Option<(String, String)>,
    ) -> Result<Option<casework_domain::pb::Actor>, tonic::Status> {
        use casework_domain::pb;
        let claimed = claimed.map(|(id, display_name)| pb::Actor {
            kind: pb::ActorKind::Person as i32,
            id,
            display_name,
            authenticated_by: String::new(),
        });
        if self.principal.method == AuthMethod::Unchecked {
            return nobody_is_no_person(claimed);
        }
        self.vouch(claimed.or(Some(pb::Actor {
            kind: pb::ActorKind::Person as i32,
            ..Default::default()
        })))
    }
}

/// With authentication off the request's person is all the record has: a
/// person with neither id nor name would be recorded as nobody, so it is
/// refused (with authentication on, the caller fills it in).
fn nobody_is_no_person(
    actor: Option<casework_domain::pb::Actor>,
) -> Result<Option<casework_domain::pb::Actor>, tonic::Status> {
    match actor {
        Some(a)
            if a.kind == casework_domain::pb::ActorKind::Person as i32
                && a.id.trim().is_empty() =>
        {
            Err(tonic::Status::invalid_argument(
                "the person acting has an empty id: name them (their stable id and display name), or turn authentication on to record the caller",
            ))
        }
        other => Ok(other),
    }
}
