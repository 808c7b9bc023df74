//! Tokens and certificates to principals.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::{AuthMethod, AuthSettings, Principal, Refusal, Role};

/// Signature algorithms accepted (asymmetric only: a shared secret or
/// `none` is never a proof of identity here).
const ACCEPTED: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The JWKS file is read again on an unknown key id at most this often
/// (an issuer rotating keys publishes the new one before using it).
pub const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(5);

/// Verifies bearer tokens and maps client certificates, per
/// [`AuthSettings`].
#[derive(Debug)]
pub struct Verifier {
    settings: AuthSettings,
    keys: RwLock<(JwkSet, Instant)>,
}

fn read_jwks(path: &PathBuf) -> Result<JwkSet, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read auth.jwks_file {}: {e}", path.display()))?;
    parse_jwks(&text, &format!("auth.jwks_file {}", path.display()))
}

/// A JWKS from its JSON text, read from `origin` (named in errors): a JSON
/// object with `"keys"`, at least one, each usable to verify a signature.
pub fn parse_jwks(text: &str, origin: &str) -> Result<JwkSet, String> {
    let set: JwkSet = serde_json::from_str(text)
        .map_err(|e| format!("{origin} is not a JWKS (a JSON object with \"keys\"): {e}"))?;
    if set.keys.is_empty() {
        return Err(format!("{origin} holds no keys"));
    }
    for (i, k) in set.keys.iter().enumerate() {
        DecodingKey::from_jwk(k).map_err(|e| {
            format!(
                "{origin}: key {i} ({}) is unusable: {e}",
                k.common.key_id.as_deref().unwrap_or("no kid")
            )
        })?;
    }
    Ok(set)
}

impl Verifier {
    /// A verifier for `settings` (reads the JWKS file now: a missing or
    /// unreadable file is an error at start, not at the first call).
    pub fn new(settings: AuthSettings) -> Result<Self, String> {
        let keys = match &settings.jwks_file {
            Some(p) => read_jwks(p)?,
            None => JwkSet { keys: Vec::new() },
        };
        Ok(Self {
            settings,
            keys: RwLock::new((keys, Instant::now())),
        })
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// Replaces the issuer's keys (fetched from `auth.jwks_url` by whoever
    /// does the I/O).
    pub fn replace_keys(&self, keys: JwkSet) {
        *self.keys.write().expect("jwks") = (keys, Instant::now());
    }

    /// How many keys it holds now.
    pub fn key_count(&self) -> usize {
        self.keys.read().expect("jwks").0.keys.len()
    }

    /// False only for a bearer token in `header` whose key (its `kid`, or
    /// the one key when it names none) is not among the keys held: the
    /// moment to fetch the issuer's keys again before verifying it.
    pub fn knows_key_of(&self, header: Option<&str>) -> bool {
        let Some(token) = header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        }) else {
            return true;
        };
        let Ok(h) = jsonwebtoken::decode_header(token.trim()) else {
            return true;
        };
        let g = self.keys.read().expect("jwks");
        match h.kid.as_deref() {
            Some(k) => g.0.find(k).is_some(),
            None => g.0.keys.len() == 1,
        }
    }

    fn key_for(&self, kid: Option<&str>) -> Result<(DecodingKey, Option<Algorithm>), Refusal> {
        let find = |set: &JwkSet| -> Option<jsonwebtoken::jwk::Jwk> {
            match kid {
                Some(k) => set.find(k).cloned(),
                None if set.keys.len() == 1 => set.keys.first().cloned(),
                None => None,
            }
        };
        let mut jwk = find(&self.keys.read().expect("jwks").0);
        if jwk.is_none()
            && let Some(path) = &self.settings.jwks_file
        {
            let mut g = self.keys.write().expect("jwks");
            if g.1.elapsed() >= RELOAD_AT_MOST_EVERY
                && let Ok(fresh) = read_jwks(path)
            {
                *g = (fresh, Instant::now());
            }
            jwk = find(&g.0);
        }
        let jwk = jwk.ok_or_else(|| {
            Refusal::Unauthenticated(match kid {
                Some(k) => format!(
                    "the token is signed with key {k:?}, which the issuer's JWKS does not hold"
                ),
                None => "the token names no key (kid) and the JWKS holds several".into(),
            })
        })?;
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| Refusal::Unauthenticated(format!("the JWKS key is unusable: {e}")))?;
        Ok((key, alg))
    }

    /// The principal a bearer token proves, or why it proves nothing.
    pub fn verify_token(&self, token: &str) -> Result<Principal, Refusal> {
        let bad = |why: String| Refusal::Unauthenticated(why);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| bad(format!("the bearer token is not a JWT: {e}")))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(bad(format!(
                "tokens signed with {:?} are not accepted: use RS256, ES256 or EdDSA",
                header.alg
            )));
        }
        let (key, key_alg) = self.key_for(header.kid.as_deref())?;
        if key_alg.is_some_and(|a| a != header.alg) {
            return Err(bad(format!(
                "the token says {:?} but its key is for {:?}",
                header.alg,
                key_alg.expect("some")
            )));
        }
        let mut v = Validation::new(header.alg);
        v.leeway = self.settings.leeway_seconds;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        if let Some(iss) = &self.settings.issuer {
            v.set_issuer(&[iss]);
        }
        if let Some(aud) = &self.settings.audience {
            v.set_audience(&[aud]);
        }
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &v)
                .map_err(|e| {
                    use jsonwebtoken::errors::ErrorKind as K;
                    bad(match e.kind() {
                        K::ExpiredSignature => "the token has expired: get a new one".into(),
                        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
                        K::InvalidIssuer => format!(
                            "the token's issuer is not {:?}",
                            self.settings.issuer.as_deref().unwrap_or_default()
                        ),
                        K::InvalidAudience => format!(
                            "the token is not for audience {:?}",
                            self.settings.audience.as_deref().unwrap_or_default()
                        ),
                        K::InvalidSignature => {
                            "the token's signature does not verify with the issuer's key".into()
                        }
                        K::MissingRequiredClaim(c) => format!("the token has no {c:?} claim"),
                        _ => format!("the token is invalid: {e}"),
                    })
                })?;
        let claims = data.claims;
        let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let subject = text("sub")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("the token's sub is empty".into()))?;
        let grants = grants_of(
            claims.get(&self.settings.tenants_claim),
            claims.get(&self.settings.roles_claim),
        )
        .map_err(|e| bad(format!("the token's roles are unusable: {e}")))?;
        Ok(Principal {
            subject,
            name: text("name"),
            email: text("email"),
            method: AuthMethod::Token {
                issuer: text("iss").unwrap_or_default(),
            },
            grants,
        })
    }

    /// The principal a client certificate maps to: the first configured
    /// mapping whose identity is one of the certificate's `identities`
    /// (URI SANs, DNS SANs, the CN).
    pub fn map_certificate(&self, identities: &[String]) -> Result<Principal, Refusal> {
        let m = self
            .settings
            .certificates
            .iter()
            .find(|m| identities.contains(&m.identity))
            .ok_or_else(|| {
                Refusal::Unauthenticated(format!(
                    "the client certificate ({}) is not mapped to a principal in auth.certificates",
                    identities.join(", ")
                ))
            })?;
        let roles: BTreeSet<Role> = m.roles.iter().filter_map(|r| r.parse().ok()).collect();
        Ok(Principal {
            subject: m.subject.clone(),
            name: None,
            email: None,
            method: AuthMethod::Certificate {
                identity: m.identity.clone(),
            },
            grants: m
                .tenants
                .iter()
                .map(|t| (t.clone(), roles.clone()))
                .collect(),
        })
    }

    /// The principal of a call with `authorization` metadata `header`
    /// (when sent) and a verified client certificate's `identities` (empty
    /// without one). A token wins over a certificate; neither is
    /// UNAUTHENTICATED.
    pub fn authenticate(
        &self,
        header: Option<&str>,
        identities: &[String],
    ) -> Result<Principal, Refusal> {
        if let Some(h) = header {
            let token = h
                .strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
                .ok_or_else(|| {
                    Refusal::Unauthenticated(
                        "the authorization metadata is not \"Bearer <token>\"".into(),
                    )
                })?;
            return self.verify_token(token.trim());
        }
        if !identities.is_empty() {
            return self.map_certificate(identities);
        }
        Err(Refusal::Unauthenticated(
            "no credentials: send \"authorization: Bearer <token>\" (or a mapped client certificate)"
                .into(),
        ))
    }
}

/// Roles per tenant from the two claims.
fn grants_of(
    tenants: Option<&serde_json::Value>,
    roles: Option<&serde_json::Value>,
) -> Result<BTreeMap<String, BTreeSet<Role>>, String> {
    let parse_roles = |v: &serde_json::Value| -> Result<BTreeSet<Role>, String> {
        v.as_array()
            .ok_or("roles must be an array of names")?
            .iter()
            .map(|r| r.as_str().ok_or("a role must be a string")?.parse::<Role>())
            .collect()
    };
    let check_tenant = |t: &str| -> Result<String, String> {
        if t == "*" {
            return Ok(t.to_owned());
        }
        casework_domain::Tenant::parse(t)
            .map(|t| t.to_string())
            .map_err(|e| e.to_string())
    };
    let mut out = BTreeMap::new();
    match roles {
        None => {}
        Some(serde_json::Value::Object(per_tenant)) => {
            for (t, r) in per_tenant {
                out.insert(check_tenant(t)?, parse_roles(r)?);
            }
        }
        Some(list) => {
            let roles = parse_roles(list)?;
            let tenants = tenants
                .and_then(|v| v.as_array())
                .ok_or("a list of roles needs the tenants claim (an array of tenants)")?;
            for t in tenants {
                let t = t.as_str().ok_or("a tenant must be a string")?;
                out.insert(check_tenant(t)?, roles.clone());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};

    /// An issuer with an ES256 and an EdDSA key, its JWKS on disk.
    struct Issuer {
        es: EncodingKey,
        ed: EncodingKey,
        jwks: serde_json::Value,
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    fn issuer() -> Issuer {
        let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let point = es.public_key_raw();
        let jwks = serde_json::json!({ "keys": [
            { "kty": "EC", "crv": "P-256", "kid": "es", "alg": "ES256", "use": "sig",
              "x": b64(&point[1..33]), "y": b64(&point[33..65]) },
            { "kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "EdDSA", "use": "sig",
              "x": b64(ed.public_key_raw()) },
        ]});
        Issuer {
            es: EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).unwrap(),
            ed: EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
            jwks,
        }
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut c = serde_json::json!({
            "iss": "https://idp.example", "aud": "casework", "sub": "u-42",
            "name": "Ada Agent", "exp": now() + 600, "nbf": now() - 10,
            "casework/tenants": ["acme"], "casework/roles": ["agent"],
        });
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    }

    fn sign(key: &EncodingKey, alg: Algorithm, kid: &str, c: &serde_json::Value) -> String {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, c, key).unwrap()
    }

    fn verifier(jwks: &serde_json::Value, dir: &std::path::Path) -> Verifier {
        let path = dir.join("jwks.json");
        std::fs::write(&path, jwks.to_string()).unwrap();
        Verifier::new(AuthSettings {
            mode: crate::AuthMode::Required,
            jwks_file: Some(path),
            issuer: Some("https://idp.example".into()),
            audience: Some("casework".into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn refusal(v: &Verifier, token: &str) -> String {
        match v.authenticate(Some(&format!("Bearer {token}")), &[]) {
            Err(Refusal::Unauthenticated(why)) => why,
            other => panic!("expected UNAUTHENTICATED, got {other:?}"),
        }
    }

    #[test]
    fn es256_and_eddsa_tokens_prove_their_subject_and_roles() {
        let dir = tempfile::tempdir().unwrap();
        let iss = issuer();
        let v = verifier(&iss.jwks, dir.path());
        for (key, alg, kid) in [
            (&iss.es, Algorithm::ES256, "es"),
            (&iss.ed, Algorithm::EdDSA, "ed"),
        ] {
            let t = sign(key, alg, kid, &claims(serde_json::json!({})));
            let p = v.authenticate(Some(&format!("Bearer {t}")), &[]).unwrap();
            assert_eq!(p.subject, "u-42");
            assert_eq!(p.name.as_deref(), Some("Ada Agent"));
            assert_eq!(p.method.describe(), "oidc:https://idp.example");
            assert!(p.may(Role::Agent, "acme"));
            assert!(!p.may(Role::Agent, "victim-corp"));
            assert!(!p.may(Role::Supervisor, "acme"));
        }
        // Roles per tenant as an object.
        let t = sign(
            &iss.es,
            Algorithm::ES256,
            "es",
            &claims(
                serde_json::json!({ "casework/roles": { "acme": ["supervisor"], "*": ["auditor"] } }),
            ),
        );
        let p = v.verify_token(&t).unwrap();
        assert!(p.may(Role::Supervisor, "acme") && !p.may(Role::Supervisor, "beta"));
        assert!(p.may(Role::Auditor, "beta"));
    }

    #[test]
    fn expired_early_foreign_and_misaddressed_tokens_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let iss = issuer();
        let v = verifier(&iss.jwks, dir.path());
        let es = |extra| sign(&iss.es, Algorithm::ES256, "es", &claims(extra));
        let why = refusal(&v, &es(serde_json::json!({ "exp": now() - 3600 })));
        assert!(why.contains("expired"), "{why}");
        let why = refusal(&v, &es(serde_json::json!({ "nbf": now() + 3600 })));
        assert!(why.contains("not valid yet"), "{why}");
        let why = refusal(&v, &es(serde_json::json!({ "iss": "https://evil" })));
        assert!(why.contains("issuer"), "{why}");
        let why = refusal(&v, &es(serde_json::json!({ "aud": "someone-else" })));
        assert!(why.contains("audience"), "{why}");
        // Within the leeway, a token that just expired still counts.
        assert!(
            v.verify_token(&es(serde_json::json!({ "exp": now() - 5 })))
                .is_ok()
        );
        // Signed by another key under a known kid.
        let other = issuer();
        let t = sign(
            &other.es,
            Algorithm::ES256,
            "es",
            &claims(serde_json::json!({})),
        );
        assert!(refusal(&v, &t).contains("signature"), "forged");
        // An unknown kid; a bad role; no credentials; not a bearer.
        let t = sign(
            &other.es,
            Algorithm::ES256,
            "nope",
            &claims(serde_json::json!({})),
        );
        assert!(refusal(&v, &t).contains("\"nope\""));
        let why = refusal(&v, &es(serde_json::json!({ "casework/roles": ["cfo"] })));
        assert!(why.contains("unknown role"), "{why}");
        assert!(matches!(
            v.authenticate(None, &[]),
            Err(Refusal::Unauthenticated(w)) if w.contains("no credentials")
        ));
        assert!(matches!(
            v.authenticate(Some("Basic dXNlcjpwdw=="), &[]),
            Err(Refusal::Unauthenticated(_))
        ));
        // A symmetric token is never accepted, whatever it claims.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(serde_json::json!({})),
            &EncodingKey::from_secret(b"guess").unwrap(),
        )
        .unwrap();
        assert!(refusal(&v, &hs).contains("not accepted"));
    }

    #[test]
    fn a_rotated_key_is_found_by_reading_the_jwks_again() {
        let dir = tempfile::tempdir().unwrap();
        let old = issuer();
        let v = verifier(&old.jwks, dir.path());
        let new = issuer();
        let mut jwks = new.jwks.clone();
        jwks["keys"][0]["kid"] = "es-2".into();
        std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
        // Backdate the last read so the reload is allowed now.
        v.keys.write().unwrap().1 = Instant::now() - RELOAD_AT_MOST_EVERY;
        let t = sign(
            &new.es,
            Algorithm::ES256,
            "es-2",
            &claims(serde_json::json!({})),
        );
        assert_eq!(v.verify_token(&t).unwrap().subject, "u-42");
    }

    #[test]
    fn a_mapped_certificate_is_its_principal_and_an_unmapped_one_is_no_one() {
        let v = Verifier::new(AuthSettings {
            mode: crate::AuthMode::Required,
            certificates: vec![crate::CertificateMapping {
                identity: "spiffe://corp/ns/ops/sa/worker".into(),
                subject: "worker-a".into(),
                tenants: vec!["acme".into()],
                roles: vec!["worker".into()],
            }],
            ..Default::default()
        })
        .unwrap();
        let p = v
            .authenticate(None, &["spiffe://corp/ns/ops/sa/worker".into()])
            .unwrap();
        assert_eq!(p.subject, "worker-a");
        assert!(p.may(Role::Worker, "acme") && !p.may(Role::Worker, "beta"));
        assert_eq!(p.method.describe(), "mtls:spiffe://corp/ns/ops/sa/worker");
        assert!(v.authenticate(None, &["dns:other".into()]).is_err());
    }
}
