//! Task tokens: the opaque string a worker or person passes back to
//! complete, fail or heartbeat a task. It names tenant, case, run, step and
//! attempt — `ft1.<tenant>.<case_id>.<run>.<step_index>.<attempt>` — and
//! carries no authority: every use is validated against the case's log
//! (the attempt must still be running), so a forged or stale token can at
//! worst be refused. Clients must treat it as opaque; the `ft1` prefix
//! versions the format.

use casework_caselog::CaseKey;

use crate::workflow::AttemptRef;

/// A parsed task token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskToken {
    /// The case.
    pub case: CaseKey,
    /// The attempt.
    pub attempt: AttemptRef,
}

const PREFIX: &str = "ft1";

impl TaskToken {
    /// The token of `attempt` of `case`.
    pub fn new(case: CaseKey, attempt: AttemptRef) -> Self {
        Self { case, attempt }
    }

    /// Encodes the token.
    pub fn encode(&self) -> String {
        format!(
            "{PREFIX}.{}.{}.{}.{}.{}",
            self.case.tenant,
            self.case.case_id,
            self.attempt.run,
            self.attempt.step_index,
            self.attempt.attempt
        )
    }

    /// Parses a token; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "token {:?} is not a task token ({why}); pass the token exactly as PollTasks or ListManualTasks returned it",
                text.chars().take(80).collect::<String>()
            )
        };
        if text.is_empty() {
            return Err(
                "token is required: pass the token PollTasks or ListManualTasks returned"
                    .to_owned(),
            );
        }
        let parts: Vec<&str> = text.split('.').collect();
        let [prefix, tenant, case_id, run, step, attempt] = parts.as_slice() else {
            return Err(bad("wrong number of parts"));
        };
        if *prefix != PREFIX {
            return Err(bad("unknown format"));
        }
        let case = CaseKey::parse(tenant, case_id).map_err(|e| bad(&e.to_string()))?;
        let num = |s: &str, what: &str| {
            s.parse::<u32>()
                .map_err(|_| bad(&format!("{what} is not a number")))
        };
        let attempt = AttemptRef {
            run: num(run, "run")?,
            step_index: num(step, "step")?,
            attempt: num(attempt, "attempt")?,
        };
        if attempt.run == 0 || attempt.attempt == 0 {
            return Err(bad("run and attempt start at 1"));
        }
        Ok(Self { case, attempt })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let case = CaseKey::parse("acme", "01JD8X3V5R6M2Q4T7W9Y0Z1A2B").unwrap();
        let t = TaskToken::new(
            case,
            AttemptRef {
                run: 2,
                step_index: 1,
                attempt: 3,
            },
        );
        let s = t.encode();
        assert_eq!(s, "ft1.acme.01JD8X3V5R6M2Q4T7W9Y0Z1A2B.2.1.3");
        assert_eq!(TaskToken::parse(&s).unwrap(), t);
        for bad in [
            "",
            "x",
            "ft2.acme.01JD8X3V5R6M2Q4T7W9Y0Z1A2B.2.1.3",
            "ft1.ACME.01JD8X3V5R6M2Q4T7W9Y0Z1A2B.2.1.3",
            "ft1.acme.notacase.2.1.3",
            "ft1.acme.01JD8X3V5R6M2Q4T7W9Y0Z1A2B.two.1.3",
            "ft1.acme.01JD8X3V5R6M2Q4T7W9Y0Z1A2B.0.1.3",
            "ft1.acme.01JD8X3V5R6M2Q4T7W9Y0Z1A2B.1.1.3.4",
        ] {
            let e = TaskToken::parse(bad).unwrap_err();
            assert!(e.contains("token"), "{bad}: {e}");
        }
    }
}
