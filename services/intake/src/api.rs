//! The gRPC service `casework.intake.v1.Intake`: validate, take the case's
//! lock, decide on its held state (brought up to date with the log, the
//! truth for decisions), append with optimistic concurrency through the
//! runtime's one decide-append loop, make the write visible in this
//! replica's read model, answer. Reads come from the read model.

use std::sync::Arc;
use std::time::Duration;

use casework_auth::Caller;
use casework_caselog::{CaseKey, CaseLog};
use casework_catalog::Catalogs;
use casework_domain::chain::timestamp;
use casework_domain::pb::envelope::Payload;
use casework_domain::{CaseId, EventId, pb};
use casework_privacy::protect::{self as privacy, KeyRef, Place};
use casework_privacy::{DataKey, Revealed, Vault};
use casework_proto::intake::v1 as api;
use casework_runtime::held::{CaseCache, Held};
use casework_runtime::limits::{LimitSettings, TenantRate};
use casework_runtime::reconcile::{
    Decision, Rounds, append_in_order, decide_and_append, lock_case,
};
use chrono::Utc;
use tonic::{Request, Response, Status};

use crate::decide::{self, CaseView, RequestOutcome};
use crate::error::{Error, Result, failure_to_error};
use crate::readmodel::{ReadModel, promise_to_api};
use crate::validate::{self, CaseRequest};

/// The intake gRPC service.
#[derive(Debug, Clone)]
pub struct IntakeApi {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log: Arc<dyn CaseLog>,
    cache: Arc<CaseCache<CaseView>>,
    catalogs: Catalogs,
    read_model: ReadModel,
    read_your_writes: Duration,
    limits: LimitSettings,
    rate: TenantRate,
    /// Customers' data keys (`None`: personal data in plaintext).
    vault: Option<Vault>,
}

/// A case's customer key: who it is (pseudonym and key id) and the key.
type CaseKeyPair = (KeyRef, Arc<DataKey>);

/// What protects a case's personal data.
#[derive(Debug)]
enum CaseKeyState {
    /// Nothing: written in plaintext (or the case cannot be read; the
    /// decide-append loop reports that).
    Plain,
    /// The customer's key.
    Key(CaseKeyPair),
    /// The customer's data was erased: the case takes no new personal data
    /// (a request without any, a bare score, still goes in).
    Erased,
}

/// Encrypts a new event's personal fields for its case's customer.
fn protect_event(case: &CaseKey, key: Option<&CaseKeyPair>, event_id: &str, payload: &mut Payload) {
    if let Some((kref, key)) = key {
        privacy::protect(
            payload,
            Place {
                tenant: case.tenant.as_str(),
                case_id: case.case_id.as_str(),
                event_id,
            },
            kref,
            key,
        );
    }
}

fn erased_refusal(case: &CaseKey) -> Error {
    Error::FailedPrecondition(format!(
        "case {case}: the customer's personal data was erased; the case takes no new personal data (open a new case)"
    ))
}

impl IntakeApi {
    /// The service over `log`, promising with `catalogs.current()`, on the
    /// held case states in `cache` (shared with the closer).
    pub fn new(
        log: Arc<dyn CaseLog>,
        cache: Arc<CaseCache<CaseView>>,
        catalogs: Catalogs,
        read_model: ReadModel,
        read_your_writes: Duration,
        limits: LimitSettings,
        vault: Option<Vault>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                log,
                cache,
                catalogs,
                read_model,
                read_your_writes,
                rate: TenantRate::new(&limits),
                limits,
                vault,
            }),
        }
    }

    /// The key of an existing case's customer, when its personal data is
    /// encrypted; refused once it was erased. The caller holds the lock.
    async fn key_of_case(&self, case: &CaseKey) -> Result<CaseKeyState> {
        let i = &self.inner;
        let Some(vault) = &i.vault else {
            return Ok(CaseKeyState::Plain);
        };
        // A log that cannot be read is the decide-append loop's to report
        // (it parks the case, saying why); nothing is appended without the
        // key it needs (the guard in `record`).
        let Ok(held) = i.cache.load_latest(&*i.log, case).await else {
            return Ok(CaseKeyState::Plain);
        };
        let personal = held
            .state
            .state
            .opened
            .as_ref()
            .and_then(|o| o.personal.clone());
        i.cache.put(case, held);
        let Some(p) = personal else {
            return Ok(CaseKeyState::Plain);
        };
        if p.erased {
            return Ok(CaseKeyState::Erased);
        }
        let kref = KeyRef::of(&p);
        match vault.key(case.tenant.as_str(), &kref).await? {
            Some(key) => Ok(CaseKeyState::Key((kref, key))),
            None => Ok(CaseKeyState::Erased),
        }
    }

    /// Decrypts a read-model case for the caller (or marks it erased).
    async fn reveal_case(&self, c: &mut api::Case) -> Result<()> {
        let Some(p) = c.personal.take() else {
            return Ok(());
        };
        let Some(vault) = &self.inner.vault else {
            return Err(Error::Internal(format!(
                "case {}/{} holds encrypted personal data but personal_data.mode = plaintext; configure the KEK",
                c.tenant, c.case_id
            )));
        };
        let case_id = CaseId::parse(&c.case_id).map_err(|e| Error::Internal(e.to_string()))?;
        let event_id = decide::opened_event_id(&c.idempotency_key, &case_id);
        let mut payload = Payload::CaseOpened(pb::CaseOpened {
            personal: Some(p),
            ..Default::default()
        });
        let at = Place {
            tenant: &c.tenant,
            case_id: &c.case_id,
            event_id: event_id.as_str(),
        };
        if vault.reveal_payload(&mut payload, at).await? == Revealed::Erased {
            c.personal_data_erased = true;
        }
        if let Payload::CaseOpened(o) = payload {
            c.customer_id = o.customer_id;
            c.summary = o.summary;
        }
        Ok(())
    }

    /// Makes the case visible in this replica's read model up to stream
    /// sequence `seq`: waits for the tail, or applies the case itself.
    async fn make_visible(&self, case: &CaseKey, seq: u64) -> Result<()> {
        let i = &self.inner;
        if i.read_model.wait_for(seq, i.read_your_writes).await {
            return Ok(());
        }
        let events = casework_caselog::read_reaching(i.log.as_ref(), case, 0, seq).await?;
        i.read_model.apply(events, None).await;
        Ok(())
    }

    async fn open_case(&self, req: api::OpenCaseRequest) -> Result<api::OpenCaseResponse> {
        let i = &self.inner;
        let catalog = i.catalogs.current();
        let cmd = validate::open_case(&req, catalog)?;
        let service = catalog
            .service(&cmd.service_code)
            .ok_or_else(|| Error::Internal("validated service vanished".into()))?;
        let case_id = match &cmd.idempotency_key {
            Some(k) => CaseId::derive(&cmd.tenant, k),
            None => CaseId::from_ulid(ulid::Ulid::new()),
        };
        let case = CaseKey {
            tenant: cmd.tenant.clone(),
            case_id: case_id.clone(),
        };
        let now = Utc::now();
        let mut events = decide::decide_open(&cmd, &case_id, service, catalog, now);
        let key = match &i.vault {
            Some(v) => Some(
                v.key_for_customer(cmd.tenant.as_str(), &cmd.customer_id)
                    .await?,
            ),
            None => None,
        };
        let opened_id = events[0].event_id.to_string();
        protect_event(&case, key.as_ref(), &opened_id, &mut events[0].payload);
        let promise = match &events[1].payload {
            Payload::PromiseMade(p) => promise_to_api(p),
            _ => return Err(Error::Internal("decide_open broke its shape".into())),
        };
        let traceparent = casework_telemetry::current_traceparent();
        let _lock = lock_case(crate::SERVICE, &case).await;
        // A new case id (no idempotency key) has no log yet: nothing to
        // read. A derived one may exist: the first append expects an empty
        // log, and a retry finds the case below.
        match append_in_order(&*i.log, &case, None, events, traceparent.as_deref()).await {
            Ok(a) if a.fresh() => {
                metrics::counter!(
                    "casework_cases_opened_total",
                    "tenant" => cmd.tenant.to_string(),
                    "service" => cmd.service_code.clone()
                )
                .increment(1);
                i.cache.put(&case, Held::of_log(&case, &a.events));
                self.make_visible(&case, a.head.stream_seq).await?;
                Ok(api::OpenCaseResponse {
                    case_id: case_id.to_string(),
                    promise: Some(promise),
                    opened_at: Some(timestamp(now)),
                    replayed: false,
                })
            }
            Ok(_) => self.replay_open(&case, &cmd, key.as_ref()).await,
            Err(e) if e.is_conflict() => self.replay_open(&case, &cmd, key.as_ref()).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Answers an OpenCase whose case already exists (a retry with the same
    /// idempotency key) from the case's own events, making its promise if
    /// it was opened without one (a crash between the two appends). The
    /// caller holds the case's lock.
    async fn replay_open(
        &self,
        case: &CaseKey,
        cmd: &validate::OpenCase,
        key: Option<&CaseKeyPair>,
    ) -> Result<api::OpenCaseResponse> {
        let i = &self.inner;
        let mut refusal: Option<Error> = None;
        let mut answer: Option<api::OpenCaseResponse> = None;
        let catalog = i.catalogs.current();
        let decided = decide_and_append(
            &*i.log,
            &i.cache,
            case,
            &[],
            Rounds::UntilIdle,
            |view, _| {
                let Some(opened) = &view.state.opened else {
                    refusal = Some(Error::Internal(format!(
                        "case {case} exists but does not start with case_opened"
                    )));
                    return Ok(Decision::<()>::default());
                };
                // The stored opening, decrypted with this customer's key
                // (another customer's stays encrypted, and differs).
                let mut stored = Payload::CaseOpened(opened.clone());
                if let Some(p) = &opened.personal {
                    if p.erased {
                        refusal = Some(Error::FailedPrecondition(format!(
                            "idempotency_key {:?} belongs to case {case}, whose personal data was erased; use a new key for a new request",
                            cmd.idempotency_key.as_deref().unwrap_or_default()
                        )));
                        return Ok(Decision::default());
                    }
                    if let Some((kref, k)) = key
                        && kref.subject == p.subject
                        && kref.key_id == p.key_id
                    {
                        let event_id = decide::opened_event_id(&opened.idempotency_key, &case.case_id);
                        let at = Place {
                            tenant: case.tenant.as_str(),
                            case_id: case.case_id.as_str(),
                            event_id: event_id.as_str(),
                        };
                        if let Err(e) = privacy::reveal(&mut stored, at, k) {
                            refusal = Some(Error::Internal(e.to_string()));
                            return Ok(Decision::default());
                        }
                    }
                }
                let same = matches!(&stored, Payload::CaseOpened(o) if decide::same_request(o, cmd));
                if !same {
                    // Never name the other request's customer: that is
                    // another customer's personal data.
                    refusal = Some(Error::AlreadyExists(format!(
                        "idempotency_key {:?} was already used for another request (service {:?}); \
                         use a new key for a new request",
                        cmd.idempotency_key.as_deref().unwrap_or_default(),
                        opened.service_code
                    )));
                    return Ok(Decision::default());
                }
                if let Some(promise) = decide::decide_promise(view, catalog)? {
                    return Ok(Decision {
                        events: vec![promise],
                        effects: Vec::new(),
                    });
                }
                answer = view.promise_made.as_ref().map(|p| api::OpenCaseResponse {
                    case_id: case.case_id.to_string(),
                    promise: Some(promise_to_api(p)),
                    opened_at: view.state.opened_at.map(timestamp),
                    replayed: true,
                });
                Ok(Decision::default())
            },
        )
        .await
        .map_err(failure_to_error)?;
        if let Some(e) = refusal {
            return Err(e);
        }
        let answer = answer.ok_or_else(|| {
            Error::Internal(format!("case {case} has no promise after making it"))
        })?;
        if let Some(head) = &decided.head {
            self.make_visible(case, head.stream_seq).await?;
        }
        Ok(answer)
    }

    /// Records a request about an existing case: decide from the log,
    /// append after its head, retry on conflict.
    async fn record<T: Clone + Send + Sync>(
        &self,
        req: CaseRequest<T>,
        to_payload: fn(T) -> Payload,
    ) -> Result<api::Recorded> {
        let i = &self.inner;
        let case = CaseKey {
            tenant: req.tenant.clone(),
            case_id: req.case_id.clone(),
        };
        let fresh = ulid::Ulid::new().to_string();
        let mut outcome: Option<Result<RequestOutcome>> = None;
        let _lock = lock_case(crate::SERVICE, &case).await;
        let state = self.key_of_case(&case).await?;
        let key = match &state {
            CaseKeyState::Key(k) => Some(k),
            _ => None,
        };
        let erased = matches!(state, CaseKeyState::Erased);
        let personal_refused = std::sync::atomic::AtomicBool::new(false);
        let protect = |event_id: &str, p: &mut Payload| {
            if erased && casework_domain::personal::has_personal(p) {
                personal_refused.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            protect_event(&case, key, event_id, p)
        };
        let decided =
            decide_and_append(&*i.log, &i.cache, &case, &[], Rounds::Once, |view, head| {
                let sealed_case = view
                    .state
                    .opened
                    .as_ref()
                    .is_some_and(|o| o.personal.is_some());
                if sealed_case && key.is_none() && !erased {
                    // Never append a customer's words in plaintext to a case
                    // whose personal data is encrypted.
                    outcome = Some(Err(Error::Unavailable(format!(
                        "case {case}: the customer's data key could not be read; retry"
                    ))));
                    return Ok(Decision::<()>::default());
                }
                let decided = match decide::decide_request(
                    view,
                    &req,
                    to_payload,
                    &protect,
                    &fresh,
                    Utc::now(),
                ) {
                    // A new event on a case that already holds the most callers
                    // may add (a retry of a recorded request is still answered).
                    Ok(RequestOutcome::Append(event)) => casework_runtime::limits::case_length(
                        crate::SERVICE,
                        &case.to_string(),
                        head.map_or(0, |h| h.case_seq),
                        &i.limits,
                    )
                    .map(|()| RequestOutcome::Append(event))
                    .map_err(Error::FailedPrecondition),
                    other => other,
                };
                let decided = if personal_refused.load(std::sync::atomic::Ordering::Relaxed) {
                    Err(erased_refusal(&case))
                } else {
                    decided
                };
                let events = match &decided {
                    Ok(RequestOutcome::Append(event)) => vec![(**event).clone()],
                    _ => Vec::new(),
                };
                outcome = Some(decided);
                Ok(Decision::<()> {
                    events,
                    effects: Vec::new(),
                })
            })
            .await
            .map_err(failure_to_error)?;
        let head = decided.head.clone();
        let (event_id, sequence, replayed) = match outcome {
            Some(Ok(RequestOutcome::Replayed { event_id, sequence })) => (event_id, sequence, true),
            Some(Ok(RequestOutcome::Append(event))) => {
                let a = decided
                    .rounds
                    .iter()
                    .find_map(|r| r.appended.as_ref())
                    .ok_or_else(|| Error::Internal("an append left no trace".into()))?;
                (event.event_id.to_string(), a.head.case_seq, a.already)
            }
            Some(Err(e)) => return Err(e),
            None => return Err(Error::Internal("the request was not decided".into())),
        };
        if let Some(h) = &head {
            self.make_visible(&case, h.stream_seq).await?;
        }
        Ok(api::Recorded {
            case_id: case.case_id.to_string(),
            event_id,
            sequence,
            replayed,
        })
    }

    async fn get_case(&self, req: api::GetCaseRequest) -> Result<api::Case> {
        let case = CaseKey {
            tenant: validate::tenant(&req.tenant)?,
            case_id: validate::case_id(&req.case_id)?,
        };
        let rm = &self.inner.read_model;
        if let Some(mut c) = rm.get(&case, Utc::now()).await {
            self.reveal_case(&mut c).await?;
            return Ok(c);
        }
        // Not (yet) in this replica's read model: the case may have been
        // opened on another replica a moment ago, or the model may still be
        // catching up. The log decides.
        let events = self.inner.log.read(&case, 0).await?;
        if events.is_empty() {
            return Err(Error::NotFound {
                tenant: case.tenant.to_string(),
                case_id: case.case_id.to_string(),
            });
        }
        rm.apply(events, None).await;
        let mut c = rm
            .get(&case, Utc::now())
            .await
            .ok_or_else(|| Error::Internal(format!("case {case} vanished from the read model")))?;
        self.reveal_case(&mut c).await?;
        Ok(c)
    }

    /// Erases a customer's personal data: an erasure event on each of their
    /// cases, then their key destroyed, then a second pass for a case
    /// opened meanwhile (its data went with the key; it gets its event).
    async fn erase_customer(
        &self,
        req: api::EraseCustomerRequest,
        erased_by: Option<pb::Actor>,
    ) -> Result<api::EraseCustomerResponse> {
        let i = &self.inner;
        let tenant = validate::tenant(&req.tenant)?;
        validate::customer_id(&req.customer_id)?;
        validate::legal_basis(&req.legal_basis)?;
        let Some(vault) = &i.vault else {
            return Err(Error::FailedPrecondition(
                "personal_data.mode = plaintext: personal data is not encrypted, so it cannot be erased by destroying a key; run with personal_data.mode = encrypt".to_owned(),
            ));
        };
        let Some(kref) = vault
            .find_customer(tenant.as_str(), &req.customer_id)
            .await?
        else {
            return Err(Error::NotFoundCustomer(format!(
                "no personal data of customer {:?} is held for tenant {tenant} (never seen here, or erased already)",
                req.customer_id
            )));
        };
        // The key goes first: from here on the data is unreadable, and a
        // reader that archives the erasure events below finds the key gone.
        // The lookup goes last, so a run that stopped part-way is repeated
        // in full (every step is idempotent).
        vault.destroy(tenant.as_str(), &kref).await?;
        let mut erased = std::collections::BTreeSet::new();
        // Twice: a case opened by another replica while this ran (with the
        // key it still held) gets its event in the second pass.
        for _ in 0..2 {
            // Every case of the customer is in this replica's read model
            // once it has applied the stream as it is now.
            let end = i.log.last_stream_seq().await?;
            if !i.read_model.wait_for(end, Duration::from_secs(30)).await {
                return Err(Error::Unavailable(
                    "intake's read model is still catching up with the log; retry the erasure"
                        .to_owned(),
                ));
            }
            for case_id in i.read_model.cases_of_subject(&tenant, &kref.subject).await {
                let case = CaseKey {
                    tenant: tenant.clone(),
                    case_id,
                };
                self.append_erasure(&case, &kref, &req.legal_basis, erased_by.clone())
                    .await?;
                erased.insert(case.case_id.to_string());
            }
        }
        vault
            .forget_customer(tenant.as_str(), &req.customer_id, &kref)
            .await?;
        metrics::counter!("casework_customers_erased_total", "tenant" => tenant.to_string())
            .increment(1);
        tracing::info!(%tenant, subject = %kref.subject, cases = erased.len(), "customer's personal data erased");
        Ok(api::EraseCustomerResponse {
            subject: kref.subject,
            key_id: kref.key_id,
            case_ids: erased.into_iter().collect(),
        })
    }

    async fn append_erasure(
        &self,
        case: &CaseKey,
        kref: &KeyRef,
        legal_basis: &str,
        erased_by: Option<pb::Actor>,
    ) -> Result<()> {
        let i = &self.inner;
        let _lock = lock_case(crate::SERVICE, case).await;
        let event_id = EventId::derive(
            &case.case_id,
            &format!("erase:{}", kref.key_id),
            "personal_data_erased",
        );
        let decided = decide_and_append(&*i.log, &i.cache, case, &[], Rounds::Once, |view, _| {
            let mine = view
                .state
                .opened
                .as_ref()
                .and_then(|o| o.personal.as_ref())
                .is_some_and(|p| p.subject == kref.subject);
            if !mine || view.state.personal_data_erased {
                return Ok(Decision::<()>::default());
            }
            Ok(Decision {
                events: vec![casework_domain::NewEvent {
                    event_id: event_id.clone(),
                    occurred_at: Utc::now(),
                    causation_id: String::new(),
                    correlation_id: view.correlation_id.clone(),
                    payload: Payload::PersonalDataErased(pb::PersonalDataErased {
                        subject: kref.subject.clone(),
                        key_id: kref.key_id.clone(),
                        legal_basis: legal_basis.to_owned(),
                        erased_by: erased_by.clone(),
                    }),
                }],
                effects: Vec::new(),
            })
        })
        .await
        .map_err(failure_to_error)?;
        if let Some(h) = &decided.head {
            self.make_visible(case, h.stream_seq).await?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl api::intake_server::Intake for IntakeApi {
    async fn open_case(
        &self,
        request: Request<api::OpenCaseRequest>,
    ) -> Result<Response<api::OpenCaseResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut req = request.into_inner();
        caller.for_tenant(&validate::tenant(&req.tenant)?)?;
        self.inner.rate.admit(crate::SERVICE, &req.tenant)?;
        req.opened_by = caller.vouch(req.opened_by.take())?;
        Ok(Response::new(IntakeApi::open_case(self, req).await?))
    }

    async fn record_interaction(
        &self,
        request: Request<api::RecordInteractionRequest>,
    ) -> Result<Response<api::RecordInteractionResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut req = validate::record_interaction(&request.into_inner())?;
        caller.for_tenant(&req.tenant)?;
        self.inner.rate.admit(crate::SERVICE, req.tenant.as_str())?;
        req.payload.actor = caller.vouch(req.payload.actor.take())?;
        let recorded = self.record(req, Payload::InteractionRecorded).await?;
        Ok(Response::new(api::RecordInteractionResponse {
            recorded: Some(recorded),
        }))
    }

    async fn submit_feedback(
        &self,
        request: Request<api::SubmitFeedbackRequest>,
    ) -> Result<Response<api::SubmitFeedbackResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = validate::submit_feedback(&request.into_inner())?;
        caller.for_tenant(&req.tenant)?;
        self.inner.rate.admit(crate::SERVICE, req.tenant.as_str())?;
        let recorded = self.record(req, Payload::FeedbackReceived).await?;
        Ok(Response::new(api::SubmitFeedbackResponse {
            recorded: Some(recorded),
        }))
    }

    async fn withdraw_case(
        &self,
        request: Request<api::WithdrawCaseRequest>,
    ) -> Result<Response<api::WithdrawCaseResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut req = validate::withdraw_case(&request.into_inner())?;
        caller.for_tenant(&req.tenant)?;
        self.inner.rate.admit(crate::SERVICE, req.tenant.as_str())?;
        req.payload.actor = caller.vouch(req.payload.actor.take())?;
        let recorded = self
            .record(req, |w: pb::CaseWithdrawn| Payload::CaseWithdrawn(w))
            .await?;
        Ok(Response::new(api::WithdrawCaseResponse {
            recorded: Some(recorded),
        }))
    }

    async fn get_case(
        &self,
        request: Request<api::GetCaseRequest>,
    ) -> Result<Response<api::GetCaseResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        caller.for_tenant(&validate::tenant(&req.tenant)?)?;
        let case = IntakeApi::get_case(self, req).await?;
        Ok(Response::new(api::GetCaseResponse { case: Some(case) }))
    }

    async fn list_cases(
        &self,
        request: Request<api::ListCasesRequest>,
    ) -> Result<Response<api::ListCasesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let q = validate::list_cases(&request.into_inner())?;
        caller.for_tenant(&q.tenant)?;
        let mut q = q;
        // The read model indexes a customer by pseudonym, never by id.
        if let (Some(customer), Some(vault)) = (&q.customer_id, &self.inner.vault) {
            match vault
                .find_customer(q.tenant.as_str(), customer)
                .await
                .map_err(Error::from)?
            {
                Some(kref) => q.customer_id = Some(kref.subject),
                None => {
                    return Ok(Response::new(api::ListCasesResponse::default()));
                }
            }
        }
        let (mut cases, next) = self.inner.read_model.list(q, Utc::now()).await;
        for c in &mut cases {
            self.reveal_case(c).await?;
        }
        Ok(Response::new(api::ListCasesResponse {
            cases,
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn erase_customer(
        &self,
        request: Request<api::EraseCustomerRequest>,
    ) -> Result<Response<api::EraseCustomerResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        caller.for_tenant(&validate::tenant(&req.tenant)?)?;
        let erased_by = caller.vouch(None)?;
        Ok(Response::new(
            IntakeApi::erase_customer(self, req, erased_by).await?,
        ))
    }
}
