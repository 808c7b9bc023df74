//! The vault: customers' data keys in the JetStream stream `KEYS`, wrapped
//! by this process's KEK, with a bounded in-memory cache of unwrapped keys.
//!
//! Layout of `KEYS` (JSON messages):
//! - `keys.<tenant>.key.<subject>` — the customer's data key
//!   (`{"v":1,"kind":"key","key_id","kek_id","wrapped","created_at"}`), and
//!   after an erasure a record that it was destroyed
//!   (`{"v":1,"kind":"erased","key_id","erased_at"}`) — the wrapped key
//!   itself is then overwritten in the store (JetStream's secure erase).
//! - `keys.<tenant>.customer.<lookup>` — the customer's current pseudonym
//!   (`{"v":1,"kind":"customer","subject"}`), found from the customer id
//!   through [`Kek::lookup`]; erased (not replaced) with the key, so after an
//!   erasure nothing links the customer id to the pseudonym in the log.
//!
//! The owner (intake) creates keys with optimistic concurrency on the
//! subject (two replicas racing agree on one key), reads from the stream
//! leader, and destroys keys; readers (fulfilment, ledger) read the last
//! message of a key subject with direct get. A reader holds an unwrapped key
//! for at most `ttl`, and drops it at once when it sees the case's
//! `personal_data_erased`.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
use async_nats::jetstream::{self, context::PublishErrorKind};
use casework_domain::pb::{self, Envelope};
use casework_domain::personal;
use lru::LruCache;
use serde::{Deserialize, Serialize};

use crate::crypto::{DataKey, Kek};
use crate::protect::{self, KeyRef, Place};
use crate::{Error, KEYS_STREAM};

/// What a vault may do with the key stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Create and destroy keys, read from the stream leader (intake).
    Owner,
    /// Read keys only (direct get; fulfilment, ledger).
    Reader,
}

/// What [`Vault::reveal`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revealed {
    /// The event has no encrypted personal fields (none of its type, or
    /// written before encryption was on).
    Plain,
    /// Decrypted into place.
    Decrypted,
    /// The key is destroyed: the fields are empty and marked erased.
    Erased,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Record {
    Key {
        v: u32,
        key_id: String,
        kek_id: String,
        wrapped: String,
        created_at: String,
    },
    Erased {
        v: u32,
        key_id: String,
        erased_at: String,
    },
    Customer {
        v: u32,
        subject: String,
    },
}

#[derive(Debug, Clone)]
struct Cached {
    key_id: String,
    /// `None`: destroyed.
    key: Option<Arc<DataKey>>,
    at: Instant,
}

/// The keys of one process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    kek: Kek,
    client: async_nats::Client,
    js: jetstream::Context,
    access: Access,
    ttl: Duration,
    keys: Mutex<LruCache<(String, String), Cached>>,
    customers: Mutex<LruCache<(String, String), KeyRef>>,
}

fn key_subject(tenant: &str, subject: &str) -> String {
    format!("keys.{tenant}.key.{subject}")
}

fn customer_subject(tenant: &str, lookup: &str) -> String {
    format!("keys.{tenant}.customer.{lookup}")
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{what}: {e}"))
}

impl Vault {
    /// A vault over the `KEYS` stream of `client`'s broker (the stream is
    /// created by the services' stream setup), holding unwrapped keys for at
    /// most `ttl`, at most `capacity` of them.
    pub fn new(
        client: async_nats::Client,
        kek: Kek,
        access: Access,
        ttl: Duration,
        capacity: usize,
    ) -> Vault {
        let cap = NonZeroUsize::new(capacity.max(1)).expect("at least 1");
        Vault {
            inner: Arc::new(Inner {
                kek,
                js: jetstream::new(client.clone()),
                client,
                access,
                ttl,
                keys: Mutex::new(LruCache::new(cap)),
                customers: Mutex::new(LruCache::new(cap)),
            }),
        }
    }

    /// The id of this vault's KEK.
    pub fn kek_id(&self) -> &str {
        self.inner.kek.id()
    }

    async fn last(&self, subject: &str) -> Result<Option<(u64, Record)>, Error> {
        let i = &self.inner;
        let stream =
            i.js.get_stream_no_info(KEYS_STREAM)
                .await
                .map_err(|e| unavailable("the key stream", e))?;
        let got = match i.access {
            Access::Owner => match stream.get_last_raw_message_by_subject(subject).await {
                Ok(m) => Some((m.sequence, m.payload)),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => None,
                Err(e) => return Err(unavailable(&format!("reading {subject}"), e)),
            },
            Access::Reader => match stream.direct_get_last_for_subject(subject).await {
                Ok(m) => Some((m.sequence, m.payload)),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => None,
                Err(e) => return Err(unavailable(&format!("reading {subject}"), e)),
            },
        };
        let Some((seq, payload)) = got else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&payload).map_err(|e| {
            Error::Damaged(format!(
                "{subject} (stream sequence {seq}) is not a key record: {e}"
            ))
        })?;
        Ok(Some((seq, record)))
    }

    async fn publish(
        &self,
        subject: String,
        expect_last: u64,
        record: &Record,
    ) -> Result<bool, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expect_last.to_string().as_str(),
        );
        let body = serde_json::to_vec(record).expect("a key record serialises");
        let ack = self
            .inner
            .js
            .publish_with_headers(subject.clone(), headers, body.into())
            .await
            .map_err(|e| unavailable(&format!("publishing {subject}"), e))?;
        match ack.await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
            Err(e) => Err(unavailable(&format!("publishing {subject}"), e)),
        }
    }

    fn cache_key(&self, tenant: &str, kref: &KeyRef, key: Option<Arc<DataKey>>) {
        self.inner.keys.lock().expect("key cache").put(
            (tenant.to_owned(), kref.subject.clone()),
            Cached {
                key_id: kref.key_id.clone(),
                key,
                at: Instant::now(),
            },
        );
    }

    /// The data key `kref` names: `None` when it was destroyed (the
    /// customer's data was erased).
    pub async fn key(&self, tenant: &str, kref: &KeyRef) -> Result<Option<Arc<DataKey>>, Error> {
        let ck = (tenant.to_owned(), kref.subject.clone());
        if let Some(c) = self.inner.keys.lock().expect("key cache").get(&ck)
            && c.key_id == kref.key_id
            && c.at.elapsed() < self.inner.ttl
        {
            return Ok(c.key.clone());
        }
        let subject = key_subject(tenant, &kref.subject);
        let key = match self.last(&subject).await? {
            Some((
                _,
                Record::Key {
                    key_id,
                    kek_id,
                    wrapped,
                    ..
                },
            )) if key_id == kref.key_id => {
                if kek_id != self.kek_id() {
                    return Err(Error::OtherKek {
                        key_id,
                        wrapped_by: kek_id,
                        have: self.kek_id().to_owned(),
                    });
                }
                let bytes = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    wrapped.as_bytes(),
                )
                .map_err(|e| {
                    Error::Damaged(format!("{subject}: wrapped key is not base64: {e}"))
                })?;
                Some(Arc::new(self.inner.kek.unwrap(
                    &bytes,
                    tenant,
                    &kref.subject,
                    &kref.key_id,
                )?))
            }
            // Destroyed, or replaced after its destruction by the
            // customer's next key: either way the key named is gone.
            Some(_) => None,
            None => {
                return Err(Error::KeyMissing {
                    tenant: tenant.to_owned(),
                    subject: kref.subject.clone(),
                    key_id: kref.key_id.clone(),
                });
            }
        };
        self.cache_key(tenant, kref, key.clone());
        Ok(key)
    }

    /// The customer's current key, made when they have none (or their last
    /// one was destroyed). Owner only.
    pub async fn key_for_customer(
        &self,
        tenant: &str,
        customer_id: &str,
    ) -> Result<(KeyRef, Arc<DataKey>), Error> {
        self.must_own("make a customer's key")?;
        let lookup = self.inner.kek.lookup(tenant, customer_id);
        let ck = (tenant.to_owned(), lookup.clone());
        let cached = self
            .inner
            .customers
            .lock()
            .expect("customer cache")
            .get(&ck)
            .cloned();
        if let Some(kref) = cached
            && let Some(key) = self.key(tenant, &kref).await?
        {
            return Ok((kref, key));
        }
        for _ in 0..4 {
            let csubject = customer_subject(tenant, &lookup);
            let current = self.last(&csubject).await?;
            let expect = current.as_ref().map_or(0, |(s, _)| *s);
            if let Some((_, Record::Customer { subject, .. })) = &current {
                let subject = subject.clone();
                if let Some((_, Record::Key { key_id, .. })) =
                    self.last(&key_subject(tenant, &subject)).await?
                {
                    let kref = KeyRef { subject, key_id };
                    if let Some(key) = self.key(tenant, &kref).await? {
                        return Ok(self.remember_customer(ck, kref, key));
                    }
                }
            }
            // No key (or a destroyed one): a new pseudonym and key.
            let kref = KeyRef {
                subject: ulid::Ulid::new().to_string(),
                key_id: ulid::Ulid::new().to_string(),
            };
            let key = DataKey::generate();
            let wrapped = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                self.inner
                    .kek
                    .wrap(&key, tenant, &kref.subject, &kref.key_id),
            );
            let record = Record::Key {
                v: 1,
                key_id: kref.key_id.clone(),
                kek_id: self.kek_id().to_owned(),
                wrapped,
                created_at: now_text(),
            };
            if !self
                .publish(key_subject(tenant, &kref.subject), 0, &record)
                .await?
            {
                continue;
            }
            let mapping = Record::Customer {
                v: 1,
                subject: kref.subject.clone(),
            };
            if self.publish(csubject, expect, &mapping).await? {
                metrics::counter!("casework_privacy_keys_total", "outcome" => "created")
                    .increment(1);
                let key = Arc::new(key);
                self.cache_key(tenant, &kref, Some(key.clone()));
                return Ok(self.remember_customer(ck, kref, key));
            }
            // Another replica mapped the customer first: use its key (ours
            // was never used; erase it).
            self.erase_keys_of(tenant, &kref.subject).await?;
        }
        Err(Error::Unavailable(format!(
            "the key of a customer of {tenant} kept changing under 4 attempts; retry"
        )))
    }

    fn remember_customer(
        &self,
        ck: (String, String),
        kref: KeyRef,
        key: Arc<DataKey>,
    ) -> (KeyRef, Arc<DataKey>) {
        self.inner
            .customers
            .lock()
            .expect("customer cache")
            .put(ck, kref.clone());
        (kref, key)
    }

    fn must_own(&self, what: &str) -> Result<(), Error> {
        if self.inner.access == Access::Owner {
            Ok(())
        } else {
            Err(Error::Misuse(format!("a reader vault cannot {what}")))
        }
    }

    /// The customer's current pseudonym and key id, when the vault holds a
    /// live key for them. Owner only.
    pub async fn find_customer(
        &self,
        tenant: &str,
        customer_id: &str,
    ) -> Result<Option<KeyRef>, Error> {
        self.must_own("look a customer up")?;
        let lookup = self.inner.kek.lookup(tenant, customer_id);
        let Some((_, Record::Customer { subject, .. })) =
            self.last(&customer_subject(tenant, &lookup)).await?
        else {
            return Ok(None);
        };
        Ok(match self.last(&key_subject(tenant, &subject)).await? {
            Some((_, Record::Key { key_id, .. })) | Some((_, Record::Erased { key_id, .. })) => {
                Some(KeyRef { subject, key_id })
            }
            _ => None,
        })
    }

    async fn erase_message(&self, seq: u64) -> Result<(), Error> {
        #[derive(Deserialize)]
        struct Reply {
            #[serde(default)]
            success: bool,
            error: Option<serde_json::Value>,
        }
        let body = serde_json::json!({ "seq": seq, "no_erase": false });
        let reply = self
            .inner
            .client
            .request(
                format!("$JS.API.STREAM.MSG.DELETE.{KEYS_STREAM}"),
                serde_json::to_vec(&body).expect("json").into(),
            )
            .await
            .map_err(|e| unavailable("erasing a key", e))?;
        let r: Reply = serde_json::from_slice(&reply.payload)
            .map_err(|e| unavailable("erasing a key (reply)", e))?;
        match r.error {
            // Already gone (a repeated erasure).
            // Already gone (a repeated erasure): the delete failed because
            // there is no such message. Any other failure (a stream that
            // denies deletes, an I/O error) is an error: the key may still
            // be on disk.
            Some(e)
                if e.get("description")
                    .and_then(|d| d.as_str())
                    .is_some_and(|d| d.contains("no message found")) =>
            {
                Ok(())
            }
            Some(e) => Err(Error::Unavailable(format!(
                "the broker refused to erase key message {seq}: {e}"
            ))),
            None if r.success => Ok(()),
            None => Err(Error::Unavailable(format!(
                "the broker did not erase key message {seq}"
            ))),
        }
    }

    /// Overwrites every wrapped key stored under the subject's key subject
    /// (erasure records stay).
    async fn erase_keys_of(&self, tenant: &str, subject: &str) -> Result<(), Error> {
        let subj = key_subject(tenant, subject);
        self.erase_where(&subj, |r| matches!(r, Record::Key { .. }))
            .await
    }

    async fn erase_where(&self, subj: &str, pick: impl Fn(&Record) -> bool) -> Result<(), Error> {
        let stream = self
            .inner
            .js
            .get_stream_no_info(KEYS_STREAM)
            .await
            .map_err(|e| unavailable("the key stream", e))?;
        let mut from = 1u64;
        loop {
            let m = match stream
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(subj.to_owned())
                .send()
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                    return Ok(());
                }
                Err(e) => return Err(unavailable(&format!("reading {subj}"), e)),
            };
            let erase = serde_json::from_slice::<Record>(&m.payload).map_or(true, |r| pick(&r));
            if erase {
                self.erase_message(m.sequence).await?;
            }
            from = m.sequence + 1;
        }
    }

    /// Destroys the key `kref` names, for good: records its destruction and
    /// overwrites the wrapped key in the store. The customer's lookup stays
    /// until [`Vault::forget_customer`]. Repeating it is harmless. Owner
    /// only.
    pub async fn destroy(&self, tenant: &str, kref: &KeyRef) -> Result<(), Error> {
        self.must_own("destroy a key")?;
        let subj = key_subject(tenant, &kref.subject);
        for _ in 0..4 {
            let last = self.last(&subj).await?;
            if matches!(&last, Some((_, Record::Erased { key_id, .. })) if *key_id == kref.key_id) {
                break;
            }
            let record = Record::Erased {
                v: 1,
                key_id: kref.key_id.clone(),
                erased_at: now_text(),
            };
            if self
                .publish(subj.clone(), last.map_or(0, |(s, _)| s), &record)
                .await?
            {
                metrics::counter!("casework_privacy_keys_total", "outcome" => "destroyed")
                    .increment(1);
                break;
            }
        }
        self.erase_keys_of(tenant, &kref.subject).await?;
        self.forget(tenant, &kref.subject);
        Ok(())
    }

    /// Erases the customer's lookup of the pseudonym `kref` names, once its
    /// key is destroyed and every case records the erasure (the lookup is
    /// what lets a repeated erasure find the customer's cases). Owner only.
    pub async fn forget_customer(
        &self,
        tenant: &str,
        customer_id: &str,
        kref: &KeyRef,
    ) -> Result<(), Error> {
        self.must_own("erase a customer's lookup")?;
        // The lookups that lead to this pseudonym (not a newer one, made
        // for the customer's next case after this erasure began).
        let lookup = self.inner.kek.lookup(tenant, customer_id);
        self.erase_where(
            &customer_subject(tenant, &lookup),
            |r| matches!(r, Record::Customer { subject, .. } if *subject == kref.subject),
        )
        .await?;
        self.forget(tenant, &kref.subject);
        Ok(())
    }

    /// Drops what this process holds of a subject's key (it saw the
    /// subject's erasure).
    pub fn forget(&self, tenant: &str, subject: &str) {
        self.inner
            .keys
            .lock()
            .expect("key cache")
            .pop(&(tenant.to_owned(), subject.to_owned()));
        let mut customers = self.inner.customers.lock().expect("customer cache");
        let stale: Vec<_> = customers
            .iter()
            .filter(|((t, _), k)| t == tenant && k.subject == subject)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            customers.pop(&k);
        }
    }

    /// Encrypts a new event's personal fields for `kref` (a no-op for a
    /// type without them).
    pub fn protect(
        &self,
        payload: &mut pb::envelope::Payload,
        at: Place<'_>,
        kref: &KeyRef,
        key: &DataKey,
    ) -> bool {
        protect::protect(payload, at, kref, key)
    }

    /// Decrypts a stored event's personal fields in place, or marks them
    /// erased when their key is destroyed. An erasure event makes the
    /// vault forget the subject's key first.
    pub async fn reveal(&self, env: &mut Envelope) -> Result<Revealed, Error> {
        let Some(payload) = env.payload.as_mut() else {
            return Ok(Revealed::Plain);
        };
        if let pb::envelope::Payload::PersonalDataErased(e) = payload {
            self.forget(&env.tenant, &e.subject);
            return Ok(Revealed::Plain);
        }
        let Some(p) = personal::protected(payload) else {
            return Ok(Revealed::Plain);
        };
        if p.erased {
            return Ok(Revealed::Erased);
        }
        let kref = KeyRef::of(p);
        let at = Place {
            tenant: &env.tenant,
            case_id: &env.case_id,
            event_id: &env.event_id,
        };
        match self.key(&env.tenant, &kref).await? {
            Some(key) => {
                protect::reveal(payload, at, &key)?;
                metrics::counter!("casework_privacy_reveals_total", "outcome" => "decrypted")
                    .increment(1);
                Ok(Revealed::Decrypted)
            }
            None => {
                personal::mark_erased(payload);
                metrics::counter!("casework_privacy_reveals_total", "outcome" => "erased")
                    .increment(1);
                Ok(Revealed::Erased)
            }
        }
    }

    /// [`Vault::reveal`] for a payload outside an envelope.
    pub async fn reveal_payload(
        &self,
        payload: &mut pb::envelope::Payload,
        at: Place<'_>,
    ) -> Result<Revealed, Error> {
        let mut env = Envelope {
            tenant: at.tenant.to_owned(),
            case_id: at.case_id.to_owned(),
            event_id: at.event_id.to_owned(),
            payload: Some(std::mem::replace(
                payload,
                pb::envelope::Payload::PromiseKept(Default::default()),
            )),
            ..Default::default()
        };
        let r = self.reveal(&mut env).await;
        *payload = env.payload.take().expect("payload put back");
        r
    }
}
