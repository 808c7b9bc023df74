//! Connecting a service to NATS with its own credentials, checking the
//! streams, and building its per-case log client.

use std::time::Duration;

use casework_caselog::jetstream::{self, NatsOptions, StreamOptions};
use casework_caselog::{JetStreamLog, domain::Writer};

use crate::options::NatsSettings;

/// Connects as `name` and makes sure the streams exist with the contract's
/// configuration (refusing a server that cannot hold it). For the writing
/// services; readers use [`connect_reader`].
pub async fn connect(settings: &NatsSettings, name: &str) -> anyhow::Result<async_nats::Client> {
    let client = connect_only(settings, name).await?;
    jetstream::ensure_streams(
        &client,
        &StreamOptions {
            replicas: settings.stream_replicas,
            ..Default::default()
        },
    )
    .await?;
    Ok(client)
}

/// Connects a reader (the ledger, casectl, integrators): checks the server
/// version but neither creates nor looks up the streams, which a reader's
/// permissions do not allow.
pub async fn connect_reader(
    settings: &NatsSettings,
    name: &str,
) -> anyhow::Result<async_nats::Client> {
    let client = connect_only(settings, name).await?;
    jetstream::check_server_version(&client.server_info().version)?;
    Ok(client)
}

async fn connect_only(settings: &NatsSettings, name: &str) -> anyhow::Result<async_nats::Client> {
    let opts = NatsOptions {
        url: settings.url.clone(),
        user: settings.user.clone(),
        password: settings.password.clone(),
        creds_file: settings.creds_file.clone(),
        name: name.to_owned(),
        request_timeout: Duration::from_millis(settings.request_timeout_ms),
        inbox_prefix: settings.inbox_prefix.clone(),
    };
    let client = if let Some(ca) = &settings.tls_ca_file {
        // TLS: the server must present a certificate signed by this CA.
        let mut c = jetstream::watch_permissions(
            async_nats::ConnectOptions::new()
                .name(name)
                .request_timeout(Some(Duration::from_millis(settings.request_timeout_ms)))
                .add_root_certificates(ca.clone())
                .custom_inbox_prefix(opts.effective_inbox_prefix())
                .require_tls(true),
            settings.user.clone(),
        );
        if let (Some(u), Some(p)) = (&settings.user, &settings.password) {
            c = c.user_and_password(u.clone(), p.clone());
        }
        if let Some(creds) = &settings.creds_file {
            c = c.credentials_file(creds).await?;
        }
        c.connect(jetstream::server_addrs(&settings.url)?.as_slice())
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {} over TLS: {e}", settings.url))?
    } else {
        jetstream::connect(&opts).await?
    };
    Ok(client)
}

/// The per-case log client of `writer` (or a reader when `None`).
pub fn log(
    client: &async_nats::Client,
    settings: &NatsSettings,
    instance: &str,
    writer: Option<Writer>,
) -> JetStreamLog {
    JetStreamLog::new(client.clone(), instance, writer)
        .with_request_timeout(Duration::from_millis(settings.request_timeout_ms))
}

/// The service's vault of customers' data keys (crypto-shredding), or
/// `None` when `personal_data.mode = plaintext` (said loudly, once).
pub fn vault(
    client: &async_nats::Client,
    settings: &casework_privacy::PrivacySettings,
    data_dir: &std::path::Path,
    access: casework_privacy::Access,
    service: &str,
) -> anyhow::Result<Option<casework_privacy::Vault>> {
    let Some(kek) = settings.load_kek(data_dir)? else {
        tracing::warn!(
            service,
            "personal_data.mode = plaintext: customers' personal data is stored unencrypted and cannot be erased"
        );
        return Ok(None);
    };
    tracing::info!(
        service,
        kek = kek.id(),
        "personal data is encrypted per customer"
    );
    Ok(Some(casework_privacy::Vault::new(
        client.clone(),
        kek,
        access,
        std::time::Duration::from_secs(settings.key_cache_seconds),
        settings.key_cache_capacity,
    )))
}

/// The readiness condition [`watch_connection`] holds.
pub const CONNECTED_CONDITION: &str = "nats_connected";

/// Holds `/readyz` false while `client` is not connected to the broker (a
/// broker restart, a dropped connection), so Kubernetes sends no traffic
/// to a replica that cannot append; the service's loops resubscribe on
/// their own once it is back. Checks every 200 ms until `stop`.
pub fn watch_connection(
    client: async_nats::Client,
    readiness: crate::http::Readiness,
    stop: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        let mut was = None;
        loop {
            let up = client.connection_state() == async_nats::connection::State::Connected;
            if was != Some(up) {
                readiness.set(CONNECTED_CONDITION, up);
                if was.is_some() {
                    if up {
                        tracing::info!("connected to the broker again: ready");
                    } else {
                        tracing::warn!("lost the broker connection: not ready until it is back");
                    }
                }
                was = Some(up);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            }
        }
    });
}
