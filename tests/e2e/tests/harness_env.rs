//! The harness starts services with their own variables only: a variable
//! of the developer's shell or of the harness itself (`CASEWORK_BIN_DIR`)
//! would otherwise reach a service, which refuses every unknown
//! `CASEWORK_*` variable as a mistyped setting.

use std::collections::BTreeMap;
use std::path::Path;

use casework_e2e::{PASSED_THROUGH, service_command};

#[test]
fn a_service_sees_only_its_own_variables() {
    // `cargo test` gives this process variables of its own
    // (CARGO_MANIFEST_DIR, …), as a shell or CI gives CASEWORK_NATS_SERVER:
    // none of them may reach a service.
    let ours: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| !PASSED_THROUGH.contains(&k.as_str()))
        .collect();
    assert!(
        ours.iter().any(|k| k == "CARGO_MANIFEST_DIR"),
        "the test process has variables to leak: {ours:?}"
    );
    let env = BTreeMap::from([("CASEWORK_DATA_DIR".to_owned(), "/data".to_owned())]);
    let out = service_command(Path::new("/usr/bin/env"), &env)
        .output()
        .expect("run env");
    assert!(out.status.success());
    let seen = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    assert!(names.contains(&"CASEWORK_DATA_DIR"), "{seen}");
    assert!(names.contains(&"PATH"), "{seen}");
    for name in &names {
        assert!(
            *name == "CASEWORK_DATA_DIR" || PASSED_THROUGH.contains(name),
            "{name} reached the child though it is not the service's: {seen}"
        );
    }
}
