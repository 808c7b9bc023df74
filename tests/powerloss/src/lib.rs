//! `casework-powerloss` owns the power-loss checks of the broker's store: a
//! FUSE filesystem ([`Disk`]) that passes everything through to a backing
//! directory (the "platter") except file contents that were not synced —
//! writes and truncations stay in memory until the application `fsync`s or
//! `fdatasync`s the file (or wrote it through an `O_SYNC`/`O_DSYNC`
//! handle) — and that can lose power: [`Disk::cut_power`] drops every
//! unsynced change and unmounts, [`Disk::power_on`] mounts the platter
//! again as it survived. On it, [`round`] runs a real nats-server with its
//! JetStream store on the disk, publishes, kills the server and cuts the
//! power mid-load, powers back, restarts it and counts which acknowledged
//! messages are gone.
//!
//! The model is the one POSIX promises and no more, for file data: what
//! was not synced may vanish. Namespace changes (create, mkdir, rename,
//! unlink, rmdir, chmod) are durable at once — kinder than a real disk,
//! where an entry whose directory was not synced can vanish too — so a
//! loss found here is a loss of data that the writer had not synced. The
//! backing directory itself never loses anything (the cut is simulated),
//! so syncing into it needs no host `fsync`.
//!
//! It must never be a dependency of shipped code, never mount anywhere but
//! directories it created, and never leave a mount behind: dropping a
//! [`Disk`] cuts its power and unmounts, also when a test panics.

mod fs;
pub mod round;
mod unsynced;

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use fs::Dropped;
use fs::{LossyFs, State};
use fuser::{BackgroundSession, Config, MountOption};
use tempfile::TempDir;

/// Why FUSE cannot be used on this machine, if it cannot (the tests then
/// skip, saying so): no `/dev/fuse`.
pub fn fuse_unavailable() -> Option<String> {
    if Path::new("/dev/fuse").exists() {
        None
    } else {
        Some("/dev/fuse is absent: this machine (or container) has no FUSE".to_owned())
    }
}

/// A disk that forgets unsynced writes when its power is cut: a FUSE mount
/// on a temporary directory over a temporary backing directory.
#[derive(Debug)]
pub struct Disk {
    /// While the power is on.
    powered: Option<Powered>,
    /// Dropped after `powered` (and after [`Drop`] unmounted).
    mountpoint: TempDir,
    platter: TempDir,
}

#[derive(Debug)]
struct Powered {
    session: BackgroundSession,
    state: Arc<Mutex<State>>,
}

impl Disk {
    /// A new, empty disk, powered on (mounted).
    pub fn new() -> io::Result<Self> {
        let platter = tempfile::Builder::new()
            .prefix("casework-platter-")
            .tempdir()?;
        let mountpoint = tempfile::Builder::new()
            .prefix("casework-lossy-")
            .tempdir()?;
        let mut disk = Self {
            powered: None,
            mountpoint,
            platter,
        };
        disk.power_on()?;
        Ok(disk)
    }

    /// Where the application uses the disk (the mount point).
    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }

    /// The backing directory: what survives a cut.
    pub fn platter(&self) -> &Path {
        self.platter.path()
    }

    /// Mounts the platter, as it is, on [`path`](Disk::path). Does nothing
    /// if the power is on.
    pub fn power_on(&mut self) -> io::Result<()> {
        if self.powered.is_some() {
            return Ok(());
        }
        let state = Arc::new(Mutex::new(State::new(self.platter.path().to_owned())));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("casework-lossy".to_owned()),
            MountOption::Subtype("casework-lossy".to_owned()),
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        let fs = LossyFs {
            state: state.clone(),
        };
        let session = fuser::spawn_mount(fs, self.mountpoint.path(), &config)?;
        self.powered = Some(Powered { session, state });
        Ok(())
    }

    /// What a cut would drop now.
    pub fn unsynced(&self) -> Dropped {
        self.powered.as_ref().map_or_else(Dropped::default, |p| {
            p.state.lock().unwrap_or_else(|e| e.into_inner()).pending()
        })
    }

    /// Cuts the power: every change not synced is gone, every operation
    /// still in flight fails, and the disk is unmounted. Returns what was
    /// dropped (nothing if the power was off).
    pub fn cut_power(&mut self) -> Dropped {
        let Some(p) = self.powered.take() else {
            return Dropped::default();
        };
        let dropped = p.state.lock().unwrap_or_else(|e| e.into_inner()).cut();
        if let Err(e) = p.session.umount_and_join() {
            // Something still uses the mount: detach it so no later access
            // hangs; the FUSE thread ends when the last user lets go.
            eprintln!("casework-powerloss: unmount failed ({e}); detaching");
            let _ = nix::mount::umount2(self.mountpoint.path(), nix::mount::MntFlags::MNT_DETACH);
        }
        dropped
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.cut_power();
    }
}
