//! Commands served by the ledger: replay, verify, export, tail (and the
//! offline `verify --bundle`, which needs no server).

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;

use casework_ledger::bundle;
use casework_ledger::convert::envelope_json;
use casework_proto::ledger::v1 as api;
use casework_proto::ledger::v1::ledger_client::LedgerClient;
use clap::Args;
use futures::StreamExt;
use serde_json::json;

use crate::{Error, Report, Result, Target, parse_case, timeline};

async fn client(url: &Target) -> Result<LedgerClient<crate::Authed>> {
    Ok(LedgerClient::new(crate::authed("ledger", url).await?).max_decoding_message_size(256 << 20))
}

/// `replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The case: TENANT/CASE_ID, or CASE_ID with --tenant.
    #[arg(value_name = "CASE")]
    pub case: String,
    /// Stop at a per-case sequence (e.g. 5) or an RFC 3339 time (e.g.
    /// 2025-06-15T10:00:00Z).
    #[arg(long, value_name = "SEQ|TIME")]
    pub at: Option<String>,
}

/// `verify`.
#[derive(Debug, Clone, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["case", "all", "bundle", "consistency"]))]
pub struct VerifyArgs {
    /// The case: TENANT/CASE_ID, or CASE_ID with --tenant.
    #[arg(value_name = "CASE")]
    pub case: Option<String>,
    /// Every case in the archive (of --tenant, if given).
    #[arg(long)]
    pub all: bool,
    /// An evidence bundle file, verified offline (no server).
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// The ledger's checkpoint public key (`<origin>+<id>+<key>`, or
    /// @FILE): with --bundle, the bundle's signed checkpoint and every
    /// event's inclusion proof are verified too; with --consistency, both
    /// checkpoints' signatures.
    #[arg(long, value_name = "KEY")]
    pub public_key: Option<String>,
    /// Two signed checkpoint files (OLD NEW, e.g. saved from `casectl
    /// checkpoint`): asks the ledger for the consistency proof and checks
    /// that the log at NEW only extends the log at OLD.
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
    pub consistency: Option<Vec<PathBuf>>,
    /// Only verify the ledger's archive, not the stream.
    #[arg(long)]
    pub archive_only: bool,
}

/// `checkpoint`.
#[derive(Debug, Clone, Args)]
pub struct CheckpointArgs {
    /// Have the ledger sign a checkpoint of the log as it is now first.
    #[arg(long)]
    pub now: bool,
    /// Also write the signed note to this file (for `verify --consistency`).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `keygen`.
#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// The log's origin, also the key's name (the ledger's
    /// `checkpoint_origin`), e.g. casework.example/ledger.
    #[arg(long)]
    pub origin: String,
    /// Where to write the private key (readable by its owner only); it
    /// must not exist yet.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

/// `export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The case: TENANT/CASE_ID, or CASE_ID with --tenant.
    #[arg(value_name = "CASE")]
    pub case: String,
    /// Output file ("-" for standard output); default
    /// <tenant>-<case_id>.bundle.json.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `tail`.
#[derive(Debug, Clone, Args)]
#[command(group = clap::ArgGroup::new("start").args(["from", "from_start"]))]
pub struct TailArgs {
    /// Only this case id (with --tenant).
    #[arg(long = "case", value_name = "CASE_ID")]
    pub case_id: Option<String>,
    /// Only events of this writer: intake, fulfilment or recovery.
    #[arg(long)]
    pub writer: Option<String>,
    /// Only events of this type, e.g. promise_kept.
    #[arg(long = "type", value_name = "EVENT_TYPE")]
    pub event_type: Option<String>,
    /// Resume right after this position (printed with every event).
    #[arg(long, value_name = "TOKEN")]
    pub from: Option<String>,
    /// Start at the first event ever stored (default: from now).
    #[arg(long)]
    pub from_start: bool,
    /// Stop after this many events (default: until Ctrl-C).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

fn parse_at(at: &str) -> Result<(api::ReplayMode, u64, Option<prost_types::Timestamp>)> {
    if let Ok(n) = at.parse::<u64>() {
        if n == 0 {
            return Err(Error::Usage("--at 0: sequences start at 1".to_owned()));
        }
        return Ok((api::ReplayMode::AtSequence, n, None));
    }
    let t = chrono::DateTime::parse_from_rfc3339(at).map_err(|_| {
        Error::Usage(format!(
            "--at {at:?} is neither a sequence (e.g. 5) nor an RFC 3339 time (e.g. 2025-06-15T10:00:00Z)"
        ))
    })?;
    Ok((
        api::ReplayMode::AtTime,
        0,
        Some(casework_domain::chain::timestamp(t.to_utc())),
    ))
}

async fn steps(
    c: &mut LedgerClient<crate::Authed>,
    req: api::ReplayCaseRequest,
) -> Result<Vec<api::ReplayStep>> {
    let mut s = c
        .replay_case(req)
        .await
        .map_err(|e| Error::from_status("replay", e))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(step) = s.next().await {
        out.push(step.map_err(|e| Error::from_status("replay", e))?);
    }
    Ok(out)
}

/// `casectl replay`.
pub async fn replay(url: &Target, tenant: Option<&str>, a: ReplayArgs) -> Result<Report> {
    let (t, c) = parse_case(&a.case, tenant)?;
    let (mode, at_sequence, at_time) = match &a.at {
        Some(at) => parse_at(at)?,
        None => (api::ReplayMode::Unspecified, 0, None),
    };
    let mut cl = client(url).await?;
    let base = api::ReplayCaseRequest {
        tenant: t.clone(),
        case_id: c.clone(),
        ..Default::default()
    };
    // The server decides the state as of --at; the timeline shows the
    // events that state folded.
    let fin = steps(
        &mut cl,
        api::ReplayCaseRequest {
            mode: mode as i32,
            at_sequence,
            at_time,
            ..base.clone()
        },
    )
    .await?;
    let last = fin
        .last()
        .ok_or_else(|| Error::Failed("the ledger returned no state".to_owned()))?;
    let state = last.state.clone().unwrap_or_default();
    let each = steps(
        &mut cl,
        api::ReplayCaseRequest {
            mode: api::ReplayMode::EachEvent as i32,
            ..base
        },
    )
    .await?;
    let events: Vec<_> = each
        .iter()
        .take(state.events as usize)
        .filter_map(|s| s.event.as_ref()?.envelope.clone())
        .collect();
    let text = timeline::render(
        &format!("{t}/{c}"),
        &events,
        &state,
        (&last.catalog_version, &last.catalog_digest),
        a.at.as_deref(),
    );
    let json = json!({
        "tenant": t,
        "case_id": c,
        "as_of": a.at,
        "catalog_version": last.catalog_version,
        "catalog_digest": last.catalog_digest,
        "events": each.iter().take(state.events as usize).map(|s| {
            let e = s.event.as_ref();
            json!({
                "position": e.map(|e| e.case_position),
                "stream_seq": e.map(|e| e.stream_seq),
                "lane": e.and_then(|e| e.envelope.as_ref()).map(|env| ["front_stage", "back_stage", "recovery"][timeline::lane(env)]),
                "event": e.and_then(|e| envelope_json(&e.raw)),
            })
        }).collect::<Vec<_>>(),
        "state": state_json(&state),
    });
    Ok(Report::ok(text, json))
}

fn state_json(s: &api::CaseState) -> serde_json::Value {
    json!({
        "status": s.status,
        "events": s.events,
        "tip_sequence": s.tip_sequence,
        "tip_sha256": hex(&s.tip_sha256),
        "promise_kept": s.promise_kept,
        "kept_late": s.kept_late,
        "promise_broken": s.promise_broken,
        "runs": s.runs,
        "recoveries": s.recoveries,
        "retries_requested": s.retries_requested,
        "feedback": s.feedback,
        "interactions": s.interactions,
        "closed": s.closed,
        "promise": s.promise.as_ref().map(|p| json!({
            "service_code": p.service_code,
            "catalog_version": p.catalog_version,
            "deadline": p.deadline.as_ref().map(|d| casework_domain::chain::from_timestamp(d).to_rfc3339()),
            "outcome": p.outcome,
        })),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn fault(f: i32) -> String {
    api::LinkFault::try_from(f)
        .map(|f| {
            f.as_str_name()
                .trim_start_matches("LINK_FAULT_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "?".to_owned())
}

fn link_json(b: &Option<api::BrokenLink>) -> serde_json::Value {
    b.as_ref().map_or(serde_json::Value::Null, |b| {
        json!({ "case_seq": b.case_seq, "stream_seq": b.stream_seq, "fault": fault(b.fault), "detail": b.detail })
    })
}

fn verdict_json(v: &Option<api::Verdict>) -> serde_json::Value {
    v.as_ref().map_or(serde_json::Value::Null, |v| {
        json!({
            "intact": v.intact,
            "examined": v.examined,
            "verified_sequence": v.verified_sequence,
            "verified_sha256": hex(&v.verified_sha256),
            "first_break": link_json(&v.first_break),
        })
    })
}

fn verification_text(v: &api::CaseVerification) -> String {
    let side = |name: &str, x: &Option<api::Verdict>| match x {
        None => format!("  {name:8} not checked\n"),
        Some(x) if x.intact => format!(
            "  {name:8} intact ({} events, head #{})\n",
            x.examined, x.verified_sequence
        ),
        Some(x) => {
            let b = x.first_break.clone().unwrap_or_default();
            format!(
                "  {name:8} BROKEN at event {} ({}): {}\n",
                b.case_seq,
                fault(b.fault),
                b.detail
            )
        }
    };
    let mut out = format!(
        "{}/{}: {}\n",
        v.tenant,
        v.case_id,
        if v.intact { "intact" } else { "BROKEN" }
    );
    out.push_str(&side("archive", &v.archive));
    out.push_str(&side("stream", &v.stream));
    if v.first_difference > 0 {
        out.push_str(&format!(
            "  the stream differs from the archive from event position {}\n",
            v.first_difference
        ));
    }
    if let Some(r) = &v.recorded
        && !r.intact
    {
        let b = r.first_break.clone().unwrap_or_default();
        out.push_str(&format!(
            "  recorded while archiving: broken at event {} ({})\n",
            b.case_seq,
            fault(b.fault)
        ));
    }
    out
}

fn verification_json(v: &api::CaseVerification) -> serde_json::Value {
    json!({
        "tenant": v.tenant,
        "case_id": v.case_id,
        "intact": v.intact,
        "archive": verdict_json(&v.archive),
        "stream": verdict_json(&v.stream),
        "first_difference": v.first_difference,
        "recorded": v.recorded.as_ref().map(|r| json!({
            "intact": r.intact,
            "first_break": link_json(&r.first_break),
            "events_after_break": r.events_after_break,
        })),
    })
}

/// The verifier key of `--public-key` (the key, or @FILE holding it).
pub fn public_key(arg: &str) -> Result<casework_tlog::note::NoteVerifier> {
    let text = match arg.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| Error::Usage(format!("--public-key @{file}: cannot read it: {e}")))?,
        None => arg.to_owned(),
    };
    casework_tlog::note::NoteVerifier::from_vkey(text.trim()).map_err(|e| {
        Error::Usage(format!(
            "--public-key: not a checkpoint verifier key ({e}); it looks like <origin>+<8 hex>+<base64>, as `casectl checkpoint` prints"
        ))
    })
}

/// `casectl verify --bundle FILE [--public-key K]` (offline).
pub fn verify_bundle(path: &std::path::Path, key: Option<&str>) -> Result<Report> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?;
    let key = key.map(public_key).transpose()?;
    let c = bundle::check(&bytes, key.as_ref())
        .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    let b = &c.bundle;
    let mut text = format!(
        "bundle {} — case {}/{}, {} events, exported {} by {} {}\n",
        path.display(),
        b.tenant,
        b.case_id,
        b.events.len(),
        b.exported_at,
        b.tool.name,
        b.tool.version
    );
    if let Some(cat) = &b.catalog {
        text.push_str(&format!(
            "catalogue {} (sha256 {})\n",
            cat.version, cat.digest
        ));
    }
    match &c.verification.first_break {
        None => text.push_str(&format!(
            "chain intact up to event {} (head matches)\n",
            c.verification.verified_tip.case_seq
        )),
        Some(brk) => text.push_str(&format!(
            "chain BROKEN at event {} ({}): {}\n",
            brk.case_seq,
            casework_ledger::archive::fault_name(brk.fault),
            brk.detail
        )),
    }
    for p in &c.problems {
        text.push_str(&format!("problem: {p}\n"));
    }
    match &c.transparency {
        None => text.push_str(
            "transparency log: not checked (give --public-key to verify the signed checkpoint and every inclusion proof)\n",
        ),
        Some(t) => {
            if let Some(cp) = &t.checkpoint {
                text.push_str(&format!(
                    "checkpoint signed by {}: {} leaves, root {}\n",
                    cp.origin,
                    cp.size,
                    hex::encode(cp.root)
                ));
            }
            text.push_str(&format!(
                "inclusion: {} of {} events proven in the signed log\n",
                t.proven,
                b.events.len()
            ));
            for p in &t.problems {
                text.push_str(&format!("problem: {p}\n"));
            }
        }
    }
    let json = json!({
        "bundle": path.display().to_string(),
        "tenant": b.tenant,
        "case_id": b.case_id,
        "events": b.events.len(),
        "intact": c.is_intact(),
        "first_break": bundle::BundleVerdict::from_verification(&c.verification).first_break,
        "problems": c.problems,
        "transparency": c.transparency.as_ref().map(|t| json!({
            "tree_size": t.checkpoint.as_ref().map(|cp| cp.size),
            "root_hash": t.checkpoint.as_ref().map(|cp| hex::encode(cp.root)),
            "proven": t.proven,
            "problems": t.problems,
        })),
    });
    Ok(Report {
        text,
        json,
        problem: !c.is_intact(),
    })
}

/// `casectl verify`.
pub async fn verify(url: &Target, tenant: Option<&str>, a: VerifyArgs) -> Result<Report> {
    if let Some(path) = &a.bundle {
        return verify_bundle(path, a.public_key.as_deref());
    }
    if let Some(files) = &a.consistency {
        return verify_consistency(url, &files[0], &files[1], a.public_key.as_deref()).await;
    }
    let mut cl = client(url).await?;
    if a.all {
        let mut s = cl
            .verify_all(api::VerifyAllRequest {
                tenant: tenant.unwrap_or_default().to_owned(),
                archive_only: a.archive_only,
                only_broken: false,
            })
            .await
            .map_err(|e| Error::from_status("verify --all", e))?
            .into_inner();
        let (mut text, mut cases, mut broken) = (String::new(), Vec::new(), 0);
        while let Some(v) = s.next().await {
            let v = v.map_err(|e| Error::from_status("verify --all", e))?;
            if !v.intact {
                broken += 1;
                text.push_str(&verification_text(&v));
            }
            cases.push(verification_json(&v));
        }
        text.push_str(&format!(
            "{} cases verified: {} intact, {broken} broken\n",
            cases.len(),
            cases.len() - broken
        ));
        return Ok(Report {
            text,
            json: json!({ "cases": cases, "broken": broken }),
            problem: broken > 0,
        });
    }
    let case = a.case.as_deref().unwrap_or_default();
    let (t, c) = parse_case(case, tenant)?;
    let v = cl
        .verify_case(api::VerifyCaseRequest {
            tenant: t,
            case_id: c,
            archive_only: a.archive_only,
        })
        .await
        .map_err(|e| Error::from_status("verify", e))?
        .into_inner();
    Ok(Report {
        text: verification_text(&v),
        json: verification_json(&v),
        problem: !v.intact,
    })
}

/// `casectl export`.
pub async fn export(url: &Target, tenant: Option<&str>, a: ExportArgs) -> Result<Report> {
    let (t, c) = parse_case(&a.case, tenant)?;
    let mut cl = client(url).await?;
    let r = cl
        .export_case(api::ExportCaseRequest {
            tenant: t,
            case_id: c,
        })
        .await
        .map_err(|e| Error::from_status("export", e))?
        .into_inner();
    let path = crate::output_path(a.output, &r.file_name);
    if path.as_os_str() == "-" {
        std::io::stdout()
            .write_all(&r.bundle_json)
            .map_err(|e| Error::Failed(e.to_string()))?;
        return Ok(Report::ok(String::new(), serde_json::Value::Null));
    }
    std::fs::write(&path, &r.bundle_json)
        .map_err(|e| Error::Failed(format!("cannot write {}: {e}", path.display())))?;
    Ok(Report::ok(
        format!(
            "wrote {} ({} bytes); verify it anywhere with: casectl verify --bundle {}\n",
            path.display(),
            r.bundle_json.len(),
            path.display()
        ),
        json!({ "file": path.display().to_string(), "bytes": r.bundle_json.len() }),
    ))
}

/// `casectl tail`: prints events as they arrive until `stop` completes,
/// the limit is reached, or the server ends the stream.
pub async fn tail(
    url: &Target,
    tenant: Option<&str>,
    a: TailArgs,
    as_json: bool,
    out: &mut (dyn Write + Send),
    stop: impl Future<Output = ()>,
) -> Result<usize> {
    let mut cl = client(url).await?;
    let req = api::SubscribeRequest {
        tenant: tenant.unwrap_or_default().to_owned(),
        case_id: a.case_id.unwrap_or_default(),
        writer: a.writer.unwrap_or_default(),
        event_type: a.event_type.unwrap_or_default(),
        after_position: a.from.unwrap_or_default(),
        start: if a.from_start {
            api::Start::Beginning as i32
        } else {
            api::Start::Unspecified as i32
        },
        start_time: None,
    };
    let mut s = cl
        .subscribe(req)
        .await
        .map_err(|e| Error::from_status("tail", e))?
        .into_inner();
    tokio::pin!(stop);
    let mut n = 0;
    loop {
        if a.limit.is_some_and(|l| n >= l) {
            return Ok(n);
        }
        let item = tokio::select! {
            _ = &mut stop => return Ok(n),
            i = s.next() => i,
        };
        let Some(item) = item else {
            return Ok(n);
        };
        let r = item.map_err(|e| Error::from_status("tail", e))?;
        let e = r.event.unwrap_or_default();
        let line = if as_json {
            json!({
                "position": r.position,
                "stream_seq": e.stream_seq,
                "subject": e.subject,
                "event": envelope_json(&e.raw),
            })
            .to_string()
        } else {
            let env = e.envelope.unwrap_or_default();
            format!(
                "{}  {}/{} #{} {:10} {}  [{}]",
                env.occurred_at
                    .as_ref()
                    .map(|t| casework_domain::chain::from_timestamp(t)
                        .format("%H:%M:%S%.3f")
                        .to_string())
                    .unwrap_or_default(),
                env.tenant,
                env.case_id,
                env.sequence,
                env.writer,
                timeline::describe(&env),
                r.position
            )
        };
        writeln!(out, "{line}").map_err(|e| Error::Failed(e.to_string()))?;
        n += 1;
    }
}

/// `casectl verify --consistency OLD NEW --public-key K`: both checkpoints
/// signed by K, and the ledger's consistency proof between them verified
/// here (the ledger is not trusted for the verdict).
pub async fn verify_consistency(
    url: &Target,
    old: &std::path::Path,
    new: &std::path::Path,
    key: Option<&str>,
) -> Result<Report> {
    use casework_tlog::{merkle, note};
    let key = public_key(key.ok_or_else(|| {
        Error::Usage("--consistency needs --public-key (the ledger's checkpoint key)".to_owned())
    })?)?;
    let open = |p: &std::path::Path| -> Result<note::Checkpoint> {
        let text = std::fs::read_to_string(p)
            .map_err(|e| Error::Usage(format!("cannot read {}: {e}", p.display())))?;
        note::open_checkpoint(&key, &text)
            .map_err(|e| Error::Usage(format!("{}: {e}", p.display())))
    };
    let (a, b) = (open(old)?, open(new)?);
    if a.size > b.size {
        return Err(Error::Usage(format!(
            "{} has {} leaves, more than {} ({}); give the older checkpoint first",
            old.display(),
            a.size,
            new.display(),
            b.size
        )));
    }
    let proof = client(url)
        .await?
        .get_consistency_proof(api::GetConsistencyProofRequest {
            old_size: a.size,
            new_size: b.size,
        })
        .await
        .map_err(|e| Error::from_status("consistency proof", e))?
        .into_inner();
    let path: Option<Vec<merkle::Hash>> = proof
        .path
        .iter()
        .map(|h| h.as_slice().try_into().ok())
        .collect();
    let verdict = match path {
        None => Err("the proof is not a list of SHA-256 hashes".to_owned()),
        Some(path) => merkle::verify_consistency(a.size, b.size, &a.root, &b.root, &path)
            .map_err(|e| e.to_string()),
    };
    let text = match &verdict {
        Ok(()) => format!(
            "consistent: the log of {} leaves (root {}) only extends the log of {} leaves (root {})\n",
            b.size,
            hex::encode(b.root),
            a.size,
            hex::encode(a.root)
        ),
        Err(e) => format!(
            "INCONSISTENT: the log of {} leaves does not extend the log of {} leaves: {e}\n",
            b.size, a.size
        ),
    };
    let problem = verdict.is_err();
    Ok(Report {
        text,
        json: json!({
            "old_size": a.size, "new_size": b.size,
            "consistent": !problem,
            "problem": verdict.err(),
        }),
        problem,
    })
}

/// `casectl checkpoint`.
pub async fn checkpoint(url: &Target, a: CheckpointArgs) -> Result<Report> {
    let cp = client(url)
        .await?
        .get_checkpoint(api::GetCheckpointRequest {
            tree_size: 0,
            sign_now: a.now,
        })
        .await
        .map_err(|e| Error::from_status("checkpoint", e))?
        .into_inner();
    if let Some(path) = &a.output {
        std::fs::write(path, &cp.note)
            .map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(Report::ok(
        format!(
            "{}\npublic key: {}\n{}",
            cp.note.trim_end(),
            cp.public_key,
            a.output
                .as_ref()
                .map(|p| format!("saved to {}\n", p.display()))
                .unwrap_or_default()
        ),
        json!({
            "origin": cp.origin,
            "tree_size": cp.tree_size,
            "root_hash": hex::encode(&cp.root_hash),
            "public_key": cp.public_key,
            "note": cp.note,
        }),
    ))
}

/// `casectl keygen`.
pub fn keygen(a: KeygenArgs) -> Result<Report> {
    let mut seed = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut seed);
    let signer = casework_tlog::note::NoteSigner::new(&a.origin, seed)
        .map_err(|e| Error::Usage(format!("--origin {:?}: {e}", a.origin)))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&a.output).map_err(|e| {
        Error::Usage(format!(
            "cannot create {} ({e}); choose a file that does not exist yet",
            a.output.display()
        ))
    })?;
    std::io::Write::write_all(&mut f, format!("{}\n", signer.skey()).as_bytes())
        .map_err(|e| Error::Failed(format!("writing {}: {e}", a.output.display())))?;
    let vkey = signer.verifier().vkey();
    Ok(Report::ok(
        format!(
            "private key written to {} (keep it secret; mount it as the ledger's checkpoint_key_file)\npublic key: {vkey}\n",
            a.output.display()
        ),
        json!({ "file": a.output.display().to_string(), "public_key": vkey }),
    ))
}
