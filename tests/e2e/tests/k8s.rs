//! The Kubernetes manifests, validated offline: both overlays render with
//! kustomize and pass `kubernetes-validate --strict` (pinned in .ci/run);
//! every container's `CASEWORK_*` environment is accepted by that service's
//! own options loader, and the ports it configures are the ports the
//! manifests expose and probe — so manifests and code cannot drift apart.
//! The catalogue ConfigMap is the sample catalogue, and the NATS Helm values
//! grant exactly the permissions of `casework_caselog::permissions`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use casework_caselog::domain::Writer;
use casework_caselog::permissions::{Principal, permissions};
use casework_e2e::workspace_root;
use serde::Deserialize;
use serde_yaml::Value;

fn render(overlay: &str) -> String {
    let dir = workspace_root().join("k8s/overlays").join(overlay);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl is needed to render the manifests (apt-get install kubectl, or the Kubernetes release binary)");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 manifests")
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .collect()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn validate_strict(overlay: &str, yaml: &str) {
    let file = std::env::temp_dir().join(format!(
        "casework-k8s-{overlay}-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate is needed: pip install kubernetes-validate==1.37.0 (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{overlay} fails strict validation:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The container's environment: plain values, a ConfigMap's value where the
/// rendered manifests hold that ConfigMap (a missing one fails), a stand-in
/// for the pod's name and for Secrets.
fn env_of(container: &Value, docs: &[Value]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for e in container["env"].as_sequence().expect("env list") {
        let name = e["name"].as_str().unwrap().to_owned();
        let from = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else if from["fieldRef"].is_mapping() {
            "casework-pod-0".to_owned()
        } else if let Some(map) = from["configMapKeyRef"]["name"].as_str() {
            let key = from["configMapKeyRef"]["key"].as_str().unwrap();
            docs.iter()
                .find(|d| {
                    d["kind"].as_str() == Some("ConfigMap")
                        && d["metadata"]["name"].as_str() == Some(map)
                })
                .and_then(|d| d["data"][key].as_str())
                .unwrap_or_else(|| panic!("{name}: no key {key} in a ConfigMap {map}"))
                .to_owned()
        } else {
            "from-a-secret".to_owned()
        };
        env.insert(name, value);
    }
    env
}

/// Every `*_FILE` setting must lie under one of the container's volume
/// mounts; for the options loader (which checks that files exist) each is
/// replaced by a file in `scratch`.
fn files_under_mounts(
    name: &str,
    container: &Value,
    env: &mut BTreeMap<String, String>,
    scratch: &std::path::Path,
) {
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_sequence()
        .map(|m| m.iter().filter_map(|m| m["mountPath"].as_str()).collect())
        .unwrap_or_default();
    for (key, value) in env.iter_mut() {
        if !key.ends_with("_FILE") {
            continue;
        }
        assert!(
            mounts.iter().any(|m| value.starts_with(&format!("{m}/"))),
            "{name}: {key}={value} is not under a volume mount ({mounts:?})"
        );
        let stand_in = scratch.join(key.as_str());
        std::fs::write(&stand_in, "stand-in").unwrap();
        *value = stand_in.display().to_string();
    }
}

fn port_named(container: &Value, name: &str) -> u16 {
    container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no {name} port")) as u16
}

/// Loads `service`'s options from `env` with its own loader; returns its
/// (gRPC, HTTP) listen addresses.
fn options_of(service: &str, env: &BTreeMap<String, String>) -> (SocketAddr, SocketAddr) {
    use casework_runtime::options::load;
    let r = match service {
        "intake" => load(casework_intake::default_options(), None, env)
            .map(|o| (o.grpc_listen, o.http_listen, o.nats.stream_replicas)),
        "fulfilment" => load(casework_fulfilment::default_options(), None, env)
            .map(|o| (o.grpc_listen, o.http_listen, o.nats.stream_replicas)),
        "recovery" => load(casework_recovery::default_options(), None, env)
            .map(|o| (o.grpc_listen, o.http_listen, o.nats.stream_replicas)),
        "ledger" => load(casework_ledger::default_options(), None, env)
            .map(|o| (o.grpc_listen, o.http_listen, o.nats.stream_replicas)),
        other => panic!("unknown service {other}"),
    };
    let (g, h, _) = r.unwrap_or_else(|e| {
        panic!("{service}: the manifest's environment is refused by the service: {e}")
    });
    (g, h)
}

fn check_overlay(overlay: &str, replicas: u64) {
    let yaml = render(overlay);
    validate_strict(overlay, &yaml);
    let docs = docs(&yaml);
    let kind = |d: &Value| d["kind"].as_str().unwrap_or_default().to_owned();
    for svc in ["intake", "fulfilment", "recovery", "ledger"] {
        let name = format!("casework-{svc}");
        let sts = docs
            .iter()
            .find(|d| kind(d) == "StatefulSet" && d["metadata"]["name"].as_str() == Some(&name))
            .unwrap_or_else(|| panic!("{overlay}: no StatefulSet {name}"));
        assert_eq!(
            sts["spec"]["replicas"].as_u64(),
            Some(replicas),
            "{overlay}/{name} replicas"
        );
        let pod = s(sts, &["spec", "template", "spec"]);
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
        let c = &pod["containers"][0];
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
            Some(true)
        );
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
            Some(false)
        );
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{name}: memory limit"
        );
        assert_eq!(
            c["command"][0].as_str(),
            Some(format!("/usr/local/bin/casework-{svc}").as_str())
        );
        let mut env = env_of(c, &docs);
        let scratch = tempfile::tempdir().unwrap();
        files_under_mounts(&name, c, &mut env, scratch.path());
        let (grpc, http) = options_of(svc, &env);
        let (gp, hp) = (port_named(c, "grpc"), port_named(c, "http"));
        assert_eq!(
            grpc.port(),
            gp,
            "{name}: the service listens for gRPC where the manifest says"
        );
        assert_eq!(
            http.port(),
            hp,
            "{name}: the service listens for HTTP where the manifest says"
        );
        assert!(
            grpc.ip().is_unspecified(),
            "{name}: gRPC must listen on all interfaces in a pod"
        );
        let tls = env.contains_key("CASEWORK_TLS__CERT_FILE");
        for probe in ["livenessProbe", "startupProbe"] {
            if tls {
                // The kubelet's gRPC probe cannot speak TLS.
                assert_eq!(
                    c[probe]["httpGet"]["path"].as_str(),
                    Some("/healthz"),
                    "{name}: {probe} over HTTP when gRPC is TLS"
                );
                assert_eq!(c[probe]["httpGet"]["port"].as_str(), Some("http"));
            } else {
                assert_eq!(c[probe]["grpc"]["port"].as_u64(), Some(gp as u64));
            }
        }
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz")
        );
        if replicas > 1 {
            // Production: callers authenticate, over TLS.
            assert_eq!(
                env.get("CASEWORK_AUTH__MODE").map(String::as_str),
                Some("required"),
                "{name}: authentication required in production"
            );
            assert!(tls, "{name}: gRPC over TLS in production");
            assert!(
                env.get("CASEWORK_AUTH__JWKS_URL")
                    .is_some_and(|u| u.starts_with("https://")),
                "{name}: the issuer's JWKS URL"
            );
            assert_eq!(
                env.get("CASEWORK_NATS__STREAM_REPLICAS")
                    .map(String::as_str),
                Some("3")
            );
            assert!(
                pod["topologySpreadConstraints"].is_sequence(),
                "{name}: spread"
            );
            assert!(
                docs.iter().any(|d| kind(d) == "PodDisruptionBudget"
                    && d["metadata"]["name"].as_str() == Some(&name)),
                "{overlay}: a PodDisruptionBudget for {name}"
            );
        }
        let service = docs
            .iter()
            .find(|d| kind(d) == "Service" && d["metadata"]["name"].as_str() == Some(&name))
            .unwrap_or_else(|| panic!("no Service {name}"));
        let ports: Vec<u64> = service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|p| p["port"].as_u64())
            .collect();
        assert_eq!(ports, vec![gp as u64, hp as u64], "{name}: Service ports");
    }
    assert!(docs.iter().any(|d| kind(d) == "NetworkPolicy"));
    assert!(docs.iter().any(|d| kind(d) == "ConfigMap"));
}

#[test]
fn dev_overlay_is_valid_and_matches_the_services() {
    check_overlay("dev", 1);
}

#[test]
fn prod_overlay_is_valid_and_matches_the_services() {
    check_overlay("prod", 3);
}

#[test]
fn the_catalogue_config_map_is_the_sample_catalogue() {
    let root = workspace_root();
    let k8s = std::fs::read(root.join("k8s/base/catalog.toml")).unwrap();
    let sample = std::fs::read(root.join("shared/catalog/sample/catalog.toml")).unwrap();
    assert!(
        k8s == sample,
        "k8s/base/catalog.toml differs from shared/catalog/sample/catalog.toml; copy it again"
    );
}

#[test]
fn nats_helm_values_grant_exactly_the_permission_scheme() {
    let path: PathBuf = workspace_root().join("k8s/nats/values.yaml");
    let v: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        v["config"]["jetstream"]["merge"]["sync_interval"].as_str(),
        Some("always")
    );
    assert_eq!(v["config"]["cluster"]["replicas"].as_u64(), Some(3));
    let users = v["config"]["merge"]["authorization"]["users"]
        .as_sequence()
        .unwrap();
    let list = |u: &Value, dir: &str| -> Option<Vec<String>> {
        u["permissions"][dir]["allow"]
            .as_sequence()
            .map(|l| l.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
    };
    // The prod overlay's pods (three replicas each; dev runs the first).
    let pods =
        |svc: &str| -> Vec<String> { (0..3).map(|i| format!("casework-{svc}-{i}")).collect() };
    let mut principals = vec![
        ("admin", Principal::Admin),
        ("ledger", Principal::ledger(pods("ledger"))),
        (
            "integrator-acme",
            Principal::integrator("acme", ["acme-crm"]).unwrap(),
        ),
    ];
    principals.extend(Writer::ALL.map(|w| (w.as_str(), Principal::writer(w, pods(w.as_str())))));
    for (name, p) in principals {
        let u = users
            .iter()
            .find(|u| u["user"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no NATS user {name} in {}", path.display()));
        let want = permissions(name, &p);
        assert_eq!(
            list(u, "publish"),
            want.publish_allow,
            "{name}: publish permissions"
        );
        assert_eq!(
            list(u, "subscribe"),
            want.subscribe_allow,
            "{name}: subscribe permissions"
        );
    }
}
