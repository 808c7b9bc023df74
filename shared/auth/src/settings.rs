//! The `auth` section of every service's options.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Whether callers must prove who they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every call but health and reflection needs a valid token or a mapped
    /// client certificate.
    Required,
    /// No authentication: anyone may do anything (development on loopback
    /// only; logged loudly at start).
    #[default]
    Off,
}

/// A client certificate identity mapped to a principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateMapping {
    /// The certificate identity: a URI SAN (e.g. a SPIFFE ID
    /// `spiffe://corp/ns/ops/sa/worker`), a DNS SAN, or the subject CN.
    pub identity: String,
    /// The principal's subject.
    pub subject: String,
    /// The tenants it acts for (`*`: all).
    pub tenants: Vec<String>,
    /// Its roles there.
    pub roles: Vec<String>,
}

/// How a service authenticates callers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `required` or `off`.
    pub mode: AuthMode,
    /// A JWKS file (JSON `{"keys": [...]}`) with the issuer's public keys.
    pub jwks_file: Option<PathBuf>,
    /// The expected `iss`.
    pub issuer: Option<String>,
    /// The expected `aud` (one of the token's audiences).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// The claim listing the tenants (an array, `*` for all).
    pub tenants_claim: String,
    /// The claim with the roles: an array (held in every listed tenant) or
    /// an object from tenant (or `*`) to an array of roles.
    pub roles_claim: String,
    /// Client certificate identities mapped to principals.
    pub certificates: Vec<CertificateMapping>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::Off,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway_seconds: 60,
            tenants_claim: "casework/tenants".into(),
            roles_claim: "casework/roles".into(),
            certificates: Vec::new(),
        }
    }
}

impl AuthSettings {
    /// Every problem, each naming the setting and how to fix it.
    pub fn validate(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.mode == AuthMode::Required {
            if self.jwks_file.is_none() && self.certificates.is_empty() {
                out.push("auth.mode is required but neither auth.jwks_file nor auth.certificates is set: give the issuer's JWKS file or map client certificates".into());
            }
            if self.jwks_file.is_some() {
                if self.issuer.as_deref().is_none_or(str::is_empty) {
                    out.push(
                        "auth.issuer is empty: set the token issuer (the `iss` claim) to accept"
                            .into(),
                    );
                }
                if self.audience.as_deref().is_none_or(str::is_empty) {
                    out.push("auth.audience is empty: set the audience (an `aud` value) tokens must carry for this system".into());
                }
            }
        }
        if self.leeway_seconds > 300 {
            out.push(format!(
                "auth.leeway_seconds = {} is more than 300: clock skew that large lets expired tokens in; fix the clocks instead",
                self.leeway_seconds
            ));
        }
        for (i, m) in self.certificates.iter().enumerate() {
            if m.identity.is_empty() || m.subject.is_empty() {
                out.push(format!(
                    "auth.certificates[{i}] needs both identity and subject"
                ));
            }
            for r in &m.roles {
                if let Err(e) = r.parse::<crate::Role>() {
                    out.push(format!("auth.certificates[{i}].roles: {e}"));
                }
            }
            if m.tenants.is_empty() {
                out.push(format!(
                    "auth.certificates[{i}].tenants is empty: name the tenants (or \"*\")"
                ));
            }
        }
        out
    }
}
