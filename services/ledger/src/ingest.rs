//! The ingestion loop: one ordered `tail("case.>", checkpoint + 1)` per
//! replica, archived in batches (one redb write transaction each, on the
//! blocking pool). A chain break is recorded (case status, metric
//! `casework_ledger_chain_breaks_total`, an error line) and ingestion goes on.
//! Ready once the archive has caught up with the stream's last sequence at
//! start. A broken tail (disconnect) is re-opened from the checkpoint, so
//! nothing is archived twice or skipped.
//!
//! The tail is the consumer `ledger-tail-<instance>`
//! (`casework_caselog::jetstream::named_tail`): the ledger user's
//! permissions name it, and no other consumer.

use std::sync::Arc;
use std::time::Duration;

use crate::error::read_blocking;
use casework_caselog::CaseLog;
use casework_domain::RawEvent;
use casework_runtime::Shutdown;
use casework_runtime::http::Readiness;
use futures::StreamExt;
use tokio::sync::watch;

use crate::archive::Archive;

/// Readiness condition: the stream `CASES` is reachable.
pub const READY_STREAM: &str = "stream";
/// Readiness condition: the archive caught up with the stream at start.
pub const READY_CAUGHT_UP: &str = "caught_up";

async fn pause(shutdown: &Shutdown, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

type RawStream = std::pin::Pin<Box<dyn futures::Stream<Item = anyhow::Result<RawEvent>> + Send>>;

/// Every event of `CASES` matching `filter` from stream sequence `from`
/// on, in order, live, through the tail consumer of ledger instance
/// `instance`.
pub async fn tail(
    client: &async_nats::Client,
    instance: &str,
    filter: &str,
    from: u64,
) -> anyhow::Result<RawStream> {
    let js = async_nats::jetstream::new(client.clone());
    let name = casework_caselog::permissions::tail_consumer("ledger", instance);
    let (messages, _) = casework_caselog::jetstream::named_tail(&js, &name, filter, from)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Box::pin(messages.map(|m| {
        let info = m.info().map_err(|e| anyhow::anyhow!("tail: {e}"))?;
        Ok(RawEvent {
            stream_seq: info.stream_sequence,
            subject: m.subject.to_string(),
            bytes: m.payload.to_vec(),
        })
    })))
}

/// Runs until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    archive: Archive,
    log: Arc<dyn CaseLog>,
    client: async_nats::Client,
    name: String,
    batch_size: usize,
    readiness: Readiness,
    checkpoint_tx: watch::Sender<u64>,
    vault: Option<casework_privacy::Vault>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let target = loop {
        match log.last_stream_seq().await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "the CASES stream is not reachable yet; retrying");
                if !pause(&shutdown, Duration::from_secs(1)).await {
                    return Ok(());
                }
            }
        }
    };
    readiness.set(READY_STREAM, true);
    let a = archive.clone();
    let mut checkpoint = read_blocking(move || a.checkpoint()).await?;
    let mut caught_up = checkpoint >= target;
    readiness.set(READY_CAUGHT_UP, caught_up);
    tracing::info!(checkpoint, target, "archiving from the stream");
    while !shutdown.is_cancelled() {
        let tail = match tail(&client, &name, "case.>", checkpoint + 1).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the stream; retrying");
                readiness.set(READY_STREAM, false);
                if !pause(&shutdown, Duration::from_secs(1)).await {
                    break;
                }
                continue;
            }
        };
        readiness.set(READY_STREAM, true);
        let mut chunks = tail.ready_chunks(batch_size.max(1));
        loop {
            let items = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                c = chunks.next() => c,
            };
            let Some(items) = items else { break };
            let mut raws = Vec::with_capacity(items.len());
            let mut failed = None;
            for item in items {
                match item {
                    Ok(r) => raws.push(r),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(v) = &vault {
                // A customer's erasure: this replica drops their key at
                // once (auditors see the data erased from now on).
                for r in raws
                    .iter()
                    .filter(|r| r.subject.ends_with(".intake.personal_data_erased"))
                {
                    if let Ok(env) = casework_domain::chain::decode(&r.bytes)
                        && let Some(casework_domain::pb::envelope::Payload::PersonalDataErased(e)) =
                            &env.payload
                    {
                        v.forget(&env.tenant, &e.subject);
                    }
                }
            }
            if !raws.is_empty() {
                let a = archive.clone();
                let report = read_blocking(move || a.ingest(&raws)).await?;
                metrics::counter!("casework_ledger_events_archived_total")
                    .increment(report.archived as u64);
                for b in &report.breaks {
                    metrics::counter!("casework_ledger_chain_breaks_total").increment(1);
                    tracing::error!(
                        case = %b.case,
                        case_seq = b.link.case_seq,
                        stream_seq = ?b.link.stream_seq,
                        fault = %b.link.fault,
                        detail = %b.link.detail,
                        "chain break: the case's log is not trustworthy from here; archiving goes on"
                    );
                }
                checkpoint = report.checkpoint;
                metrics::gauge!("casework_ledger_checkpoint").set(checkpoint as f64);
                let _ = checkpoint_tx.send(checkpoint);
                if !caught_up && checkpoint >= target {
                    caught_up = true;
                    readiness.set(READY_CAUGHT_UP, true);
                    tracing::info!(checkpoint, "caught up with the stream");
                }
            }
            if let Some(e) = failed {
                tracing::warn!(error = %e, checkpoint, "the stream's tail failed; re-opening it");
                break;
            }
        }
        if !pause(&shutdown, Duration::from_millis(200)).await {
            break;
        }
    }
    Ok(())
}
