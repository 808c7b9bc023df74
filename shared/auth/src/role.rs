//! Roles and the one table of which role each RPC needs.

use std::fmt;
use std::str::FromStr;

/// What a principal may do for a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Opens cases, records interactions and feedback, withdraws, reads.
    Agent,
    /// Polls, completes, fails and heartbeats external tasks.
    Worker,
    /// Lists and completes manual steps.
    Specialist,
    /// Decides compensations; lists recoveries and approvals.
    Supervisor,
    /// Reads the ledger: history, replay, verify, export.
    Auditor,
    /// Subscribes to the event stream.
    Integrator,
    /// Everything (for one tenant, or for all with `*`), parked cases.
    Admin,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 7] = [
        Role::Agent,
        Role::Worker,
        Role::Specialist,
        Role::Supervisor,
        Role::Auditor,
        Role::Integrator,
        Role::Admin,
    ];

    /// Its name in tokens and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Worker => "worker",
            Role::Specialist => "specialist",
            Role::Supervisor => "supervisor",
            Role::Auditor => "auditor",
            Role::Integrator => "integrator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown role {s:?}; the roles are {}", names.join(", "))
            })
    }
}

/// The role an RPC needs, by its full gRPC path
/// (`/casework.intake.v1.Intake/OpenCase`); `None` for a method that is
/// not Casework's (health and reflection stay open) — and an unknown
/// method of a Casework service needs `admin`, so a new RPC is closed
/// until it is given a row here.
pub fn required_role(path: &str) -> Option<Role> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    if !service.starts_with("casework.") {
        return None;
    }
    use Role::*;
    let role = match (service, method) {
        (
            "casework.intake.v1.Intake",
            "OpenCase" | "RecordInteraction" | "SubmitFeedback" | "WithdrawCase" | "GetCase"
            | "ListCases",
        ) => Agent,
        (
            "casework.fulfilment.v1.Fulfilment",
            "PollTasks" | "CompleteTask" | "FailTask" | "Heartbeat",
        ) => Worker,
        ("casework.fulfilment.v1.Fulfilment", "ListManualTasks" | "CompleteManualStep") => {
            Specialist
        }
        (
            "casework.recovery.v1.Recovery",
            "ListOpenRecoveries"
            | "ListPendingApprovals"
            | "ApproveCompensation"
            | "DeclineCompensation"
            | "GetCaseRecoveries",
        ) => Supervisor,
        (
            "casework.ledger.v1.Ledger",
            "GetHistory"
            | "GetCase"
            | "ReplayCase"
            | "VerifyCase"
            | "VerifyAll"
            | "ExportCase"
            | "GetCheckpoint"
            | "GetInclusionProof"
            | "GetConsistencyProof",
        ) => Auditor,
        ("casework.ledger.v1.Ledger", "Subscribe") => Integrator,
        // ListParkedCases, intake's EraseCustomer (the right to erasure is
        // an admin's act), and whatever has no row yet.
        _ => Admin,
    };
    Some(role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_an_unknown_one_names_the_list() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        let err = "cfo".parse::<Role>().unwrap_err();
        assert!(err.contains("agent, worker"), "{err}");
    }

    #[test]
    fn health_and_reflection_stay_open_and_unknown_casework_methods_need_admin() {
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_role("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            required_role("/casework.intake.v1.Intake/OpenCase"),
            Some(Role::Agent)
        );
        assert_eq!(
            required_role("/casework.recovery.v1.Recovery/ApproveCompensation"),
            Some(Role::Supervisor)
        );
        assert_eq!(
            required_role("/casework.intake.v1.Intake/SomethingNew"),
            Some(Role::Admin)
        );
    }

    #[test]
    fn every_rpc_of_every_service_has_its_row() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(casework_proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes");
        let mut seen = 0;
        for file in &set.file {
            for svc in &file.service {
                for m in &svc.method {
                    let path = format!("/{}.{}/{}", file.package(), svc.name(), m.name());
                    let role = required_role(&path).expect("a Casework method");
                    let admin_only = ["ListParkedCases", "EraseCustomer"].contains(&m.name());
                    assert_eq!(
                        role == Role::Admin,
                        admin_only,
                        "{path} needs {role}: give it its row in required_role"
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen >= 25, "only {seen} methods found");
    }
}
