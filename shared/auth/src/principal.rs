//! Who a caller is and what it holds per tenant.

use std::collections::{BTreeMap, BTreeSet};

use casework_domain::Tenant;

use crate::{Refusal, Role};

/// How a principal proved who it is (recorded beside a person in events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// A bearer token from this issuer.
    Token {
        /// The token's `iss`.
        issuer: String,
    },
    /// A client certificate with this identity (URI SAN, DNS SAN or CN).
    Certificate {
        /// The identity the mapping matched.
        identity: String,
    },
    /// Authentication is off (development): anyone is everyone.
    Unchecked,
}

impl AuthMethod {
    /// One line for an event: `oidc:<issuer>`, `mtls:<identity>`, `none`.
    pub fn describe(&self) -> String {
        match self {
            AuthMethod::Token { issuer } => format!("oidc:{issuer}"),
            AuthMethod::Certificate { identity } => format!("mtls:{identity}"),
            AuthMethod::Unchecked => "none".to_owned(),
        }
    }
}

/// The tenants a principal may act for with a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    /// Every tenant.
    All,
    /// These tenants only (maybe none).
    Only(BTreeSet<String>),
}

impl TenantScope {
    /// Whether `tenant` is in scope.
    pub fn contains(&self, tenant: &str) -> bool {
        match self {
            TenantScope::All => true,
            TenantScope::Only(s) => s.contains(tenant),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The stable id (token `sub`, or the certificate mapping's subject).
    pub subject: String,
    /// A display name (token `name`), when known.
    pub name: Option<String>,
    /// An e-mail address (token `email`), when known.
    pub email: Option<String>,
    /// How it was authenticated.
    pub method: AuthMethod,
    /// Roles per tenant; the key `*` holds roles for every tenant.
    pub grants: BTreeMap<String, BTreeSet<Role>>,
}

impl Principal {
    /// The principal of a service whose authentication is off: every role
    /// for every tenant. Development only.
    pub fn unchecked() -> Self {
        Self {
            subject: "anonymous".into(),
            name: None,
            email: None,
            method: AuthMethod::Unchecked,
            grants: BTreeMap::from([("*".to_owned(), Role::ALL.into_iter().collect())]),
        }
    }

    fn holds(&self, key: &str, role: Role) -> bool {
        self.grants
            .get(key)
            .is_some_and(|r| r.contains(&role) || r.contains(&Role::Admin))
    }

    /// Whether it may act as `role` for `tenant` (admin may do anything
    /// where it is admin).
    pub fn may(&self, role: Role, tenant: &str) -> bool {
        self.holds(tenant, role) || self.holds("*", role)
    }

    /// [`Principal::may`], or the refusal naming the role and tenant.
    pub fn require(&self, role: Role, tenant: &Tenant) -> Result<(), Refusal> {
        if self.may(role, tenant.as_str()) {
            Ok(())
        } else {
            Err(Refusal::PermissionDenied {
                subject: self.subject.clone(),
                role,
                tenant: tenant.to_string(),
            })
        }
    }

    /// Whether it holds `role` for at least one tenant (the check made
    /// before a request is even decoded).
    pub fn may_somewhere(&self, role: Role) -> bool {
        self.grants.keys().any(|t| self.holds(t, role))
    }

    /// The tenants it may act for as `role`: what a list or a stream is
    /// narrowed to.
    pub fn scope(&self, role: Role) -> TenantScope {
        if self.holds("*", role) {
            return TenantScope::All;
        }
        TenantScope::Only(
            self.grants
                .keys()
                .filter(|t| self.holds(t, role))
                .cloned()
                .collect(),
        )
    }

    /// For a list over "every tenant" (no tenant given): allowed only with
    /// the role on `*`.
    pub fn require_all_tenants(&self, role: Role) -> Result<(), Refusal> {
        if self.holds("*", role) {
            Ok(())
        } else {
            Err(Refusal::PermissionDenied {
                subject: self.subject.clone(),
                role,
                tenant: "*".into(),
            })
        }
    }

    /// Checks a person named in a request against the caller: an empty id
    /// is the caller; another id is refused (a request never speaks for
    /// someone else). Returns the id to record.
    pub fn as_person(&self, claimed_id: &str) -> Result<String, Refusal> {
        if claimed_id.is_empty() || claimed_id == self.subject {
            return Ok(self.subject.clone());
        }
        if self.method == AuthMethod::Unchecked {
            // No one is authenticated: the claim is all there is.
            return Ok(claimed_id.to_owned());
        }
        Err(Refusal::NotYou(format!(
            "the request names {claimed_id:?}, but the caller is {:?}: leave the person empty (the caller is recorded) or call with that person's credentials",
            self.subject
        )))
    }

    /// The display name to record: the token's, else the one given when
    /// nothing better is known.
    pub fn display_name(&self, given: &str) -> String {
        self.name
            .clone()
            .or_else(|| self.email.clone())
            .unwrap_or_else(|| given.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(grants: &[(&str, &[Role])]) -> Principal {
        Principal {
            subject: "u1".into(),
            name: Some("Una".into()),
            email: None,
            method: AuthMethod::Token {
                issuer: "https://idp".into(),
            },
            grants: grants
                .iter()
                .map(|(t, r)| (t.to_string(), r.iter().copied().collect()))
                .collect(),
        }
    }

    fn tenant(s: &str) -> Tenant {
        Tenant::parse(s).unwrap()
    }

    #[test]
    fn roles_hold_per_tenant_and_admin_holds_every_role_where_it_is_admin() {
        let p = with(&[("acme", &[Role::Agent]), ("beta", &[Role::Admin])]);
        assert!(p.require(Role::Agent, &tenant("acme")).is_ok());
        let err = p.require(Role::Supervisor, &tenant("acme")).unwrap_err();
        assert!(
            err.to_string().contains("needs the supervisor role there"),
            "{err}"
        );
        assert!(p.require(Role::Agent, &tenant("victim")).is_err());
        assert!(p.require(Role::Supervisor, &tenant("beta")).is_ok());
        assert_eq!(
            p.scope(Role::Agent),
            TenantScope::Only(["acme".to_owned(), "beta".to_owned()].into())
        );
        assert!(p.require_all_tenants(Role::Agent).is_err());
        let root = with(&[("*", &[Role::Auditor])]);
        assert!(root.require(Role::Auditor, &tenant("anyone")).is_ok());
        assert_eq!(root.scope(Role::Auditor), TenantScope::All);
        assert!(root.require(Role::Agent, &tenant("anyone")).is_err());
    }

    #[test]
    fn a_request_never_speaks_for_someone_else() {
        let p = with(&[("acme", &[Role::Supervisor])]);
        assert_eq!(p.as_person("").unwrap(), "u1");
        assert_eq!(p.as_person("u1").unwrap(), "u1");
        let err = p.as_person("the-cfo").unwrap_err();
        assert!(matches!(err, Refusal::NotYou(_)));
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(p.display_name("Definitely The CFO"), "Una");
    }
}
