//! The ledger's checkpoint key and signing: a checkpoint (C2SP
//! tlog-checkpoint: origin, tree size, root) of the transparency log is
//! signed with the ledger's Ed25519 key at an interval and on demand,
//! stored in the archive and published on NATS (`tlog.checkpoint`, the
//! `CHECKPOINTS` stream) so that anyone allowed to read it can keep every
//! checkpoint and hold the ledger to it. The private key is a file (a
//! Kubernetes Secret in deployment), created on first start when absent,
//! never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use casework_tlog::note::{Checkpoint, NoteSigner, NoteVerifier, sign_checkpoint};
use tokio::sync::Mutex;

use crate::archive::Archive;
use crate::error::read_blocking;
use crate::{Error, Result};

/// Signs the ledger's checkpoints.
#[derive(Clone)]
pub struct CheckpointSigner {
    signer: Arc<NoteSigner>,
    archive: Archive,
    /// One signing at a time (the interval and on-demand requests).
    lock: Arc<Mutex<()>>,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("key", &self.signer.verifier().vkey())
            .finish()
    }
}

/// Reads the signer key in `path`, or creates one for `origin` there
/// (readable by its owner only) when the file does not exist. A key for
/// another origin is refused.
pub fn load_or_create_key(path: &Path, origin: &str) -> anyhow::Result<NoteSigner> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let signer = NoteSigner::from_skey(text.trim()).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not a checkpoint signer key ({e}); it must hold one line PRIVATE+KEY+<origin>+<id>+<key>, or delete it to have a new key made",
                    path.display()
                )
            })?;
            let name = signer.verifier().name().to_owned();
            if name != origin {
                anyhow::bail!(
                    "{}: the key signs for origin {name:?}, but service.checkpoint_origin is {origin:?}; set checkpoint_origin = {name:?} or use the key of {origin:?}",
                    path.display()
                );
            }
            Ok(signer)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            rand::Rng::fill(&mut rand::rng(), &mut seed);
            let signer = NoteSigner::new(origin, seed)
                .map_err(|e| anyhow::anyhow!("service.checkpoint_origin {origin:?}: {e}"))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            write_private(path, &(signer.skey() + "\n"))?;
            tracing::warn!(
                file = %path.display(),
                public_key = %signer.verifier().vkey(),
                "created a new checkpoint signing key; publish its public key to your auditors and keep the file safe"
            );
            Ok(signer)
        }
        Err(e) => Err(anyhow::anyhow!(
            "{}: cannot read the checkpoint key: {e}",
            path.display()
        )),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp: PathBuf = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = std::fs::remove_file(&tmp);
    let mut f = opts.open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl CheckpointSigner {
    /// A signer of `archive`'s log with `key`.
    pub fn new(key: NoteSigner, archive: Archive) -> Self {
        Self {
            signer: Arc::new(key),
            archive,
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// The verifier key auditors check checkpoints with.
    pub fn verifier(&self) -> NoteVerifier {
        self.signer.verifier()
    }

    /// Signs a checkpoint of the current tree when it grew since the last
    /// one; returns the new (size, note), or `None` when there was nothing
    /// new to sign.
    pub async fn sign_if_grown(&self) -> Result<Option<(u64, String)>> {
        let archive = self.archive.clone();
        let head = read_blocking(move || archive.tree_head()).await?;
        let archive = self.archive.clone();
        let last = read_blocking(move || archive.signed(0))
            .await?
            .map_or(0, |(s, _)| s);
        if head.size == 0 || head.size <= last {
            return Ok(None);
        }
        self.sign(head).await.map(|note| Some((head.size, note)))
    }

    /// The signed checkpoint of `head`: the stored one when the ledger
    /// already signed that size (the same state: a size is only ever
    /// reached once), else a new one, stored.
    pub async fn sign(&self, head: crate::tlog::TreeHead) -> Result<String> {
        use base64::Engine;
        let _one = self.lock.lock().await;
        let archive = self.archive.clone();
        let signer = self.signer.clone();
        read_blocking(move || {
            if let Some((_, note)) = archive.signed(head.size)? {
                return Ok(note);
            }
            let cp = Checkpoint {
                origin: signer.verifier().name().to_owned(),
                size: head.size,
                root: head.root,
                extensions: vec![format!(
                    "{} {}",
                    crate::tlog::MAP_EXTENSION,
                    base64::engine::general_purpose::STANDARD.encode(head.map_root)
                )],
            };
            let note = sign_checkpoint(&signer, &cp)
                .map_err(|e| Error::Internal(format!("signing the checkpoint: {e}")))?;
            archive.store_signed(head.size, &note)?;
            Ok(note)
        })
        .await
    }

    /// Signs at `every` and publishes each new checkpoint on NATS, until
    /// `shutdown`. A checkpoint the broker did not take is published again
    /// with the next one.
    pub async fn run(
        self,
        client: async_nats::Client,
        every: Duration,
        shutdown: casework_runtime::Shutdown,
    ) {
        let js = async_nats::jetstream::new(client);
        // The largest tree size published; every checkpoint signed since
        // (by this loop or on demand) is published, the latest first
        // missing one each round.
        let mut published = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.sign_if_grown().await {
                Ok(Some((size, _))) => {
                    metrics::counter!("casework_ledger_checkpoints_signed_total").increment(1);
                    metrics::gauge!("casework_ledger_checkpoint_tree_size").set(size as f64);
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot sign a checkpoint"),
            }
            let archive = self.archive.clone();
            let latest = match read_blocking(move || archive.signed(0)).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the latest checkpoint");
                    continue;
                }
            };
            if let Some((size, note)) = latest.filter(|(s, _)| *s > published) {
                match publish(&js, size, &note).await {
                    Ok(()) => published = size,
                    Err(e) => {
                        metrics::counter!("casework_ledger_checkpoint_publish_failures_total")
                            .increment(1);
                        tracing::warn!(size, error = %e, "checkpoint not published yet; retrying next round");
                    }
                }
            }
        }
    }
}

async fn publish(
    js: &async_nats::jetstream::Context,
    size: u64,
    note: &str,
) -> std::result::Result<(), String> {
    let mut headers = async_nats::HeaderMap::new();
    // A re-publish of the same checkpoint is deduplicated by the stream.
    headers.insert("Nats-Msg-Id", format!("checkpoint-{size}").as_str());
    js.publish_with_headers(
        casework_caselog::jetstream::CHECKPOINT_SUBJECT,
        headers,
        note.to_owned().into(),
    )
    .await
    .map_err(|e| e.to_string())?
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}
