//! Service options: a documented typed struct per service, built from
//! defaults, then an optional TOML file, then `CASEWORK_*` environment
//! variables (the environment is passed in as a map so tests stay pure).
//! Every bad value is a clear error at start that names where it came from.
//!
//! Environment mapping: strip `CASEWORK_`, lowercase, `__` separates nested
//! sections. `CASEWORK_DATA_DIR=/var/lib/casework` sets `data_dir`;
//! `CASEWORK_NATS__URL=nats://nats:4222` sets `nats.url`;
//! `CASEWORK_SERVICE__MAX_PAGE_SIZE=500` sets a service-specific setting. A
//! value is read as the type of the setting it replaces (lists are
//! comma-separated). An unknown `CASEWORK_*` variable is an error, except the
//! few that are not options ([`NOT_OPTIONS`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// `CASEWORK_*` variables that are not options.
pub const NOT_OPTIONS: &[&str] = &[
    "CASEWORK_CONFIG",
    "CASEWORK_NATS_SERVER",
    "CASEWORK_BENCH_SCALE",
    "CASEWORK_BIN_DIR",
    "CASEWORK_LOG",
    // casectl's bearer token: the README has people export it in the shell
    // they start services from.
    "CASEWORK_TOKEN",
    crate::reconcile::CRASH_BETWEEN_VAR,
];

/// What is wrong with the options.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// The file could not be read.
    #[error("cannot read options file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A value is invalid.
    #[error("{origin}: {message}")]
    Invalid {
        /// Where the value came from (file name, variable, "defaults").
        origin: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// How to reach NATS, and as whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// User name (the service's own NATS user; see DESIGN.md §3).
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<String>,
    /// A `.creds` file instead of user and password.
    pub creds_file: Option<PathBuf>,
    /// PEM file of the CA that signed the server's certificate (enables TLS).
    pub tls_ca_file: Option<PathBuf>,
    /// Replicas of the streams when this service creates them (1 locally,
    /// 3 in a cluster).
    pub stream_replicas: usize,
    /// Timeout of one request to JetStream, in milliseconds.
    pub request_timeout_ms: u64,
    /// Where replies arrive. Unset: `_INBOX_<user>` with a user (the only
    /// inbox its broker permissions allow), `_INBOX` without.
    pub inbox_prefix: Option<String>,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            user: None,
            password: None,
            creds_file: None,
            tls_ca_file: None,
            stream_replicas: 1,
            request_timeout_ms: 5000,
            inbox_prefix: None,
        }
    }
}

/// Output format of logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs and traces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info,casework=debug`.
    pub log_filter: String,
    /// OTLP endpoint for traces (e.g. `http://otel-collector:4317`); none
    /// means no export.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_filter: "info".to_owned(),
            otlp_endpoint: None,
        }
    }
}

/// How the service treats its redb files at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// Verify every page's checksum when a file is opened (redb's integrity
    /// check; it reads the whole file), so damage is found at start, not by
    /// a read that fails later.
    pub check_on_open: bool,
    /// When a file is damaged and the service rebuilds it from the streams
    /// anyway (read models, task boards: never the ledger's archive), move
    /// it aside as `<name>.redb.damaged-<time>` and start with an empty one
    /// instead of refusing to start.
    pub rebuild_when_damaged: bool,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            check_on_open: true,
            rebuild_when_damaged: false,
        }
    }
}

/// TLS for the service's gRPC server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM certificate chain of the server (enables TLS with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the server.
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate signed by
    /// it (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

impl TlsSettings {
    /// True when TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// A service's options: the common settings plus its own section `service`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options<S> {
    /// This replica's name (pod name); recorded in every event it writes.
    pub instance: String,
    /// Directory of this service's redb files.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// HTTP listen address for `/healthz`, `/readyz` and `/metrics`.
    pub http_listen: SocketAddr,
    /// Catalogue files or directories (each file one version); empty means
    /// the built-in sample catalogue.
    pub catalog: Vec<PathBuf>,
    /// NATS.
    pub nats: NatsSettings,
    /// TLS of the gRPC server (off by default).
    #[serde(default)]
    pub tls: TlsSettings,
    /// Who may call the gRPC API (`casework_auth::AuthSettings`).
    #[serde(default)]
    pub auth: casework_auth::AuthSettings,
    /// Logs and traces.
    pub telemetry: TelemetrySettings,
    /// The redb files.
    #[serde(default)]
    pub store: StoreSettings,
    /// Personal data: encrypted per customer (crypto-shredding) and the
    /// key-encryption key (`casework_privacy::PrivacySettings`).
    #[serde(default)]
    pub personal_data: casework_privacy::PrivacySettings,
    /// The service's own settings.
    pub service: S,
}

/// Service-specific settings check themselves.
pub trait Validate {
    /// Every problem, each naming the setting and how to fix it.
    fn validate(&self) -> Vec<String>;
}

impl Validate for () {
    fn validate(&self) -> Vec<String> {
        Vec::new()
    }
}

impl<S: Default> Options<S> {
    /// Defaults for a service whose gRPC port is `grpc_port` and HTTP port
    /// `http_port`.
    pub fn defaults(service: &str, grpc_port: u16, http_port: u16) -> Self {
        Self {
            instance: format!("{service}-0"),
            data_dir: PathBuf::from("data").join(service),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], http_port)),
            catalog: Vec::new(),
            nats: NatsSettings {
                user: None,
                ..Default::default()
            },
            tls: TlsSettings::default(),
            auth: casework_auth::AuthSettings::default(),
            telemetry: TelemetrySettings::default(),
            store: StoreSettings::default(),
            personal_data: casework_privacy::PrivacySettings::default(),
            service: S::default(),
        }
    }
}

impl<S: Validate> Options<S> {
    /// Every problem with the options.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.instance.is_empty()
            || !self
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            p.push(format!(
                "instance: {:?} must be a non-empty name of letters, digits, '-', '_' or '.' (e.g. the pod name)",
                self.instance
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            p.push("data_dir: must not be empty".to_owned());
        }
        if !self.nats.url.split(',').all(|u| {
            ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| u.trim().starts_with(s))
        }) {
            p.push(format!(
                "nats.url: {:?} must be nats://host:port (or tls://, ws://, wss://), comma-separated for several",
                self.nats.url
            ));
        }
        if self.nats.user.is_some() != self.nats.password.is_some() {
            p.push("nats.user and nats.password go together: set both or neither".to_owned());
        }
        if self.nats.stream_replicas == 0 || self.nats.stream_replicas > 5 {
            p.push(format!(
                "nats.stream_replicas: {} must be 1, 3 or 5",
                self.nats.stream_replicas
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            p.push("tls.cert_file and tls.key_file go together: set both or neither".to_owned());
        }
        if self.tls.client_ca_file.is_some() && !self.tls.enabled() {
            p.push("tls.client_ca_file needs tls.cert_file and tls.key_file".to_owned());
        }
        p.extend(self.auth.validate());
        p.extend(self.personal_data.validate());
        if let Err(e) = casework_telemetry::check_filter(&self.telemetry.log_filter) {
            p.push(format!("telemetry.log_filter: {e}"));
        }
        if self.auth.mode == casework_auth::AuthMode::Required
            && !self.tls.enabled()
            && !self.grpc_listen.ip().is_loopback()
            && self.auth.certificates.is_empty()
        {
            p.push(format!(
                "auth.mode is required but gRPC listens in plaintext on {}: bearer tokens would cross the network in the clear and are refused there; configure tls.cert_file and tls.key_file",
                self.grpc_listen
            ));
        }
        if self.auth.mode == casework_auth::AuthMode::Off
            && !self.grpc_listen.ip().is_loopback()
            && !self.auth.off_beyond_loopback
        {
            p.push(format!(
                "auth.mode is off but gRPC listens on {}, beyond loopback: anyone who reaches it could act for any tenant; set auth.mode = required with the issuer's JWKS, listen on 127.0.0.1, or (a development cluster only) set auth.off_beyond_loopback = true",
                self.grpc_listen
            ));
        }
        for (name, file) in [
            ("auth.jwks_file", &self.auth.jwks_file),
            ("auth.jwks_ca_file", &self.auth.jwks_ca_file),
            ("tls.cert_file", &self.tls.cert_file),
            ("tls.key_file", &self.tls.key_file),
            ("tls.client_ca_file", &self.tls.client_ca_file),
            ("nats.tls_ca_file", &self.nats.tls_ca_file),
        ] {
            if let Some(f) = file
                && !f.is_file()
            {
                p.push(format!(
                    "{name}: {} does not exist or is not a file",
                    f.display()
                ));
            }
        }
        if self.nats.request_timeout_ms == 0 {
            p.push("nats.request_timeout_ms: must be above 0".to_owned());
        }
        if self.grpc_listen == self.http_listen && self.grpc_listen.port() != 0 {
            p.push(format!(
                "grpc_listen and http_listen are both {}; give them different ports",
                self.grpc_listen
            ));
        }
        p.extend(
            self.service
                .validate()
                .into_iter()
                .map(|m| format!("service.{m}")),
        );
        p
    }
}

fn invalid(origin: impl Into<String>, message: impl Into<String>) -> OptionsError {
    OptionsError::Invalid {
        origin: origin.into(),
        message: message.into(),
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn typed_like(existing: Option<&toml::Value>, raw: &str) -> Result<toml::Value, String> {
    use toml::Value as V;
    Ok(match existing {
        Some(V::Integer(_)) => V::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not a whole number"))?,
        ),
        Some(V::Float(_)) => V::Float(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not a number"))?,
        ),
        Some(V::Boolean(_)) => V::Boolean(match raw.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(format!("{raw:?} is not true or false")),
        }),
        Some(V::Array(_)) => V::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| V::String(s.to_owned()))
                .collect(),
        ),
        _ => V::String(raw.to_owned()),
    })
}

fn deserialize<T: DeserializeOwned>(value: toml::Value, origin: &str) -> Result<T, OptionsError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        invalid(origin, format!("{path}: {}", e.into_inner()))
    })
}

/// Builds options from `defaults`, then `file` (if any), then the
/// `CASEWORK_*` entries of `env`, and validates them.
pub fn load<S>(
    defaults: Options<S>,
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Options<S>, OptionsError>
where
    S: Serialize + DeserializeOwned + Validate,
{
    let mut value =
        toml::Value::try_from(&defaults).map_err(|e| invalid("defaults", e.to_string()))?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| OptionsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let origin = path.display().to_string();
        let over: toml::Value =
            toml::from_str(&text).map_err(|e| invalid(&origin, e.to_string()))?;
        merge(&mut value, over);
        // Check the file alone first, so its errors name it.
        let _: Options<S> = deserialize(value.clone(), &origin)?;
    }
    for (key, raw) in env {
        let Some(rest) = key.strip_prefix("CASEWORK_") else {
            continue;
        };
        if NOT_OPTIONS.contains(&key.as_str()) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let mut cursor = &mut value;
        for (i, part) in path.iter().enumerate() {
            let table = cursor
                .as_table_mut()
                .ok_or_else(|| invalid(key, format!("{} is not a section", path[..i].join("."))))?;
            if i + 1 == path.len() {
                let typed = typed_like(table.get(part), raw).map_err(|m| invalid(key, m))?;
                table.insert(part.clone(), typed);
                break;
            }
            cursor = table
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
        }
        let _: Options<S> = deserialize(value.clone(), key).map_err(|e| match e {
            OptionsError::Invalid { message, .. } => invalid(
                key,
                format!(
                    "{message} (variables map to settings as CASEWORK_SECTION__SETTING, e.g. CASEWORK_NATS__URL)"
                ),
            ),
            other => other,
        })?;
    }
    let options: Options<S> = deserialize(value, "options")?;
    let problems = options.problems();
    if !problems.is_empty() {
        return Err(invalid("options", problems.join("; ")));
    }
    Ok(options)
}

/// The process environment as a map (for `main`).
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Svc {
        page_size: u32,
        ratio: f64,
        queues: Vec<String>,
        enabled: bool,
    }

    impl Default for Svc {
        fn default() -> Self {
            Self {
                page_size: 100,
                ratio: 0.5,
                queues: vec!["a".into()],
                enabled: true,
            }
        }
    }

    impl Validate for Svc {
        fn validate(&self) -> Vec<String> {
            if self.page_size == 0 {
                vec!["page_size: must be above 0".into()]
            } else {
                vec![]
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn defaults() -> Options<Svc> {
        Options::defaults("intake", 50051, 8081)
    }

    #[test]
    fn defaults_then_file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("intake.toml");
        std::fs::write(&file, "instance = \"from-file\"\n[nats]\nurl = \"nats://file:4222\"\n[service]\npage_size = 7\n").unwrap();
        let o = load(
            defaults(),
            Some(&file),
            &env(&[
                ("CASEWORK_NATS__URL", "nats://env:4222"),
                ("CASEWORK_SERVICE__QUEUES", "x, y"),
                ("CASEWORK_SERVICE__ENABLED", "false"),
                ("CASEWORK_NATS_SERVER", "/usr/bin/nats-server"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(o.instance, "from-file");
        assert_eq!(o.nats.url, "nats://env:4222");
        assert_eq!(o.service.page_size, 7);
        assert_eq!(o.service.queues, vec!["x", "y"]);
        assert!(!o.service.enabled);
        assert_eq!(o.grpc_listen.port(), 50051);
    }

    #[test]
    fn bad_values_name_their_origin() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("CASEWORK_GRPC_LISTEN", "not-an-address")],
                "CASEWORK_GRPC_LISTEN",
            ),
            (
                &[("CASEWORK_SERVICE__PAGE_SIZE", "many")],
                "CASEWORK_SERVICE__PAGE_SIZE",
            ),
            (
                &[("CASEWORK_NATS__URLL", "nats://x:1")],
                "CASEWORK_NATS__URLL",
            ),
            (&[("CASEWORK_SERVICE__PAGE_SIZE", "0")], "service.page_size"),
            (&[("CASEWORK_NATS__URL", "http://x")], "nats.url"),
            (&[("CASEWORK_NATS__USER", "intake")], "nats.password"),
            (
                &[("CASEWORK_HTTP_LISTEN", "127.0.0.1:50051")],
                "different ports",
            ),
        ];
        for (vars, needle) in cases {
            let e = load(defaults(), None, &env(vars)).unwrap_err().to_string();
            assert!(e.contains(needle), "{vars:?}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[nats]\nurl = 5\n").unwrap();
        let e = load(defaults(), Some(&file), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml") && e.contains("nats.url"), "{e}");
        std::fs::write(&file, "colour = \"blue\"\n").unwrap();
        let e = load(defaults(), Some(&file), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml") && e.contains("colour"), "{e}");
    }

    #[test]
    fn authentication_off_is_refused_beyond_loopback_unless_asked_for() {
        let open = [("CASEWORK_GRPC_LISTEN", "0.0.0.0:50051")];
        let e = load(defaults(), None, &env(&open)).unwrap_err().to_string();
        assert!(
            e.contains("auth.mode is off") && e.contains("0.0.0.0:50051"),
            "{e}"
        );
        let asked = [
            ("CASEWORK_GRPC_LISTEN", "0.0.0.0:50051"),
            ("CASEWORK_AUTH__OFF_BEYOND_LOOPBACK", "true"),
        ];
        assert!(load(defaults(), None, &env(&asked)).is_ok());
        // The default listener is loopback: local development needs nothing.
        assert!(load(defaults(), None, &BTreeMap::new()).is_ok());
    }
}
