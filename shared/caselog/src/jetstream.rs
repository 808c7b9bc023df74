//! The per-case log on NATS JetStream (DESIGN.md §3).
//!
//! - One stream, `CASES` (`case.>`), file storage, `deny_delete`,
//!   `deny_purge`, a duplicate window, direct get, no age or size limit; and `TIMERS` (`timer.>`), with message schedules,
//!   for durable timers. Both are created or checked at start, and a server
//!   that lacks what we rely on is refused with its version and the missing
//!   capability.
//! - An append carries exactly two guards: `Nats-Msg-Id` = event id, and the
//!   case's expected last stream sequence over `case.<tenant>.<case_id>.>`.
//!   One message is one event: no atomic batches (on a single server they
//!   commit at a few hundred per second per stream, DESIGN.md §3).
//! - An ambiguous failure (timeout, disconnect) is retried with the same ids
//!   and expectation. On current servers a retry whose first attempt landed
//!   answers "wrong last sequence" (10071), not "duplicate": the conflict
//!   path then reads the case after the expected head and recognises its own
//!   event ids, so the retry neither duplicates nor loses an event.
//! - Reads use batched direct gets (one round trip per 256 events), and
//!   never ask the server to look past the case's last event: a search for
//!   a next message that does not exist costs nats-server a linear scan of
//!   the rest of the stream's message block (its per-subject index does not
//!   help a wildcard filter over many distinct subjects), about 15 ms on a
//!   stream of 160,000 events. So a read first fetches the case's last
//!   message (`last_by_subj`, indexed), takes the event count from its
//!   envelope, and asks for exactly that many.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use casework_domain::{NewEvent, RawEvent, SealedEvent, Writer};
use futures::StreamExt;
use serde::Deserialize;

use crate::headers::event_headers;
use crate::types::Acker;
use crate::{
    Appended, CaseKey, CaseLog, Deliveries, Delivery, Error, Head, Result, StoredEvent,
    find_landed, seal_for, stored_of,
};

/// The stream of every case's log.
pub const CASES_STREAM: &str = "CASES";
/// The stream of durable timers (message schedules).
pub const TIMERS_STREAM: &str = "TIMERS";
/// The stream of the ledger's signed checkpoints.
pub const CHECKPOINTS_STREAM: &str = "CHECKPOINTS";
/// The one subject the ledger publishes its signed checkpoints on.
pub const CHECKPOINT_SUBJECT: &str = "tlog.checkpoint";
/// The stream of customers' data keys (crypto-shredding): wrapped keys and
/// their erasure records under `keys.<tenant>.key.<subject>`, customer
/// lookups under `keys.<tenant>.customer.<lookup>`.
pub const KEYS_STREAM: &str = "KEYS";
/// Lowest server version Casework accepts (message schedules arrived in
/// 2.12).
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 12, 0);

const WRONG_LAST_SEQUENCE: u64 = 10071;
const READ_BATCH: usize = 256;
const APPEND_ATTEMPTS: u32 = 6;

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Server URL(s), comma-separated (e.g. `nats://127.0.0.1:4222`).
    pub url: String,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// A `.creds` file (JWT + nkey), instead of user and password.
    pub creds_file: Option<PathBuf>,
    /// Connection name shown by the server (e.g. `intake-0`).
    pub name: String,
    /// Timeout of one request (publish ack, direct get).
    pub request_timeout: Duration,
    /// Where replies arrive (`<prefix>.…`). `None`: the user's own
    /// ([`crate::permissions::inbox_prefix`]), which is all its
    /// permissions let it subscribe to; `_INBOX` without a user.
    pub inbox_prefix: Option<String>,
}

impl NatsOptions {
    /// The inbox prefix this connection uses.
    pub fn effective_inbox_prefix(&self) -> String {
        self.inbox_prefix.clone().unwrap_or_else(|| {
            self.user
                .as_deref()
                .map_or_else(|| "_INBOX".to_owned(), crate::permissions::inbox_prefix)
        })
    }
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            user: None,
            password: None,
            creds_file: None,
            name: "casework".to_owned(),
            request_timeout: Duration::from_secs(5),
            inbox_prefix: None,
        }
    }
}

/// Deployment settings of the streams.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Replicas (1 locally, 3 or 5 in a JetStream cluster).
    pub replicas: usize,
    /// How long JetStream remembers message ids for deduplication.
    pub duplicate_window: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// Settings of a durable consumer.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// How long a delivery may stay unacknowledged before it comes again.
    pub ack_wait: Duration,
    /// Most deliveries in flight (unacknowledged) at once.
    pub max_ack_pending: i64,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1024,
        }
    }
}

/// Connects to NATS with `opts`.
pub async fn connect(opts: &NatsOptions) -> Result<async_nats::Client> {
    let mut c = watch_permissions(
        async_nats::ConnectOptions::new()
            .name(&opts.name)
            .request_timeout(Some(opts.request_timeout))
            .custom_inbox_prefix(opts.effective_inbox_prefix()),
        opts.user.clone(),
    );
    if let Some(path) = &opts.creds_file {
        c = c
            .credentials_file(path)
            .await
            .map_err(|e| Error::Nats(format!("credentials file {}: {e}", path.display())))?;
    } else if let (Some(u), Some(p)) = (&opts.user, &opts.password) {
        c = c.user_and_password(u.clone(), p.clone());
    }
    c.connect(server_addrs(&opts.url)?.as_slice())
        .await
        .map_err(|e| Error::Nats(format!("connecting to {}: {e}", opts.url)))
}

/// The last permissions violation the broker reported to this process, and
/// when. Process-wide: a service process holds one NATS identity.
static LAST_VIOLATION: std::sync::Mutex<Option<(std::time::Instant, String)>> =
    std::sync::Mutex::new(None);

/// Has `options` report the broker's permissions violations: the broker
/// answers a request its user may not make with an error event, not a reply,
/// so the request itself only times out. Each violation is logged at error
/// naming the user, and remembered for [`permission_violation_since`], so a
/// service started with the wrong credentials says so instead of waiting
/// for a broker that will never answer.
pub fn watch_permissions(
    options: async_nats::ConnectOptions,
    user: Option<String>,
) -> async_nats::ConnectOptions {
    options.event_callback(move |event| {
        let user = user.clone();
        async move {
            if let async_nats::Event::ServerError(async_nats::ServerError::Other(e)) = event
                && e.to_lowercase().contains("permissions violation")
            {
                tracing::error!(
                    user = user.as_deref().unwrap_or("(none)"),
                    violation = %e,
                    "the broker refused a request of this NATS user: its credentials are not this service's, or its permissions are out of date"
                );
                *LAST_VIOLATION.lock().expect("violation") = Some((std::time::Instant::now(), e));
            }
        }
    })
}

/// The latest permissions violation reported since `since`, if any.
pub fn permission_violation_since(since: std::time::Instant) -> Option<String> {
    LAST_VIOLATION
        .lock()
        .expect("violation")
        .as_ref()
        .filter(|(at, _)| *at >= since)
        .map(|(_, e)| e.clone())
}

/// The servers of a comma-separated URL list (`nats://a:4222,nats://b:4222`):
/// async-nats parses a single `&str` as one address, so a cluster's list is
/// split here and every node given to the client (it fails over between them).
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| Error::Nats(format!("NATS server URL {u:?}: {e}")))
        })
        .collect::<Result<Vec<_>>>()
        .and_then(|v| {
            if v.is_empty() {
                Err(Error::Nats(format!("no NATS server URL in {urls:?}")))
            } else {
                Ok(v)
            }
        })
}

/// Parses `major.minor.patch` (ignoring any `-suffix`).
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim_start_matches('v').split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().unwrap_or(Some(0))?))
}

/// Refuses a server older than [`MIN_SERVER_VERSION`].
pub fn check_server_version(version: &str) -> Result<()> {
    match parse_version(version) {
        Some(v) if v >= MIN_SERVER_VERSION => Ok(()),
        Some(_) => Err(Error::Unsupported {
            server_version: version.to_owned(),
            missing: "message schedules (added in 2.12)".to_owned(),
        }),
        None => Err(Error::Unsupported {
            server_version: version.to_owned(),
            missing: "a recognisable version number".to_owned(),
        }),
    }
}

/// The `CASES` stream configuration of DESIGN.md §3.
pub fn cases_stream_config(opts: &StreamOptions) -> stream::Config {
    stream::Config {
        name: CASES_STREAM.to_owned(),
        description: Some(
            "Casework per-case logs: case.<tenant>.<case_id>.<writer>.<event_type>. Append-only audit log."
                .to_owned(),
        ),
        subjects: vec!["case.>".to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        // Never drop old events to make room: refuse new ones instead.
        discard: stream::DiscardPolicy::New,
        max_messages: -1,
        max_bytes: -1,
        max_age: Duration::ZERO,
        num_replicas: opts.replicas,
        duplicate_window: opts.duplicate_window,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// The `TIMERS` stream configuration: durable timers as message schedules,
/// never on `CASES`.
pub fn timers_stream_config(opts: &StreamOptions) -> stream::Config {
    stream::Config {
        name: TIMERS_STREAM.to_owned(),
        description: Some(
            "Casework durable timers (message schedules): timer.<writer>.<kind>.<tenant>.<case_id>"
                .to_owned(),
        ),
        subjects: vec!["timer.>".to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        num_replicas: opts.replicas,
        duplicate_window: opts.duplicate_window,
        allow_direct: true,
        allow_rollup: true,
        // One message per subject: a timer's schedule (replaced when it is
        // moved) and its last fire. Old fires do not pile up.
        max_messages_per_subject: 1,
        allow_message_schedules: true,
        allow_message_ttl: true,
        ..Default::default()
    }
}

/// The stream of the ledger's signed checkpoints (subject
/// [`CHECKPOINT_SUBJECT`]): every checkpoint kept, none removable, so that
/// anyone allowed to read it can keep them and act as a witness.
pub fn checkpoints_stream_config(opts: &StreamOptions) -> stream::Config {
    stream::Config {
        name: CHECKPOINTS_STREAM.to_owned(),
        description: Some(
            "Casework ledger signed checkpoints (C2SP tlog-checkpoint signed notes)".to_owned(),
        ),
        subjects: vec![CHECKPOINT_SUBJECT.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        num_replicas: opts.replicas,
        duplicate_window: opts.duplicate_window,
        allow_direct: true,
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    }
}

/// The stream of customers' data keys ([`KEYS_STREAM`]). Unlike `CASES` it
/// allows deleting a message: an erasure overwrites the wrapped key in the
/// store (JetStream's secure erase) and leaves a record that it did. It is
/// never purged wholesale.
pub fn keys_stream_config(opts: &StreamOptions) -> stream::Config {
    stream::Config {
        name: KEYS_STREAM.to_owned(),
        description: Some(
            "Casework customers' data keys, wrapped by the KEK (crypto-shredding)".to_owned(),
        ),
        subjects: vec!["keys.>".to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        num_replicas: opts.replicas,
        duplicate_window: opts.duplicate_window,
        allow_direct: true,
        deny_delete: false,
        deny_purge: true,
        ..Default::default()
    }
}

/// Checks an echoed stream configuration for what we rely on; the names of
/// what is missing.
fn missing_capabilities(want: &stream::Config, got: &stream::Config) -> Vec<&'static str> {
    let mut missing = Vec::new();
    let checks: [(&'static str, bool, bool); 5] = [
        (
            "allow_msg_schedules (message schedules)",
            want.allow_message_schedules,
            got.allow_message_schedules,
        ),
        ("deny_delete", want.deny_delete, got.deny_delete),
        ("deny_purge", want.deny_purge, got.deny_purge),
        (
            "allow_direct (direct get)",
            want.allow_direct,
            got.allow_direct,
        ),
        (
            "allow_msg_ttl",
            want.allow_message_ttl,
            got.allow_message_ttl,
        ),
    ];
    for (name, wanted, present) in checks {
        if wanted && !present {
            missing.push(name);
        }
    }
    if got.storage != want.storage {
        missing.push("file storage");
    }
    missing
}

/// How long a starting service waits for JetStream to answer about its
/// streams: a cluster that is still electing its meta leader, or a stream
/// that another service is creating at the same moment (its leader not yet
/// chosen), leaves requests unanswered for a few seconds, and exiting then
/// would only make the supervisor restart us into the same wait.
pub const STREAM_SETUP_PATIENCE: Duration = Duration::from_secs(30);

/// One stream's configuration as the server holds it, creating the stream
/// when it is missing (`true` when this call created it). Requests that go
/// unanswered, and a cluster that says it is not ready, are retried with
/// backoff for [`STREAM_SETUP_PATIENCE`]; every other refusal is final.
async fn lookup_or_create(
    js: &jetstream::Context,
    want: &stream::Config,
    version: &str,
) -> Result<(stream::Config, bool)> {
    use jetstream::ErrorCode;
    use jetstream::context::CreateStreamErrorKind as C;
    use jetstream::context::GetStreamErrorKind as K;
    let not_ready = |c: ErrorCode| {
        [
            ErrorCode::CLUSTER_NOT_AVAILABLE,
            ErrorCode::CLUSTER_NOT_ACTIVE,
            ErrorCode::CLUSTER_NOT_LEADER,
            ErrorCode::CLUSTER_INCOMPLETE,
            ErrorCode::CLUSTER_NO_PEERS,
        ]
        .contains(&c)
    };
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(200);
    loop {
        let transient = match js.get_stream(&want.name).await {
            Ok(s) => return Ok((s.cached_info().config.clone(), false)),
            Err(e) => match e.kind() {
                K::JetStream(je) if je.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                    match js.create_stream(want.clone()).await {
                        Ok(s) => return Ok((s.cached_info().config.clone(), true)),
                        Err(ce) => match ce.kind() {
                            C::TimedOut | C::JetStreamUnavailable => {
                                format!("creating stream {}: {ce}", want.name)
                            }
                            C::JetStream(je) if not_ready(je.error_code()) => {
                                format!("creating stream {}: {ce}", want.name)
                            }
                            _ => {
                                return Err(Error::Nats(format!(
                                    "creating stream {}: {ce}",
                                    want.name
                                )));
                            }
                        },
                    }
                }
                K::JetStream(je)
                    if je.error_code() == ErrorCode::JETSTREAM_NOT_ENABLED
                        || je.error_code() == ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT =>
                {
                    return Err(Error::Unsupported {
                        server_version: version.to_owned(),
                        missing: "JetStream (start the server with -js or a jetstream block)"
                            .to_owned(),
                    });
                }
                K::JetStream(je) if not_ready(je.error_code()) => {
                    format!("looking up stream {}: {e}", want.name)
                }
                K::Request => format!("looking up stream {}: {e}", want.name),
                _ => {
                    return Err(Error::Nats(format!("looking up stream {}: {e}", want.name)));
                }
            },
        };
        if let Some(v) = permission_violation_since(started) {
            return Err(Error::Denied {
                what: format!("stream {}", want.name),
                violation: v,
            });
        }
        if started.elapsed() + pause > STREAM_SETUP_PATIENCE {
            return Err(Error::Nats(format!(
                "{transient}; JetStream did not answer within {}s (is JetStream enabled on \
                 the server, and does its cluster have a leader?)",
                STREAM_SETUP_PATIENCE.as_secs()
            )));
        }
        tracing::warn!(stream = %want.name, error = %transient, "JetStream not ready; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Creates the streams, or checks existing ones, and refuses a server that
/// lacks what Casework relies on.
pub async fn ensure_streams(client: &async_nats::Client, opts: &StreamOptions) -> Result<()> {
    let version = client.server_info().version;
    check_server_version(&version)?;
    let js = jetstream::new(client.clone());
    for want in [
        cases_stream_config(opts),
        timers_stream_config(opts),
        checkpoints_stream_config(opts),
        keys_stream_config(opts),
    ] {
        let (got, created) = lookup_or_create(&js, &want, &version).await?;
        let missing = missing_capabilities(&want, &got);
        if !missing.is_empty() {
            return Err(if created {
                Error::Unsupported {
                    server_version: version.clone(),
                    missing: format!(
                        "stream {} was created without {}",
                        want.name,
                        missing.join(", ")
                    ),
                }
            } else {
                Error::Misconfigured {
                    stream: want.name.clone(),
                    why: format!(
                        "it lacks {}; update it (nats stream edit {}) or let Casework create it",
                        missing.join(", "),
                        want.name
                    ),
                }
            });
        }
        if got.subjects != want.subjects {
            return Err(Error::Misconfigured {
                stream: want.name.clone(),
                why: format!(
                    "its subjects are {:?}, expected {:?}",
                    got.subjects, want.subjects
                ),
            });
        }
    }
    Ok(())
}

fn traceparent_of(m: &jetstream::Message) -> Option<String> {
    m.headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_owned())
}

/// The per-case log on JetStream.
#[derive(Debug, Clone)]
pub struct JetStreamLog {
    client: async_nats::Client,
    js: jetstream::Context,
    instance: String,
    writer: Option<Writer>,
    request_timeout: Duration,
    consumer: ConsumerOptions,
    tail_name: String,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
struct PubReply {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    error: Option<ApiError>,
}

enum PublishFailure {
    Conflict,
    Duplicate,
    Ambiguous(String),
    Fatal(Error),
}

impl JetStreamLog {
    /// A log client over `client`. `instance` names this process in every
    /// envelope; `writer`, when given, refuses other writers' events before
    /// they reach the broker (the broker refuses them too, by permissions).
    pub fn new(client: async_nats::Client, instance: &str, writer: Option<Writer>) -> Self {
        Self {
            js: jetstream::new(client.clone()),
            client,
            instance: instance.to_owned(),
            writer,
            request_timeout: Duration::from_secs(5),
            consumer: ConsumerOptions::default(),
            tail_name: crate::permissions::tail_consumer(
                writer.map_or("reader", Writer::as_str),
                instance,
            ),
        }
    }

    /// Names the consumer of [`CaseLog::tail`] for `service` instead of the
    /// writer (the default; `reader` for a reader): its user's permissions
    /// must name it (see [`crate::permissions::tail_consumer`]). One tail at
    /// a time per log: a second one replaces the first.
    pub fn with_tail_service(mut self, service: &str) -> Self {
        self.tail_name = crate::permissions::tail_consumer(service, &self.instance);
        self
    }

    /// Sets the durable consumers' settings.
    pub fn with_consumer_options(mut self, opts: ConsumerOptions) -> Self {
        self.consumer = opts;
        self
    }

    /// Sets the timeout of one request.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The underlying NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn headers_for(
        &self,
        case: &CaseKey,
        s: &SealedEvent,
        correlation: &str,
        traceparent: Option<&str>,
    ) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", s.event_id.as_str());
        for (k, v) in event_headers(
            case.tenant.as_str(),
            case.case_id.as_str(),
            s,
            correlation,
            traceparent,
        ) {
            h.insert(k, v.as_str());
        }
        h
    }

    async fn publish_once(
        &self,
        case: &CaseKey,
        sealed: &SealedEvent,
        correlation: &str,
        expected: u64,
        traceparent: Option<&str>,
    ) -> std::result::Result<u64, PublishFailure> {
        let mut h = self.headers_for(case, sealed, correlation, traceparent);
        h.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        h.insert(
            "Nats-Expected-Last-Subject-Sequence-Subject",
            case.filter().as_str(),
        );
        let req = async_nats::Request::new()
            .headers(h)
            .payload(bytes::Bytes::from(sealed.bytes.clone()))
            .timeout(Some(self.request_timeout));
        let reply = match self.client.send_request(sealed.subject.clone(), req).await {
            Ok(r) => r,
            Err(e) => {
                use async_nats::RequestErrorKind as K;
                return Err(match e.kind() {
                    K::InvalidSubject | K::MaxPayloadExceeded => {
                        PublishFailure::Fatal(Error::Nats(e.to_string()))
                    }
                    _ => PublishFailure::Ambiguous(e.to_string()),
                });
            }
        };
        let parsed: PubReply = serde_json::from_slice(&reply.payload).map_err(|e| {
            PublishFailure::Ambiguous(format!(
                "unreadable publish reply ({e}): {}",
                String::from_utf8_lossy(&reply.payload)
            ))
        })?;
        if let Some(err) = parsed.error {
            return Err(if err.err_code == WRONG_LAST_SEQUENCE {
                PublishFailure::Conflict
            } else {
                PublishFailure::Fatal(Error::Rejected {
                    code: err.err_code,
                    description: err.description,
                })
            });
        }
        if parsed.duplicate {
            return Err(PublishFailure::Duplicate);
        }
        Ok(parsed.seq)
    }

    /// One direct get of a single message: the last one matching `filter`
    /// (`last_by_subj`), or the first from `seq` on (`next_by_subj`).
    async fn direct_one(
        &self,
        filter: &str,
        next_from: Option<u64>,
    ) -> Result<Option<(u64, String, bytes::Bytes)>> {
        let req = match next_from {
            Some(seq) => serde_json::json!({ "seq": seq.max(1), "next_by_subj": filter }),
            None => serde_json::json!({ "last_by_subj": filter }),
        };
        let msg = self
            .client
            .send_request(
                format!("$JS.API.DIRECT.GET.{CASES_STREAM}"),
                async_nats::Request::new()
                    .payload(req.to_string().into())
                    .timeout(Some(self.request_timeout)),
            )
            .await
            .map_err(|e| Error::Unavailable(format!("direct get of {filter}: {e}")))?;
        match msg.status.map(|s| s.as_u16()) {
            Some(404) => Ok(None),
            Some(code) => Err(Error::Rejected {
                code: code as u64,
                description: msg.description.unwrap_or_default(),
            }),
            None => {
                let h = msg.headers.as_ref();
                let seq: u64 = h
                    .and_then(|h| h.get("Nats-Sequence"))
                    .and_then(|v| v.as_str().parse().ok())
                    .ok_or_else(|| Error::Nats("direct get reply without Nats-Sequence".into()))?;
                let subject = h
                    .and_then(|h| h.get("Nats-Subject"))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                Ok(Some((seq, subject, msg.payload)))
            }
        }
    }

    /// One batched direct get: up to `batch` messages matching `filter`
    /// from `seq`.
    async fn direct_batch(
        &self,
        filter: &str,
        seq: u64,
        batch: usize,
    ) -> Result<(Vec<(u64, String, bytes::Bytes)>, bool)> {
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        let req =
            serde_json::json!({ "seq": seq.max(1), "next_by_subj": filter, "batch": batch.max(1) });
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{CASES_STREAM}"),
                inbox,
                req.to_string().into(),
            )
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        let mut out = Vec::new();
        loop {
            let msg = tokio::time::timeout(self.request_timeout, sub.next())
                .await
                .map_err(|_| Error::Unavailable(format!("direct get of {filter} timed out")))?
                .ok_or_else(|| Error::Unavailable("subscription closed".to_owned()))?;
            let header = |k: &str| {
                msg.headers
                    .as_ref()
                    .and_then(|h| h.get(k))
                    .map(|v| v.as_str().to_owned())
            };
            match msg.status.map(|s| s.as_u16()) {
                Some(404) => return Ok((out, false)),
                Some(204) => {
                    let pending: u64 = header("Nats-Num-Pending")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    return Ok((out, pending > 0));
                }
                Some(503) => {
                    return Err(Error::Unavailable(
                        "no responders for direct get (is the CASES stream there?)".to_owned(),
                    ));
                }
                Some(code) => {
                    return Err(Error::Rejected {
                        code: code as u64,
                        description: msg.description.unwrap_or_default(),
                    });
                }
                None => {
                    let s: u64 = header("Nats-Sequence")
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| {
                            Error::Nats("direct get reply without Nats-Sequence".into())
                        })?;
                    let subject = header("Nats-Subject").unwrap_or_default();
                    out.push((s, subject, msg.payload.clone()));
                }
            }
        }
    }

    async fn read_messages(
        &self,
        case: &CaseKey,
        from: u64,
    ) -> Result<Vec<(u64, String, bytes::Bytes)>> {
        let filter = case.filter();
        // Where the case ends, and how many events it has (the envelope's
        // per-case sequence of its last event).
        let Some((last_seq, _, last_bytes)) = self.direct_one(&filter, None).await? else {
            return Ok(Vec::new());
        };
        let from = from.max(1);
        if last_seq < from {
            return Ok(Vec::new());
        }
        let case_seq_of = |bytes: &[u8]| {
            casework_domain::chain::decode(bytes)
                .ok()
                .map(|e| e.sequence)
        };
        let mut all = Vec::new();
        let mut seq = from;
        // How many events remain from `seq` to the end: known from the
        // last event's sequence and the first wanted event's.
        let mut remaining = match case_seq_of(&last_bytes) {
            Some(n) if from == 1 => Some(n),
            Some(n) => match self.direct_one(&filter, Some(from)).await? {
                Some((s, subject, bytes)) if s <= last_seq => {
                    let k = case_seq_of(&bytes);
                    all.push((s, subject, bytes));
                    seq = s + 1;
                    k.map(|k| n.saturating_sub(k))
                }
                _ => return Ok(Vec::new()),
            },
            None => None,
        };
        // Exactly-sized batches while the count holds.
        while let Some(n) = remaining.filter(|n| *n > 0) {
            let want = (n.min(READ_BATCH as u64)) as usize;
            let (batch, _) = self.direct_batch(&filter, seq, want).await?;
            let got = batch.len();
            if let Some(last) = batch.last() {
                seq = last.0 + 1;
            }
            all.extend(batch);
            remaining = (got == want).then(|| n - got as u64);
            if got == 0 {
                break;
            }
        }
        // A log that does not match its own count (an undecodable or
        // tampered event, for verification to report) is read on to the end
        // the slow way, so nothing stored is ever left out.
        if all.last().map_or(0, |m| m.0) < last_seq || remaining.is_none() {
            loop {
                let (batch, more) = self.direct_batch(&filter, seq, READ_BATCH).await?;
                if let Some(last) = batch.last() {
                    seq = last.0 + 1;
                }
                let got = batch.len();
                all.extend(batch);
                if !more || got == 0 {
                    break;
                }
            }
        }
        Ok(all)
    }
}

/// `filters` sorted and without repeats; none is an error naming `durable`.
pub(crate) fn consumer_filters(durable: &str, filters: &[String]) -> Result<Vec<String>> {
    let mut wanted = filters.to_vec();
    wanted.sort();
    wanted.dedup();
    if wanted.is_empty() || wanted.iter().any(String::is_empty) {
        return Err(Error::Misuse(format!(
            "consumer {durable} needs at least one non-empty subject filter (e.g. \"case.>\")"
        )));
    }
    Ok(wanted)
}

#[async_trait]
impl CaseLog for JetStreamLog {
    async fn append_event(
        &self,
        case: &CaseKey,
        after: Option<&Head>,
        event: NewEvent,
        traceparent: Option<&str>,
    ) -> Result<Appended> {
        let correlation = event.correlation_id.clone();
        let sealed = seal_for(case, after, event, &self.instance, self.writer)?;
        let expected = after.map_or(0, |h| h.stream_seq);
        let mut last_error = String::new();
        for attempt in 0..APPEND_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            }
            match self
                .publish_once(case, &sealed, &correlation, expected, traceparent)
                .await
            {
                Ok(seq) => return stored_of(&sealed, seq),
                // Known id, or the log moved: either our own earlier attempt
                // landed (or a racing writer decided the same), or someone
                // else wrote first.
                Err(PublishFailure::Conflict | PublishFailure::Duplicate) => {
                    return match find_landed(self, case, after, &sealed).await? {
                        Some(a) => Ok(a),
                        None => Err(Error::Conflict {
                            case: case.to_string(),
                            expected,
                        }),
                    };
                }
                Err(PublishFailure::Fatal(e)) => return Err(e),
                Err(PublishFailure::Ambiguous(e)) => {
                    tracing::warn!(case = %case, attempt, error = %e, "append outcome unknown; retrying");
                    last_error = e;
                }
            }
        }
        // Every attempt was ambiguous: one last look before giving up.
        if let Ok(Some(a)) = find_landed(self, case, after, &sealed).await {
            return Ok(a);
        }
        Err(Error::Unavailable(format!(
            "append to {case} failed after {APPEND_ATTEMPTS} attempts: {last_error}"
        )))
    }

    async fn read_after(
        &self,
        case: &CaseKey,
        after: Option<&Head>,
        until: Option<(u64, u64)>,
    ) -> Result<Vec<StoredEvent>> {
        let Some(after) = after else {
            let mut all = self.read(case, 0).await?;
            if let Some((stream_seq, _)) = until {
                all.retain(|e| e.stream_seq <= stream_seq);
            }
            return Ok(all);
        };
        // How many events follow the head, and up to where: from the known
        // event when there is one (no request), else from the case's last
        // message (one indexed request).
        let (last_seq, count) = match until {
            Some((stream_seq, case_seq)) => (stream_seq, case_seq.saturating_sub(after.case_seq)),
            None => {
                let Some((last_seq, subject, bytes)) =
                    self.direct_one(&case.filter(), None).await?
                else {
                    return Ok(Vec::new());
                };
                if last_seq <= after.stream_seq {
                    return Ok(Vec::new());
                }
                let last = StoredEvent::decode(last_seq, subject, bytes)?;
                let n = last.envelope.sequence.saturating_sub(after.case_seq);
                if n == 1 {
                    return Ok(vec![last]);
                }
                (last_seq, n)
            }
        };
        if last_seq <= after.stream_seq || count == 0 {
            return Ok(Vec::new());
        }
        let filter = case.filter();
        let mut out = Vec::with_capacity(count as usize);
        let mut seq = after.stream_seq + 1;
        let mut remaining = count;
        while remaining > 0 {
            let want = remaining.min(READ_BATCH as u64) as usize;
            let (batch, _) = self.direct_batch(&filter, seq, want).await?;
            let got = batch.len();
            for (s, subject, bytes) in batch {
                if s > last_seq {
                    break;
                }
                seq = s + 1;
                out.push(StoredEvent::decode(s, subject, bytes)?);
            }
            if got < want {
                break;
            }
            remaining -= got as u64;
        }
        Ok(out)
    }

    async fn read(&self, case: &CaseKey, from_stream_seq: u64) -> Result<Vec<StoredEvent>> {
        self.read_messages(case, from_stream_seq)
            .await?
            .into_iter()
            .map(|(seq, subject, bytes)| StoredEvent::decode(seq, subject, bytes))
            .collect()
    }

    async fn read_raw(&self, case: &CaseKey) -> Result<Vec<RawEvent>> {
        Ok(self
            .read_messages(case, 1)
            .await?
            .into_iter()
            .map(|(stream_seq, subject, bytes)| RawEvent {
                stream_seq,
                subject,
                bytes: bytes.to_vec(),
            })
            .collect())
    }

    async fn head(&self, case: &CaseKey) -> Result<Option<Head>> {
        match self.direct_one(&case.filter(), None).await {
            Ok(Some((seq, subject, bytes))) => {
                Ok(Some(StoredEvent::decode(seq, subject, bytes)?.head()))
            }
            Ok(None) => Ok(None),
            Err(Error::Unavailable(e)) => Err(Error::Unavailable(format!(
                "reading the head of {case}: {e}"
            ))),
            Err(e) => Err(e),
        }
    }

    async fn consume(&self, durable: &str, filters: &[String]) -> Result<Deliveries> {
        let wanted = consumer_filters(durable, filters)?;
        let stream = self
            .js
            .get_stream_no_info(CASES_STREAM)
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        let mut consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                durable,
                consumer::pull::Config {
                    durable_name: Some(durable.to_owned()),
                    // One filter goes in `filter_subject`, several in
                    // `filter_subjects` (the server takes one or the other).
                    filter_subject: if wanted.len() == 1 {
                        wanted[0].clone()
                    } else {
                        String::new()
                    },
                    filter_subjects: if wanted.len() == 1 {
                        Vec::new()
                    } else {
                        wanted.clone()
                    },
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.consumer.ack_wait,
                    max_ack_pending: self.consumer.max_ack_pending,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| Error::Nats(format!("consumer {durable}: {e}")))?;
        let info = consumer
            .info()
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        let mut existing = info.config.filter_subjects.clone();
        if !info.config.filter_subject.is_empty() {
            existing.push(info.config.filter_subject.clone());
        }
        existing.sort();
        existing.dedup();
        if existing != wanted {
            return Err(Error::Rejected {
                code: 10148,
                description: format!(
                    "consumer {durable} exists with filters {existing:?}, not {wanted:?}; delete it or use another name"
                ),
            });
        }
        let messages = consumer
            .messages()
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        Ok(Box::pin(messages.map(|m| {
            let m = m.map_err(|e| Error::Nats(e.to_string()))?;
            let info = m.info().map_err(|e| Error::Nats(e.to_string()))?;
            let (stream_seq, delivered, pending) = (
                info.stream_sequence,
                info.delivered.max(1) as u64,
                info.pending,
            );
            Ok(Delivery {
                stream_seq,
                subject: m.subject.to_string(),
                bytes: m.payload.clone(),
                delivered,
                pending,
                traceparent: traceparent_of(&m),
                acker: Acker::Nats(Box::new(m)),
            })
        })))
    }

    async fn tail(&self, filter: &str, from_stream_seq: u64) -> Result<Deliveries> {
        let (messages, _) = named_tail(&self.js, &self.tail_name, filter, from_stream_seq).await?;
        Ok(Box::pin(messages.map(|m| {
            let info = m.info().map_err(|e| Error::Nats(e.to_string()))?;
            let (stream_seq, pending) = (info.stream_sequence, info.pending);
            Ok(Delivery {
                stream_seq,
                subject: m.subject.to_string(),
                bytes: m.payload.clone(),
                delivered: 1,
                pending,
                traceparent: traceparent_of(&m),
                acker: Acker::None,
            })
        })))
    }

    async fn last_stream_seq(&self) -> Result<u64> {
        let stream = self
            .js
            .get_stream(CASES_STREAM)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(stream.cached_info().state.last_sequence)
    }
}

/// A live, ordered read of `CASES` (see [`named_tail`]).
pub type TailMessages = std::pin::Pin<Box<dyn futures::Stream<Item = jetstream::Message> + Send>>;

const TAIL_INACTIVE: Duration = Duration::from_secs(300);

/// Deletes the consumer `name` if present and creates it afresh, reading
/// `filter` from `from`: unacknowledged, in memory, one replica.
async fn open_tail(
    js: &jetstream::Context,
    name: &str,
    filter: &str,
    from: u64,
) -> Result<(consumer::pull::Stream, u64)> {
    let stream = js
        .get_stream_no_info(CASES_STREAM)
        .await
        .map_err(|e| Error::Nats(format!("stream {CASES_STREAM}: {e}")))?;
    // An earlier tail of this instance (before a restart or a lost
    // connection) may still exist; its position is not ours.
    let _ = stream.delete_consumer(name).await;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            name: Some(name.to_owned()),
            filter_subject: filter.to_owned(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            ack_policy: consumer::AckPolicy::None,
            memory_storage: true,
            num_replicas: 1,
            inactive_threshold: TAIL_INACTIVE,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Nats(format!("tail {name} of {filter}: {e}")))?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| Error::Nats(format!("tail {name} of {filter}: {e}")))?;
    Ok((messages, pending))
}

struct TailState {
    js: jetstream::Context,
    name: String,
    filter: String,
    next: u64,
    consumer_seq: u64,
    messages: Option<consumer::pull::Stream>,
    retry: Duration,
}

/// Every message of `CASES` matching `filter` from stream sequence `from`
/// on, in order, live, through the consumer `name` — a consumer whose name
/// the reader's permissions allow (see [`crate::permissions`]; the
/// client's ordered consumers pick random names, which no permission can
/// name). Like an ordered consumer it re-creates itself where it left off
/// when a delivery is missing (a gap in the consumer sequence), the
/// consumer vanished or the connection broke, with a backoff of 0.1 s to
/// 5 s; so the stream never skips, repeats or ends. Also returns how many
/// messages were pending when it was created (0: the reader is caught up).
/// Only the first creation's failure is an error.
pub async fn named_tail(
    js: &jetstream::Context,
    name: &str,
    filter: &str,
    from: u64,
) -> Result<(TailMessages, u64)> {
    let (messages, pending) = open_tail(js, name, filter, from).await?;
    let state = TailState {
        js: js.clone(),
        name: name.to_owned(),
        filter: filter.to_owned(),
        next: from.max(1),
        consumer_seq: 0,
        messages: Some(messages),
        retry: Duration::from_millis(100),
    };
    let s = futures::stream::unfold(state, |mut s| async move {
        loop {
            let Some(messages) = s.messages.as_mut() else {
                match open_tail(&s.js, &s.name, &s.filter, s.next).await {
                    Ok((m, _)) => {
                        s.messages = Some(m);
                        s.consumer_seq = 0;
                        s.retry = Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!(tail = %s.name, error = %e, retry = ?s.retry, "cannot re-create the tail; trying again");
                        tokio::time::sleep(s.retry).await;
                        s.retry = (s.retry * 2).min(Duration::from_secs(5));
                    }
                }
                continue;
            };
            match messages.next().await {
                Some(Ok(m)) => {
                    let seqs = m.info().map(|i| (i.consumer_sequence, i.stream_sequence));
                    match seqs {
                        Ok((c, seq)) if c == s.consumer_seq + 1 => {
                            s.consumer_seq = c;
                            s.next = seq + 1;
                            return Some((m, s));
                        }
                        Ok((c, _)) => {
                            tracing::warn!(tail = %s.name, expected = s.consumer_seq + 1, got = c, from = s.next, "tail missed a delivery; re-creating it");
                        }
                        Err(e) => {
                            tracing::warn!(tail = %s.name, error = %e, "tail delivery without metadata; re-creating it");
                        }
                    }
                    s.messages = None;
                }
                Some(Err(e)) => {
                    tracing::warn!(tail = %s.name, error = %e, from = s.next, "tail failed; re-creating it");
                    s.messages = None;
                }
                None => s.messages = None,
            }
        }
    });
    Ok((Box::pin(s), pending))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("v2.12.0-beta.1"), Some((2, 12, 0)));
        assert!(check_server_version("2.15.1").is_ok());
        assert!(check_server_version("2.12.0").is_ok());
        for old in ["2.11.9", "2.10.22", "1.4.0", "garbage"] {
            let e = check_server_version(old).unwrap_err();
            assert!(matches!(e, Error::Unsupported { .. }), "{old}");
            assert!(e.to_string().contains(old), "names the version: {e}");
        }
    }

    #[test]
    fn a_comma_separated_list_gives_every_server() {
        let addrs = server_addrs("nats://127.0.0.1:4222, nats://127.0.0.1:4223,").unwrap();
        let ports: Vec<u16> = addrs.iter().map(async_nats::ServerAddr::port).collect();
        assert_eq!(ports, vec![4222, 4223]);
        assert_eq!(server_addrs("nats://h:1").unwrap().len(), 1);
        let e = server_addrs("nats://h:notaport").unwrap_err().to_string();
        assert!(e.contains("nats://h:notaport"), "names the bad URL: {e}");
        assert!(server_addrs(" , ").is_err());
    }

    #[test]
    fn an_echo_without_deny_delete_is_reported() {
        let want = cases_stream_config(&StreamOptions::default());
        let mut echoed = want.clone();
        echoed.deny_delete = false;
        assert_eq!(missing_capabilities(&want, &echoed), vec!["deny_delete"]);
        assert!(missing_capabilities(&want, &want).is_empty());
        assert!(
            !want.allow_atomic_publish,
            "no path appends an atomic batch, so the stream does not allow them"
        );
    }
}
