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
    /// Or the issuer's JWKS URL (`https://` only), fetched at start, every
    /// [`Self::jwks_refresh_seconds`] and on a token with an unknown `kid`.
    pub jwks_url: Option<String>,
    /// PEM CA certificates trusted for [`Self::jwks_url`] besides the
    /// system's roots (an issuer behind a private CA).
    pub jwks_ca_file: Option<PathBuf>,
    /// How often the JWKS URL is fetched again (seconds).
    pub jwks_refresh_seconds: u64,
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
    /// Whether `mode = off` is allowed on a gRPC listener that is not
    /// loopback. Off by default: a service reachable from the network
    /// without authentication must be asked for by name (a development
    /// cluster), never be what a forgotten setting gives.
    pub off_beyond_loopback: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::Off,
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh_seconds: 300,
            issuer: None,
            audience: None,
            leeway_seconds: 60,
            tenants_claim: "casework/tenants".into(),
            roles_claim: "casework/roles".into(),
            certificates: Vec::new(),
            off_beyond_loopback: false,
        }
    }
}

impl AuthSettings {
    /// Every problem, each naming the setting and how to fix it.
    pub fn validate(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.mode == AuthMode::Required {
            if self.jwks_file.is_none() && self.jwks_url.is_none() && self.certificates.is_empty() {
                out.push("auth.mode is required but none of auth.jwks_file, auth.jwks_url and auth.certificates is set: give the issuer's JWKS (a file or its https:// URL) or map client certificates".into());
            }
            if self.jwks_file.is_some() || self.jwks_url.is_some() {
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
        if self.jwks_file.is_some() && self.jwks_url.is_some() {
            out.push(
                "auth.jwks_file and auth.jwks_url are both set: give the issuer's keys one way"
                    .into(),
            );
        }
        if let Some(url) = &self.jwks_url {
            let rest = url.strip_prefix("https://").unwrap_or_default();
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if host.is_empty() || url.chars().any(char::is_whitespace) {
                out.push(format!(
                    "auth.jwks_url {url:?} is not an https:// URL: give the issuer's JWKS URL (e.g. https://login.example.com/.well-known/jwks.json); keys fetched in the clear could be swapped on the way"
                ));
            }
        }
        if self.jwks_ca_file.is_some() && self.jwks_url.is_none() {
            out.push("auth.jwks_ca_file is set without auth.jwks_url: it only says whom to trust for the JWKS URL".into());
        }
        if !(10..=86_400).contains(&self.jwks_refresh_seconds) {
            out.push(format!(
                "auth.jwks_refresh_seconds = {} is outside 10..=86400: fetch the issuer's keys again between every 10 s and once a day",
                self.jwks_refresh_seconds
            ));
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
