//! A development issuer: an Ed25519 signing key and its JWKS, kept under a
//! data directory, that mints tokens for local use (`casectl dev`,
//! `casectl token`, tests). Never a production identity provider: it has
//! no users, only what it is told to sign.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;

use crate::{AuthMode, AuthSettings, Role};

/// The issuer name development tokens carry.
pub const DEV_ISSUER: &str = "casework-dev";
/// The audience development tokens are for.
pub const DEV_AUDIENCE: &str = "casework";

const KEY_FILE: &str = "dev-signing-key.pem";
const JWKS_FILE: &str = "dev-jwks.json";

/// A development signing key.
pub struct DevIssuer {
    key_pem: String,
    public: Vec<u8>,
    kid: String,
    dir: PathBuf,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is never printed.
        f.debug_struct("DevIssuer")
            .field("kid", &self.kid)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl DevIssuer {
    /// The issuer whose key is in `dir` (created, with its JWKS, when
    /// there is none; the key file is readable by its owner only).
    pub fn load_or_create(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let key_path = dir.join(KEY_FILE);
        let key_pem = match std::fs::read_to_string(&key_path) {
            Ok(pem) => pem,
            Err(_) => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                    .map_err(|e| format!("cannot generate a signing key: {e}"))?;
                let pem = key.serialize_pem();
                write_private(&key_path, &pem)?;
                pem
            }
        };
        let key = rcgen::KeyPair::from_pem(&key_pem)
            .map_err(|e| format!("{} is not a signing key: {e}", key_path.display()))?;
        let public = key.public_key_raw().to_vec();
        let kid = hex_prefix(&public);
        let issuer = Self {
            key_pem,
            public,
            kid,
            dir: dir.to_owned(),
        };
        std::fs::write(issuer.jwks_path(), issuer.jwks().to_string())
            .map_err(|e| format!("cannot write {}: {e}", issuer.jwks_path().display()))?;
        Ok(issuer)
    }

    /// Where its JWKS is.
    pub fn jwks_path(&self) -> PathBuf {
        self.dir.join(JWKS_FILE)
    }

    /// Its public key as a JWKS.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
            "kid": self.kid, "x": b64(&self.public),
        }]})
    }

    /// The `auth` settings of a service that trusts this issuer.
    pub fn settings(&self) -> AuthSettings {
        AuthSettings {
            mode: AuthMode::Required,
            jwks_file: Some(self.jwks_path()),
            issuer: Some(DEV_ISSUER.into()),
            audience: Some(DEV_AUDIENCE.into()),
            ..Default::default()
        }
    }

    /// A token for `subject` (display `name`) holding `roles` in each of
    /// `tenants` (`*`: all), valid for `ttl`.
    pub fn mint(
        &self,
        subject: &str,
        name: Option<&str>,
        tenants: &[&str],
        roles: &[Role],
        ttl: Duration,
    ) -> Result<String, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let mut claims = serde_json::json!({
            "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": subject,
            "iat": now, "nbf": now, "exp": now + ttl.as_secs(),
            "casework/tenants": tenants,
            "casework/roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        });
        if let Some(n) = name {
            claims["name"] = n.into();
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let key = jsonwebtoken::EncodingKey::from_ed_pem(self.key_pem.as_bytes())
            .map_err(|e| format!("the signing key is unusable: {e}"))?;
        jsonwebtoken::encode(&header, &claims, &key).map_err(|e| e.to_string())
    }
}

/// Adds a bearer token to every call of a client
/// (`XClient::with_interceptor(channel, BearerToken::new(token))`).
#[derive(Debug, Clone)]
pub struct BearerToken(Option<tonic::metadata::AsciiMetadataValue>);

impl BearerToken {
    /// The interceptor sending `token` (none when it cannot be a header).
    pub fn new(token: &str) -> Self {
        Self::try_new(token).unwrap_or(Self(None))
    }

    /// The interceptor sending `token`, or `None` when the token holds
    /// characters a header cannot carry.
    pub fn try_new(token: &str) -> Option<Self> {
        format!("Bearer {token}")
            .parse()
            .ok()
            .map(|v| Self(Some(v)))
    }

    /// An interceptor that sends no credentials.
    pub fn anonymous() -> Self {
        Self(None)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel whose calls carry a bearer token.
pub type WithToken =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>;

/// `msg` as a call carrying `token` as its bearer credential (for tests
/// and tools that talk to a service directly).
pub fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    match format!("Bearer {token}").parse() {
        Ok(v) => {
            r.metadata_mut().insert("authorization", v);
        }
        Err(_) => tracing::warn!("a token with characters a header cannot carry was not sent"),
    }
    r
}

fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect()
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dev_token_verifies_with_the_dev_jwks_and_the_key_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let a = DevIssuer::load_or_create(dir.path()).unwrap();
        let t = a
            .mint(
                "sam",
                Some("Sam Supervisor"),
                &["acme"],
                &[Role::Supervisor],
                Duration::from_secs(60),
            )
            .unwrap();
        let v = crate::Verifier::new(a.settings()).unwrap();
        let p = v.verify_token(&t).unwrap();
        assert_eq!(p.subject, "sam");
        assert!(p.may(Role::Supervisor, "acme") && !p.may(Role::Supervisor, "beta"));
        let b = DevIssuer::load_or_create(dir.path()).unwrap();
        assert_eq!(a.jwks(), b.jwks(), "the same key after a reload");
        assert!(!format!("{b:?}").contains("PRIVATE"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the key is its owner's only");
        }
    }
}
