//! The deadline fire path of the reconciler against a real nats-server,
//! through a log wrapper that counts reads (whole and incremental) and
//! appends (one event each) and can inject a failure (a crash between two
//! appends) or another writer's append (the kept-versus-broken race) at a
//! chosen moment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use casework_caselog::jetstream::{NatsOptions, StreamOptions, connect, ensure_streams};
use casework_caselog::{
    Appended, CaseKey, CaseLog, Deliveries, Error, Head, JetStreamLog, Result, StoredEvent,
};
use casework_domain::chain::timestamp;
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{CaseId, EventId, NewEvent, RawEvent, Tenant, Writer};
use casework_recovery::projection::Projection;
use casework_recovery::reconciler::RecoveryReconciler;
use casework_recovery::views::Views;
use casework_runtime::held::CaseCache;
use casework_runtime::reconcile::{Failure, Reconciler};
use casework_runtime::timers::Timers;
use casework_testkit::NatsServer;
use chrono::{DateTime, Utc};

const VERSION: &str = "2026-11-01.1";

/// Another writer's append to make just before one of ours.
type Intrusion = (JetStreamLog, NewEvent);

/// One append attempted: the event's type and when it was decided (every
/// event of one decision has the decision's `now`).
#[derive(Debug, Clone)]
struct Attempt {
    event_type: String,
    decided_at: DateTime<Utc>,
}

/// A recovery log that counts what the reconciler does with it.
#[derive(Debug)]
struct Watched {
    inner: JetStreamLog,
    /// Whole-case reads.
    reads: AtomicUsize,
    /// Reads of what follows a head.
    reads_after: AtomicUsize,
    /// Every append attempted, in order.
    appends: Mutex<Vec<Attempt>>,
    /// Fail the append with this index (0-based) as if the process died
    /// before making it.
    fail_append: AtomicUsize,
    /// Made right before the next append.
    intrude: Mutex<Option<Intrusion>>,
}

impl Watched {
    fn new(inner: JetStreamLog) -> Self {
        Self {
            inner,
            reads: AtomicUsize::new(0),
            reads_after: AtomicUsize::new(0),
            appends: Mutex::new(Vec::new()),
            fail_append: AtomicUsize::new(usize::MAX),
            intrude: Mutex::new(None),
        }
    }

    /// Forgets the counts (a new wake-up).
    fn reset(&self) {
        self.reads.store(0, Ordering::SeqCst);
        self.reads_after.store(0, Ordering::SeqCst);
        self.appends.lock().unwrap().clear();
        self.fail_append.store(usize::MAX, Ordering::SeqCst);
    }

    /// Event types of the appends attempted, in order.
    fn appends(&self) -> Vec<String> {
        self.appends
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.event_type.clone())
            .collect()
    }

    /// The appends attempted, grouped by the decision that made them.
    fn decisions(&self) -> Vec<Vec<String>> {
        let mut out: Vec<(DateTime<Utc>, Vec<String>)> = Vec::new();
        for a in self.appends.lock().unwrap().iter() {
            match out.last_mut() {
                Some((at, types)) if *at == a.decided_at => types.push(a.event_type.clone()),
                _ => out.push((a.decided_at, vec![a.event_type.clone()])),
            }
        }
        out.into_iter().map(|(_, t)| t).collect()
    }

    /// (whole-case reads, reads after a head).
    fn reads(&self) -> (usize, usize) {
        (
            self.reads.load(Ordering::SeqCst),
            self.reads_after.load(Ordering::SeqCst),
        )
    }
}

#[async_trait]
impl CaseLog for Watched {
    async fn append_event(
        &self,
        case: &CaseKey,
        after: Option<&Head>,
        event: NewEvent,
        traceparent: Option<&str>,
    ) -> Result<Appended> {
        let index = {
            let mut a = self.appends.lock().unwrap();
            a.push(Attempt {
                event_type: event.event_type().to_string(),
                decided_at: event.occurred_at,
            });
            a.len() - 1
        };
        let intrusion = self.intrude.lock().unwrap().take();
        if let Some((other, event)) = intrusion {
            let head = other.head(case).await?;
            other.append(case, head.as_ref(), vec![event]).await?;
        }
        if index == self.fail_append.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("injected: the process died here".into()));
        }
        self.inner
            .append_event(case, after, event, traceparent)
            .await
    }

    async fn read_after(
        &self,
        case: &CaseKey,
        after: Option<&Head>,
        until: Option<(u64, u64)>,
    ) -> Result<Vec<StoredEvent>> {
        self.reads_after.fetch_add(1, Ordering::SeqCst);
        self.inner.read_after(case, after, until).await
    }

    async fn read(&self, case: &CaseKey, from_stream_seq: u64) -> Result<Vec<StoredEvent>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(case, from_stream_seq).await
    }

    async fn read_raw(&self, case: &CaseKey) -> Result<Vec<RawEvent>> {
        self.inner.read_raw(case).await
    }

    async fn head(&self, case: &CaseKey) -> Result<Option<Head>> {
        self.inner.head(case).await
    }

    async fn consume(&self, durable: &str, filters: &[String]) -> Result<Deliveries> {
        self.inner.consume(durable, filters).await
    }

    async fn tail(&self, filter: &str, from_stream_seq: u64) -> Result<Deliveries> {
        self.inner.tail(filter, from_stream_seq).await
    }

    async fn last_stream_seq(&self) -> Result<u64> {
        self.inner.last_stream_seq().await
    }
}

struct Fixture {
    _server: NatsServer,
    _dir: tempfile::TempDir,
    client: async_nats::Client,
    views: Views,
    intake: JetStreamLog,
    fulfilment: JetStreamLog,
    log: Arc<Watched>,
    reconciler: RecoveryReconciler,
}

impl Fixture {
    /// A reconciler on the same log with nothing held (a restarted
    /// replica).
    fn restarted(&self) -> RecoveryReconciler {
        reconciler(&self.client, self.log.clone(), self.views.clone())
    }
}

fn reconciler(client: &async_nats::Client, log: Arc<Watched>, views: Views) -> RecoveryReconciler {
    RecoveryReconciler::new(
        log,
        Arc::new(casework_runtime::load_catalogs(&[]).unwrap()),
        Timers::new(client.clone(), Writer::Recovery),
        views,
        Arc::new(CaseCache::<Projection>::new("recovery", 100)),
    )
}

async fn fixture() -> Fixture {
    let server = NatsServer::start();
    let client = connect(&NatsOptions {
        url: server.url(),
        ..Default::default()
    })
    .await
    .unwrap();
    ensure_streams(&client, &StreamOptions::default())
        .await
        .unwrap();
    let log = Arc::new(Watched::new(JetStreamLog::new(
        client.clone(),
        "recovery-test",
        Some(Writer::Recovery),
    )));
    let dir = tempfile::tempdir().unwrap();
    let db = casework_runtime::store::open(dir.path(), "recovery").unwrap();
    let views = Views::open(db).unwrap();
    Fixture {
        reconciler: reconciler(&client, log.clone(), views.clone()),
        intake: JetStreamLog::new(client.clone(), "intake-test", Some(Writer::Intake)),
        fulfilment: JetStreamLog::new(client.clone(), "fulfilment-test", Some(Writer::Fulfilment)),
        client,
        views,
        _server: server,
        _dir: dir,
        log,
    }
}

fn ev(case: &CaseKey, key: &str, payload: Payload) -> NewEvent {
    NewEvent {
        event_id: EventId::derive(&case.case_id, "test", key),
        occurred_at: Utc::now(),
        causation_id: String::new(),
        correlation_id: case.case_id.to_string(),
        payload,
    }
}

/// Opens a `refund` case (on_promise_broken: apology, voucher 1000,
/// escalate) due at `deadline`, as intake does.
async fn open_case(intake: &JetStreamLog, deadline: DateTime<Utc>) -> CaseKey {
    let case = CaseKey {
        tenant: Tenant::parse("acme").unwrap(),
        case_id: CaseId::from_ulid(ulid::Ulid::new()),
    };
    let events = vec![
        ev(
            &case,
            "case_opened",
            Payload::CaseOpened(pb::CaseOpened {
                customer_id: "c-1".into(),
                channel: pb::Channel::Chat as i32,
                service_code: "refund".into(),
                summary: "test".into(),
                ..Default::default()
            }),
        ),
        ev(
            &case,
            "promise_made",
            Payload::PromiseMade(pb::PromiseMade {
                service_code: "refund".into(),
                catalog_version: VERSION.into(),
                deadline: Some(timestamp(deadline)),
                promised_outcome: "done".into(),
                ..Default::default()
            }),
        ),
    ];
    intake.append(&case, None, events).await.unwrap();
    case
}

fn types(log: &[StoredEvent]) -> Vec<&str> {
    log.iter().map(|e| e.envelope.event_type.as_str()).collect()
}

const LADDER: [&str; 6] = [
    "recovery_started",
    "apology_sent",
    "compensation_proposed",
    "compensation_granted",
    "case_escalated",
    "recovery_completed",
];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The case's whole log, as the recovery that broke its promise leaves it.
fn broken_and_recovered() -> Vec<&'static str> {
    let mut expected = vec!["case_opened", "promise_made", "promise_broken"];
    expected.extend(LADDER);
    expected
}

fn assert_no_duplicate_ids(log: &[StoredEvent]) {
    let mut ids = std::collections::HashSet::new();
    for e in log {
        assert!(
            ids.insert(e.envelope.event_id.clone()),
            "{} twice",
            e.envelope.event_type
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_reads_once_and_appends_promise_broken_alone_before_the_ladder() {
    let f = fixture().await;
    let case = open_case(&f.intake, Utc::now() - chrono::Duration::seconds(1)).await;

    f.reconciler.reconcile(&case, &[]).await.unwrap();

    // One read (nothing is held yet); promise_broken decided alone, then
    // the ladder as one decision, appended one event at a time; the
    // decision after the ladder is taken on the held state (no read).
    assert_eq!(f.log.reads(), (1, 0));
    let mut one_by_one = strings(&["promise_broken"]);
    one_by_one.extend(strings(&LADDER));
    assert_eq!(f.log.appends(), one_by_one);
    assert_eq!(
        f.log.decisions(),
        [strings(&["promise_broken"]), strings(&LADDER)]
    );
    let log = f.intake.read(&case, 0).await.unwrap();
    assert_eq!(types(&log), broken_and_recovered());
    // The ladder names the broken promise as its cause.
    assert!(
        log[3..]
            .iter()
            .all(|e| e.envelope.causation_id == log[2].envelope.event_id)
    );

    // A repeated fire (redelivery) reads only what follows the held head
    // (nothing) and appends nothing.
    f.log.reset();
    f.reconciler.reconcile(&case, &[]).await.unwrap();
    assert_eq!(f.log.reads(), (0, 1));
    assert!(f.log.appends().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_on_a_closed_case_reads_nothing() {
    let f = fixture().await;
    let case = open_case(&f.intake, Utc::now() - chrono::Duration::seconds(1)).await;
    f.reconciler.reconcile(&case, &[]).await.unwrap();
    // Intake closes the case; its delivery wakes recovery, which folds it
    // (it continues the held head: no read).
    let head = f.intake.head(&case).await.unwrap();
    let closed = f
        .intake
        .append(
            &case,
            head.as_ref(),
            vec![ev(
                &case,
                "case_closed",
                Payload::CaseClosed(pb::CaseClosed {
                    resolution: pb::Resolution::Unresolved as i32,
                    summary: "escalated".into(),
                }),
            )],
        )
        .await
        .unwrap();
    f.log.reset();
    f.reconciler.reconcile(&case, &closed.events).await.unwrap();
    assert_eq!(f.log.reads(), (0, 0));
    assert!(f.log.appends().is_empty());
    // Closed with no recovery open: a (stale) deadline fire costs no read.
    f.reconciler.reconcile(&case, &[]).await.unwrap();
    assert_eq!(f.log.reads(), (0, 0));
    assert!(f.log.appends().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_promise_broken_and_the_ladder_is_healed_by_the_next_fire() {
    let f = fixture().await;
    let case = open_case(&f.intake, Utc::now() - chrono::Duration::seconds(1)).await;

    // The process dies after promise_broken landed, before the ladder.
    f.log.fail_append.store(1, Ordering::SeqCst);
    let first = f.reconciler.reconcile(&case, &[]).await;
    assert!(
        matches!(first, Err(Failure::Retry(_))),
        "the fire must not be acknowledged: {first:?}"
    );
    let log = f.intake.read(&case, 0).await.unwrap();
    assert_eq!(
        types(&log),
        ["case_opened", "promise_made", "promise_broken"]
    );

    // The unacknowledged fire comes again: the recovery follows, and
    // promise_broken is not appended a second time.
    f.log.reset();
    f.reconciler.reconcile(&case, &[]).await.unwrap();
    assert_eq!(f.log.appends(), strings(&LADDER));
    assert_eq!(f.log.decisions(), [strings(&LADDER)]);
    let log = f.intake.read(&case, 0).await.unwrap();
    assert_eq!(types(&log), broken_and_recovered());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_the_ladder_is_healed_after_a_restart_with_the_same_events() {
    let f = fixture().await;
    let case = open_case(&f.intake, Utc::now() - chrono::Duration::seconds(1)).await;

    // The process dies after compensation_proposed (automatic) landed,
    // before its compensation_granted (appends: promise_broken,
    // recovery_started, apology_sent, compensation_proposed, then this).
    f.log.fail_append.store(4, Ordering::SeqCst);
    let first = f.reconciler.reconcile(&case, &[]).await;
    assert!(matches!(first, Err(Failure::Retry(_))), "{first:?}");
    let log = f.intake.read(&case, 0).await.unwrap();
    assert_eq!(types(&log), broken_and_recovered()[..6]);

    // A restarted replica (nothing held) reads the case once and appends
    // exactly the rest of that decision.
    f.log.reset();
    let restarted = f.restarted();
    restarted.reconcile(&case, &[]).await.unwrap();
    assert_eq!(f.log.reads(), (1, 0));
    assert_eq!(
        f.log.appends(),
        strings(&[
            "compensation_granted",
            "case_escalated",
            "recovery_completed"
        ])
    );
    let log = f.intake.read(&case, 0).await.unwrap();
    assert_eq!(types(&log), broken_and_recovered());
    assert_no_duplicate_ids(&log);
    let Some(Payload::CompensationGranted(g)) = &log[6].envelope.payload else {
        panic!("grant")
    };
    assert!(
        g.reason.contains("within the automatic limit"),
        "{}",
        g.reason
    );
    assert_eq!(g.compensation_id, "r1-c2");
    // Every event of the ladder names the broken promise as its cause.
    assert!(
        log[3..]
            .iter()
            .all(|e| e.envelope.causation_id == log[2].envelope.event_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promise_kept_landing_first_wins_the_race_and_nothing_is_appended() {
    let f = fixture().await;
    let case = open_case(&f.intake, Utc::now() - chrono::Duration::seconds(1)).await;
    // Fulfilment decided before the deadline (late = false) and its append
    // lands between recovery's read and recovery's append.
    let kept = ev(
        &case,
        "promise_kept",
        Payload::PromiseKept(pb::PromiseKept {
            run: 1,
            late: false,
            ..Default::default()
        }),
    );
    *f.log.intrude.lock().unwrap() = Some((f.fulfilment.clone(), kept));

    f.reconciler.reconcile(&case, &[]).await.unwrap();

    // The append of promise_broken conflicted; what followed the head was
    // read and the promise is kept on time: nothing more.
    assert_eq!(f.log.appends(), strings(&["promise_broken"]));
    assert_eq!(f.log.reads(), (1, 1));
    let log = f.intake.read(&case, 0).await.unwrap();
    assert_eq!(types(&log), ["case_opened", "promise_made", "promise_kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_promise_kept_landing_first_still_leaves_the_promise_broken() {
    let f = fixture().await;
    let case = open_case(&f.intake, Utc::now() - chrono::Duration::seconds(1)).await;
    // Fulfilment finished after the deadline (late = true) and its append
    // lands between recovery's read and recovery's append.
    let kept = ev(
        &case,
        "promise_kept",
        Payload::PromiseKept(pb::PromiseKept {
            run: 1,
            late: true,
            ..Default::default()
        }),
    );
    // promise_broken conflicts, is decided again after reading what
    // followed the head (kept late is not kept on time, so the promise is
    // broken after all), and lands, followed by its recovery.
    *f.log.intrude.lock().unwrap() = Some((f.fulfilment.clone(), kept));
    f.reconciler.reconcile(&case, &[]).await.unwrap();
    assert_eq!(f.log.reads(), (1, 1));
    let log = f.intake.read(&case, 0).await.unwrap();
    assert_eq!(
        &types(&log)[..4],
        [
            "case_opened",
            "promise_made",
            "promise_kept",
            "promise_broken"
        ]
    );
    assert_eq!(
        log.iter()
            .filter(|e| e.envelope.event_type == "recovery_completed")
            .count(),
        1
    );
    assert_no_duplicate_ids(&log);
}
