//! The services' exit codes for bad configuration, as an operator or a
//! supervisor sees them (the release binaries, a clean environment): a
//! missing or unparsable catalogue and a bad log filter exit 2, saying what
//! is wrong, like every other bad option — never 1 (a runtime failure) and
//! never silently replaced.

use std::collections::BTreeMap;

use casework_e2e::{release_bins, service_command};

/// Runs `service` with the settings below and `env`; returns (exit code,
/// stderr).
fn run(service: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let data = tempfile::tempdir().unwrap();
    let env: BTreeMap<String, String> = [
        ("CASEWORK_DATA_DIR", data.path().to_str().unwrap()),
        ("CASEWORK_GRPC_LISTEN", "127.0.0.1:0"),
        ("CASEWORK_HTTP_LISTEN", "127.0.0.1:1"),
        // Nothing listens there: nothing may get as far as connecting.
        ("CASEWORK_NATS__URL", "nats://127.0.0.1:1"),
    ]
    .into_iter()
    .chain(env.iter().copied())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let out = service_command(&release_bins().join(format!("casework-{service}")), &env)
        .output()
        .expect("run the service");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_or_broken_catalogue_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("catalog.toml");
    std::fs::write(&broken, "this is [not a catalogue").unwrap();
    let missing = dir.path().join("nowhere.toml");
    for service in ["intake", "fulfilment", "recovery", "ledger"] {
        for path in [&missing, &broken] {
            let (code, stderr) = run(service, &[("CASEWORK_CATALOG", path.to_str().unwrap())]);
            assert_eq!(code, Some(2), "{service} with {}: {stderr}", path.display());
            assert!(
                stderr.contains(path.file_name().unwrap().to_str().unwrap()),
                "{service}: the message names the file: {stderr}"
            );
        }
    }
}

#[test]
fn a_bad_log_filter_exits_2_instead_of_logging_at_info() {
    for (key, value) in [
        ("CASEWORK_TELEMETRY__LOG_FILTER", "info,casework=loud"),
        ("CASEWORK_LOG", "info,casework=loud"),
    ] {
        let (code, stderr) = run("intake", &[(key, value)]);
        assert_eq!(code, Some(2), "{key}: {stderr}");
        assert!(stderr.contains("is not a log filter"), "{key}: {stderr}");
    }
}
