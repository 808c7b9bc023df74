//! Validated tokens: tenants, case ids and event ids. Every token that ends
//! up in a NATS subject is checked here first, so nothing invalid ever
//! reaches the broker.

use std::fmt;

use sha2::{Digest, Sha256};
use ulid::Ulid;

use crate::{Error, Result};

const CROCKFORD: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn clip(value: &str) -> String {
    value.chars().take(80).collect()
}

/// A tenant: 1 to 32 characters, lowercase ASCII letters, digits and `-`,
/// starting with a letter (e.g. `acme`, `globex-uk`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(String);

impl Tenant {
    /// Longest tenant accepted.
    pub const MAX_LEN: usize = 32;

    /// Checks `value` and wraps it.
    pub fn parse(value: &str) -> Result<Self> {
        let bad = |why: &str| Error::InvalidToken {
            what: "tenant",
            value: clip(value),
            why: why.to_owned(),
        };
        if value.is_empty() {
            return Err(bad(
                "it is empty; give the tenant's short name, e.g. \"acme\"",
            ));
        }
        if value.len() > Self::MAX_LEN {
            return Err(bad("it is longer than 32 characters"));
        }
        if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(bad("it must start with a lowercase letter a-z"));
        }
        if let Some(c) = value
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(bad(&format!(
                "character {c:?} is not allowed; use lowercase letters, digits and '-'"
            )));
        }
        Ok(Self(value.to_owned()))
    }

    /// The tenant as written in subjects.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a 26-character Crockford base32 id (the ULID text form): uppercase
/// `0-9A-Z` without `I`, `L`, `O`, `U`, first character `0`-`7`. Lowercase
/// input is accepted and canonicalised to uppercase.
fn parse_crockford(what: &'static str, value: &str) -> Result<String> {
    let bad = |why: String| Error::InvalidToken {
        what,
        value: clip(value),
        why,
    };
    let upper = value.to_ascii_uppercase();
    if upper.len() != 26 {
        return Err(bad(format!(
            "it has {} characters; a {what} is 26 Crockford base32 characters, e.g. 01JD8X3V5R6M2Q4T7W9Y0Z1A2B",
            value.chars().count()
        )));
    }
    if let Some(c) = upper.chars().find(|c| !CROCKFORD.contains(*c)) {
        return Err(bad(format!(
            "character {c:?} is not Crockford base32 (0-9 and A-Z without I, L, O, U)"
        )));
    }
    if upper.as_bytes()[0] > b'7' {
        return Err(bad(
            "the first character must be 0-7 (the id is 128 bits)".to_owned()
        ));
    }
    Ok(upper)
}

fn derive_ulid(domain: &str, parts: &[&str]) -> Ulid {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    for p in parts {
        // Length-prefix every part so ("ab","c") and ("a","bc") differ.
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Ulid::from_bytes(bytes)
}

/// A case id: a ULID for a case opened without an idempotency key, or derived
/// from tenant + key when one is given (so a retry finds the same case).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaseId(String);

impl CaseId {
    /// Checks `value` (26 Crockford base32 characters) and wraps it.
    pub fn parse(value: &str) -> Result<Self> {
        parse_crockford("case id", value).map(Self)
    }

    /// A case id for a freshly generated ULID (the caller owns clock and
    /// randomness).
    pub fn from_ulid(ulid: Ulid) -> Self {
        Self(ulid.to_string())
    }

    /// The case id for `tenant` + the client's idempotency key: the same pair
    /// always gives the same case, however much later it is retried.
    pub fn derive(tenant: &Tenant, idempotency_key: &str) -> Self {
        Self::from_ulid(derive_ulid(
            "casework/case-id/v1",
            &[tenant.as_str(), idempotency_key],
        ))
    }

    /// The id as written in subjects.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event id, derived deterministically from the event's cause, so the same
/// decision taken twice produces the same ids (and JetStream deduplicates it
/// through `Nats-Msg-Id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

impl EventId {
    /// Checks `value` and wraps it.
    pub fn parse(value: &str) -> Result<Self> {
        parse_crockford("event id", value).map(Self)
    }

    /// The id of an event of `case` caused by `cause` (usually the causing
    /// event's id, or a request id) and distinguished by `key` (what was
    /// decided, e.g. `"step_started/1/0/2"`).
    pub fn derive(case: &CaseId, cause: &str, key: &str) -> Self {
        Self(derive_ulid("casework/event-id/v1", &[case.as_str(), cause, key]).to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants() {
        for ok in ["acme", "a", "globex-uk", "t1"] {
            assert!(Tenant::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Acme",
            "1acme",
            "ac.me",
            "ac me",
            "a*",
            "a>",
            "acme_",
            &"a".repeat(33),
        ] {
            assert!(
                matches!(
                    Tenant::parse(bad),
                    Err(Error::InvalidToken { what: "tenant", .. })
                ),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn case_ids() {
        let id = CaseId::from_ulid(Ulid::from_parts(1_700_000_000_000, 42));
        assert_eq!(CaseId::parse(id.as_str()).unwrap(), id);
        assert_eq!(CaseId::parse(&id.as_str().to_lowercase()).unwrap(), id);
        for bad in [
            "",
            "01JD8X3V5R6M2Q4T7W9Y0Z1A2",   // 25
            "01JD8X3V5R6M2Q4T7W9Y0Z1A2BC", // 27
            "01JD8X3V5R6M2Q4T7W9Y0Z1A2I",  // I
            "81JD8X3V5R6M2Q4T7W9Y0Z1A2B",  // overflow
            "01JD8X3V5R6M2Q4T7W9Y0Z1A.B",
        ] {
            assert!(CaseId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let t = Tenant::parse("acme").unwrap();
        let a = CaseId::derive(&t, "order-1");
        assert_eq!(a, CaseId::derive(&t, "order-1"));
        assert_ne!(a, CaseId::derive(&t, "order-2"));
        assert_ne!(
            a,
            CaseId::derive(&Tenant::parse("acme2").unwrap(), "order-1")
        );
        assert!(CaseId::parse(a.as_str()).is_ok());
        let e = EventId::derive(&a, "cause", "k");
        assert_eq!(e, EventId::derive(&a, "cause", "k"));
        assert_ne!(e, EventId::derive(&a, "caus", "ek"));
        assert!(EventId::parse(e.as_str()).is_ok());
    }
}
