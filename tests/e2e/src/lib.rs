//! `casework-e2e` owns the black-box harness: it builds (once) and starts the
//! four services as separate **release** processes, each with its own NATS
//! user, data directory and ports, against a real nats-server with the
//! per-service permissions of DESIGN.md §3; it can kill -9 and restart any
//! of them, and restart the broker. It must not reach into a service's
//! internals: it talks gRPC, HTTP health and the NATS streams only. Its
//! `audit` module is the one checker of the auditor's invariants, and
//! `chaos` the seeded fault probe built on both.

pub mod audit;
pub mod chaos;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use casework_caselog::domain::Writer;
use casework_caselog::permissions::{Principal, nats_authorization};
use casework_testkit::NatsServer;

/// The services, in start order.
pub const SERVICES: [&str; 4] = ["ledger", "intake", "fulfilment", "recovery"];

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The directory holding the release binaries: `$CASEWORK_BIN_DIR`, or
/// `<target>/e2e/release` after building them once with `cargo build
/// --release` into its own target directory (so the nested build never
/// waits on the lock of the `cargo test` that runs us).
pub fn release_bins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("CASEWORK_BIN_DIR") {
            return PathBuf::from(d);
        }
        let root = workspace_root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("e2e");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(&root)
            .args(["build", "--release", "--locked", "--target-dir"])
            .arg(&target);
        for s in SERVICES {
            cmd.args(["-p", &format!("casework-{s}")]);
        }
        let status = cmd.status().expect("run cargo build --release");
        assert!(
            status.success(),
            "cargo build --release of the services failed"
        );
        target.join("release")
    })
}

/// The variables of the test process a service is still given: none of
/// the harness's own (`CASEWORK_BIN_DIR`, `CASEWORK_NATS_SERVER`, …) and
/// nothing a developer's shell happens to hold, only what a process needs
/// to run and to report a crash.
pub const PASSED_THROUGH: &[&str] = &["PATH", "HOME", "TMPDIR", "RUST_BACKTRACE"];

/// The command that starts `bin` with exactly `env` (plus
/// [`PASSED_THROUGH`]): a service never sees a variable that is not its
/// own.
pub fn service_command(bin: &Path, env: &BTreeMap<String, String>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear();
    for key in PASSED_THROUGH {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(env);
    cmd
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The integrator user of the e2e system: tenant [`INTEGRATOR_TENANT`],
/// consumer [`INTEGRATOR_CONSUMER`], password `pw-integrator`.
pub const INTEGRATOR_TENANT: &str = "acme";
/// The integrator's one consumer name.
pub const INTEGRATOR_CONSUMER: &str = "acme-sync";

/// The NATS users of the system (every service its own, for its instance
/// `<service>-0`, plus admin and an integrator of [`INTEGRATOR_TENANT`]),
/// all with password `pw-<user>`.
pub fn nats_users() -> String {
    let mut users: Vec<(Principal, String, String)> =
        vec![(Principal::Admin, "admin".to_owned(), "pw-admin".to_owned())];
    for w in Writer::ALL {
        users.push((
            Principal::writer(w, [format!("{w}-0")]),
            w.to_string(),
            format!("pw-{w}"),
        ));
    }
    users.push((
        Principal::ledger(["ledger-0"]),
        "ledger".into(),
        "pw-ledger".into(),
    ));
    users.push((
        Principal::integrator(INTEGRATOR_TENANT, [INTEGRATOR_CONSUMER]).expect("valid integrator"),
        "integrator".into(),
        "pw-integrator".into(),
    ));
    let refs: Vec<(Principal, &str, &str)> = users
        .iter()
        .map(|(p, u, pw)| (p.clone(), u.as_str(), pw.as_str()))
        .collect();
    nats_authorization(&refs)
}

/// One service process.
#[derive(Debug)]
pub struct ServiceProc {
    /// `intake`, `fulfilment`, `recovery` or `ledger`.
    pub name: &'static str,
    /// gRPC port.
    pub grpc_port: u16,
    /// HTTP port.
    pub http_port: u16,
    env: BTreeMap<String, String>,
    child: Option<Child>,
    log: PathBuf,
}

impl ServiceProc {
    /// `http://127.0.0.1:<grpc port>`.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The process id while it runs (for memory readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) {
        let bin = release_bins().join(format!("casework-{}", self.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("service log");
        let child = service_command(&bin, &self.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        self.child = Some(child);
    }

    /// SIGKILL (a crash).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same data directory and ports.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        self.spawn();
    }

    /// Sets (or, with `None`, removes) an environment variable for the
    /// next start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(v) => self.env.insert(key.to_owned(), v.to_owned()),
            None => self.env.remove(key),
        };
    }

    /// Waits until the process has exited on its own (a crash), or panics
    /// with its log; then it can be started again.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let what = format!("{} to exit", self.name);
        let mut status = None;
        casework_testkit::wait_until(timeout, Duration::from_millis(20), &what, || {
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(s))) => {
                    status = Some(s);
                    Ok(())
                }
                _ => Err(format!("still running; log:\n{}", self.log())),
            }
        });
        self.child = None;
        status.expect("exited")
    }

    /// Whether the process the harness last started is still running (the
    /// harness never restarts a service by itself).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Its log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        http_get(self.http_port, "/readyz").is_some_and(|(code, _)| code == 200)
    }

    /// Waits until `/readyz` answers 200, or panics with the service's log.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let what = format!("{} to be ready", self.name);
        casework_testkit::wait_until(timeout, Duration::from_millis(50), &what, || {
            if self.is_ready() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{} exited with {status}:\n{}", self.name, self.log());
            }
            Err(format!("/readyz not 200; log:\n{}", self.log()))
        });
    }
}

impl Drop for ServiceProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub use casework_testkit::http_get;

/// Memory of a running process, from `/proc/<pid>/status`, in MiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    /// Peak resident set size (`VmHWM`).
    pub peak_mib: f64,
    /// Current resident set size (`VmRSS`).
    pub rss_mib: f64,
}

/// The peak and current resident memory of process `pid` (Linux only;
/// `None` if it is not running or `/proc` is unavailable).
pub fn memory_of(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
    };
    Some(Memory {
        peak_mib: kib("VmHWM:")? / 1024.0,
        rss_mib: kib("VmRSS:")? / 1024.0,
    })
}

/// The whole system: a nats-server with the per-service users and the four
/// services as separate processes.
#[derive(Debug)]
pub struct System {
    /// The services by name (declared first: dropped, so killed, before the
    /// broker and its directory go).
    pub services: BTreeMap<&'static str, ServiceProc>,
    /// The broker (in a cluster, its first node).
    pub nats: NatsServer,
    /// The other nodes of a cluster (none on a single server).
    pub peers: Vec<NatsServer>,
    /// Where data directories and logs live.
    pub dir: PathBuf,
}

/// The development issuer every system of this process trusts (its key in
/// a directory of this process).
pub fn issuer() -> &'static casework_auth::dev::DevIssuer {
    static ISSUER: std::sync::OnceLock<casework_auth::dev::DevIssuer> = std::sync::OnceLock::new();
    ISSUER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("casework-e2e-auth-{}", std::process::id()));
        casework_auth::dev::DevIssuer::load_or_create(&dir).expect("dev issuer")
    })
}

/// A token with every role for every tenant (valid for a day), trusted by
/// every system of this process.
pub fn admin_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        issuer()
            .mint(
                "e2e-admin",
                Some("E2E Admin"),
                &["*"],
                &[casework_auth::Role::Admin],
                Duration::from_secs(86_400),
            )
            .expect("a token")
    })
}

/// A channel to a service's `url` whose calls carry [`admin_token`].
pub async fn connect(
    url: impl Into<String>,
) -> Result<casework_auth::dev::WithToken, tonic::transport::Error> {
    let ch = tonic::transport::Endpoint::from_shared(url.into())?
        .connect()
        .await?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        ch,
        casework_auth::dev::BearerToken::new(admin_token()),
    ))
}

impl System {
    /// Starts NATS and the four services with `catalog` (a TOML file) and
    /// extra `CASEWORK_*` settings per service, and waits until all are
    /// ready. The broker fsyncs every write (`sync_interval: always`).
    pub fn start(catalog: &Path, extra: &[(&str, &str, &str)]) -> Self {
        Self::start_configured(catalog, extra, true)
    }

    /// [`System::start`] with the broker's `sync_interval` chosen:
    /// `always` (`sync_always`) or nats-server's default schedule.
    pub fn start_configured(
        catalog: &Path,
        extra: &[(&str, &str, &str)],
        sync_always: bool,
    ) -> Self {
        let nats = NatsServer::start_configured(&nats_users(), sync_always);
        Self::start_on(nats, Vec::new(), catalog, extra)
    }

    /// The system on a JetStream cluster of `nodes` nats-servers on
    /// loopback (fsync `always` when `sync_always`): every service is given
    /// all nodes' URLs and creates the streams with `nodes` replicas.
    pub fn start_cluster(
        catalog: &Path,
        extra: &[(&str, &str, &str)],
        nodes: usize,
        sync_always: bool,
    ) -> Self {
        let mut cluster = casework_testkit::NatsCluster::start(nodes, &nats_users(), sync_always);
        let nats = cluster.nodes.remove(0);
        Self::start_on(nats, cluster.nodes, catalog, extra)
    }

    /// Every node's client URL, comma-separated.
    pub fn nats_urls(&self) -> String {
        casework_testkit::urls_of(std::iter::once(&self.nats).chain(&self.peers))
    }

    fn start_on(
        nats: NatsServer,
        peers: Vec<NatsServer>,
        catalog: &Path,
        extra: &[(&str, &str, &str)],
    ) -> Self {
        let dir = nats.scratch_dir().join("system");
        std::fs::create_dir_all(&dir).expect("system dir");
        // Every service requires a token of the development issuer, as a
        // production deployment requires its identity provider's.
        let issuer = issuer();
        let mut services = BTreeMap::new();
        for name in SERVICES {
            let (grpc_port, http_port) = (free_port(), free_port());
            let mut env = BTreeMap::new();
            let mut set = |k: &str, v: String| {
                env.insert(k.to_owned(), v);
            };
            set("CASEWORK_INSTANCE", format!("{name}-0"));
            set("CASEWORK_DATA_DIR", dir.join(name).display().to_string());
            set("CASEWORK_GRPC_LISTEN", format!("127.0.0.1:{grpc_port}"));
            set("CASEWORK_HTTP_LISTEN", format!("127.0.0.1:{http_port}"));
            set("CASEWORK_CATALOG", catalog.display().to_string());
            set(
                "CASEWORK_NATS__URL",
                casework_testkit::urls_of(std::iter::once(&nats).chain(&peers)),
            );
            set(
                "CASEWORK_NATS__STREAM_REPLICAS",
                (1 + peers.len()).to_string(),
            );
            set("CASEWORK_NATS__USER", name.to_owned());
            set("CASEWORK_NATS__PASSWORD", format!("pw-{name}"));
            set("CASEWORK_LOG", "info".to_owned());
            set("CASEWORK_AUTH__MODE", "required".to_owned());
            set(
                "CASEWORK_AUTH__JWKS_FILE",
                issuer.jwks_path().display().to_string(),
            );
            set(
                "CASEWORK_AUTH__ISSUER",
                casework_auth::dev::DEV_ISSUER.to_owned(),
            );
            set(
                "CASEWORK_AUTH__AUDIENCE",
                casework_auth::dev::DEV_AUDIENCE.to_owned(),
            );
            if name == "intake" {
                // The suite and the benches load one tenant far beyond a
                // production rate: they measure the system, not its limiter
                // (which intake's own tests cover).
                set("CASEWORK_SERVICE__TENANT_WRITES_PER_MINUTE", "0".to_owned());
            }
            for (svc, k, v) in extra {
                if *svc == name {
                    set(k, (*v).to_owned());
                }
            }
            let mut p = ServiceProc {
                name,
                grpc_port,
                http_port,
                env,
                child: None,
                log: dir.join(format!("{name}.log")),
            };
            p.spawn();
            services.insert(name, p);
        }
        let mut sys = System {
            nats,
            peers,
            services,
            dir,
        };
        for s in sys.services.values_mut() {
            s.wait_ready(Duration::from_secs(60));
        }
        sys
    }

    /// A log client with the operator's rights (reads every case), to
    /// check invariants on the raw stream.
    pub async fn admin_log(&self) -> casework_caselog::JetStreamLog {
        casework_caselog::JetStreamLog::new(self.admin_client().await, "e2e-admin", None)
    }

    /// A NATS connection as the operator, to every node (stream state,
    /// cluster leaders).
    pub async fn admin_client(&self) -> async_nats::Client {
        casework_caselog::jetstream::connect(&casework_caselog::NatsOptions {
            url: self.nats_urls(),
            user: Some("admin".into()),
            password: Some("pw-admin".into()),
            ..Default::default()
        })
        .await
        .expect("admin connects")
    }

    /// A service by name.
    pub fn service(&mut self, name: &str) -> &mut ServiceProc {
        self.services.get_mut(name).expect("known service")
    }
}
