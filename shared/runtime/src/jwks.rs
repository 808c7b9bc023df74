//! The issuer's keys from its JWKS URL (`auth.jwks_url`): fetched over
//! HTTPS at start (a service that cannot get them does not start), again
//! every `auth.jwks_refresh_seconds`, and at once when a token names a key
//! id the verifier does not hold (an issuer rotating keys), at most once per
//! [`JWKS_RELOAD_AT_MOST_EVERY`] however many such tokens arrive — so a
//! flood of made-up key ids cannot turn the services into a load on the
//! issuer. A failed refresh keeps the keys held (an issuer that is down
//! must not lock every caller out) and is logged and counted
//! (`casework_auth_jwks_fetch_total{service,outcome}`).
//!
//! TLS is rustls with the ring provider (as for gRPC); trusted roots are the
//! system's plus `auth.jwks_ca_file`. Only `https://` is fetched, redirects
//! included; a body over [`MAX_JWKS_BYTES`] is refused.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use casework_auth::{AuthSettings, JWKS_RELOAD_AT_MOST_EVERY, Verifier, parse_jwks};

/// The largest JWKS accepted (real ones are a few KiB).
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches one issuer's JWKS for one service.
#[derive(Debug)]
pub struct JwksSource {
    service: &'static str,
    url: String,
    client: reqwest::Client,
    /// When the last fetch began; held across a fetch, so concurrent
    /// callers with unknown keys wait for one fetch instead of each making
    /// their own.
    last: tokio::sync::Mutex<Option<Instant>>,
}

fn tls_config(settings: &AuthSettings) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system root rustls cannot use is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = &settings.jwks_ca_file {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(path).map_err(|e| {
            anyhow::anyhow!("cannot read auth.jwks_ca_file {}: {e}", path.display())
        })?;
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                anyhow::anyhow!("auth.jwks_ca_file {} is not PEM: {e}", path.display())
            })?;
            roots.add(cert).map_err(|e| {
                anyhow::anyhow!(
                    "auth.jwks_ca_file {} holds an unusable certificate: {e}",
                    path.display()
                )
            })?;
            n += 1;
        }
        anyhow::ensure!(
            n > 0,
            "auth.jwks_ca_file {} holds no certificate",
            path.display()
        );
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "no trusted roots for auth.jwks_url: the system has none; give the issuer's CA in auth.jwks_ca_file"
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS for auth.jwks_url: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl JwksSource {
    /// The source for `settings.jwks_url` (none without one).
    pub fn new(service: &'static str, settings: &AuthSettings) -> anyhow::Result<Option<Self>> {
        let Some(url) = &settings.jwks_url else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(settings)?)
            .https_only(true)
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("casework/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("HTTP client for auth.jwks_url: {e}"))?;
        Ok(Some(Self {
            service,
            url: url.clone(),
            client,
            last: tokio::sync::Mutex::new(None),
        }))
    }

    /// Fetches and parses the JWKS once.
    pub async fn fetch(&self) -> anyhow::Result<casework_auth::JwkSet> {
        let url = &self.url;
        let mut resp = self
            .client
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot fetch auth.jwks_url {url}: {e:#}"))?;
        let status = resp.status();
        anyhow::ensure!(status.is_success(), "auth.jwks_url {url} answered {status}");
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            anyhow::bail!("auth.jwks_url {url} sends more than {MAX_JWKS_BYTES} bytes");
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| anyhow::anyhow!("reading auth.jwks_url {url}: {e}"))?
        {
            body.extend_from_slice(&chunk);
            anyhow::ensure!(
                body.len() <= MAX_JWKS_BYTES,
                "auth.jwks_url {url} sends more than {MAX_JWKS_BYTES} bytes"
            );
        }
        let text = String::from_utf8(body)
            .map_err(|_| anyhow::anyhow!("auth.jwks_url {url} sent a body that is not UTF-8"))?;
        parse_jwks(&text, &format!("auth.jwks_url {url}")).map_err(|e| anyhow::anyhow!(e))
    }

    async fn fetch_into(&self, verifier: &Verifier, why: &'static str) -> bool {
        match self.fetch().await {
            Ok(keys) => {
                let n = keys.keys.len();
                verifier.replace_keys(keys);
                metrics::counter!("casework_auth_jwks_fetch_total", "service" => self.service, "outcome" => "ok").increment(1);
                tracing::info!(service = self.service, url = %self.url, keys = n, why, "fetched the issuer's keys");
                true
            }
            Err(e) => {
                metrics::counter!("casework_auth_jwks_fetch_total", "service" => self.service, "outcome" => "error").increment(1);
                tracing::warn!(service = self.service, error = %e, why, "cannot refresh the issuer's keys; keeping the ones held");
                false
            }
        }
    }

    /// The first fetch, at start: an error stops the service (it could
    /// verify no token).
    pub async fn load(&self, verifier: &Verifier) -> anyhow::Result<()> {
        let mut last = self.last.lock().await;
        *last = Some(Instant::now());
        let keys = self.fetch().await?;
        verifier.replace_keys(keys);
        Ok(())
    }

    /// A token named a key id not held: fetch again, unless a fetch began
    /// less than [`JWKS_RELOAD_AT_MOST_EVERY`] ago (then the caller waits
    /// for it, if it is still running, and uses what it got).
    pub async fn refresh_for_unknown_key(&self, verifier: &Verifier) {
        let mut last = self.last.lock().await;
        if last.is_some_and(|t| t.elapsed() < JWKS_RELOAD_AT_MOST_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        self.fetch_into(verifier, "a token named an unknown key")
            .await;
    }

    /// Fetches again every `every` while the source and the verifier are in
    /// use (it ends when the server holding them is dropped).
    pub fn spawn_refresh(self: &Arc<Self>, verifier: &Arc<Verifier>, every: Duration) {
        let source: Weak<Self> = Arc::downgrade(self);
        let verifier: Weak<Verifier> = Arc::downgrade(verifier);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let (Some(s), Some(v)) = (source.upgrade(), verifier.upgrade()) else {
                    return;
                };
                let mut last = s.last.lock().await;
                *last = Some(Instant::now());
                s.fetch_into(&v, "periodic refresh").await;
            }
        });
    }
}
