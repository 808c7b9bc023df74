//! Shutdown is injected, not discovered (CONVENTIONS.md §9): `run(options,
//! shutdown)` receives a [`Shutdown`]; `main` wires it to SIGINT/SIGTERM, and
//! a second signal exits at once.

pub use tokio_util::sync::CancellationToken as Shutdown;

/// A token cancelled by the first SIGINT or SIGTERM; the second exits the
/// process with status 130.
pub fn on_signals() -> Shutdown {
    let token = Shutdown::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut count = 0;
        loop {
            wait_signal().await;
            count += 1;
            if count == 1 {
                tracing::info!("shutting down (a second signal exits at once)");
                t.cancel();
            } else {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
    token
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
