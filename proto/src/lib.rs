//! `casework-proto` owns Casework's wire contract: the event envelope and
//! every event payload (`casework.events.v1`), and the gRPC services of the
//! four services, generated at build time from the `.proto` files beside this
//! crate (with protox, so no system `protoc` is needed). It must stay free of
//! logic: no validation, no I/O, no domain rules — those live in
//! `casework-domain` and the services. Generated code is never committed.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// Casework events, version 1: the envelope stored in the per-case logs and
/// one payload per event type.
pub mod events {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/casework.events.v1.rs"));
    }
}

/// The front stage's gRPC API.
pub mod intake {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/casework.intake.v1.rs"));
    }
}

/// The back stage's gRPC API (external workers, manual steps).
pub mod fulfilment {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/casework.fulfilment.v1.rs"));
    }
}

/// Service recovery's gRPC API (approvals, open recoveries).
pub mod recovery {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/casework.recovery.v1.rs"));
    }
}

/// The ledger's gRPC API (history, replay, verify, export, subscribe).
pub mod ledger {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/casework.ledger.v1.rs"));
    }
}

/// The encoded `FileDescriptorSet` of every Casework `.proto` file, for gRPC
/// reflection and for tools that decode events without our code.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/casework_descriptor.bin"));
