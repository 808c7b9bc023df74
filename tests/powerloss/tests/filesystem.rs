//! The lossy filesystem's semantics, through a real FUSE mount: what was
//! synced survives a power cut, what was not is gone, namespace changes
//! are durable at once.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;

use casework_powerloss::{Disk, fuse_unavailable};

/// A mounted disk, or `None` (the test then skips, saying why).
fn disk() -> Option<Disk> {
    if let Some(why) = fuse_unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(Disk::new().expect("mount the lossy disk"))
}

fn read(path: &std::path::Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(path)
        .expect("open")
        .read_to_end(&mut v)
        .expect("read");
    v
}

#[test]
fn synced_writes_survive_a_cut_and_later_ones_do_not() {
    let Some(mut disk) = disk() else { return };
    let p = disk.path().join("log");
    let mut f = File::create(&p).expect("create");
    f.write_all(b"synced").expect("write");
    f.sync_all().expect("fsync");
    f.write_all(b" and not synced").expect("write");
    drop(f);
    assert_eq!(
        read(&p),
        b"synced and not synced",
        "reads see unsynced writes"
    );
    assert_eq!(fs::metadata(&p).expect("stat").len(), 21);
    assert_eq!(
        fs::read(disk.platter().join("log")).expect("platter"),
        b"synced",
        "only synced data reaches the platter"
    );
    let pending = disk.unsynced();
    assert_eq!((pending.files, pending.bytes), (1, 4096));
    assert_eq!(pending.paths, [std::path::PathBuf::from("log")]);
    let dropped = disk.cut_power();
    assert_eq!(dropped, pending, "the cut drops what was pending");
    disk.power_on().expect("power on");
    assert_eq!(read(&p), b"synced");
    assert_eq!(disk.unsynced().files, 0);
}

#[test]
fn fdatasync_and_o_dsync_writes_are_durable() {
    let Some(mut disk) = disk() else { return };
    let a = disk.path().join("a");
    let mut f = File::create(&a).expect("create");
    f.write_all(b"datasync").expect("write");
    f.sync_data().expect("fdatasync");
    let b = disk.path().join("b");
    let mut g = OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(libc::O_DSYNC)
        .open(&b)
        .expect("open O_DSYNC");
    g.write_all(b"dsync").expect("write");
    drop((f, g));
    assert_eq!(disk.cut_power().files, 0, "nothing was left unsynced");
    disk.power_on().expect("power on");
    assert_eq!(read(&a), b"datasync");
    assert_eq!(read(&b), b"dsync");
}

#[test]
fn an_unsynced_truncate_is_undone_by_a_cut() {
    let Some(mut disk) = disk() else { return };
    let p = disk.path().join("t");
    let mut f = File::create(&p).expect("create");
    f.write_all(&[9u8; 10_000]).expect("write");
    f.sync_all().expect("fsync");
    f.set_len(3).expect("truncate");
    f.set_len(5_000).expect("grow");
    drop(f);
    let seen = read(&p);
    assert_eq!(seen.len(), 5_000);
    assert_eq!(&seen[..3], &[9, 9, 9]);
    assert!(
        seen[3..].iter().all(|&b| b == 0),
        "truncated bytes read as zeros"
    );
    disk.cut_power();
    disk.power_on().expect("power on");
    assert_eq!(read(&p), vec![9u8; 10_000]);
}

#[test]
fn a_file_renamed_before_its_data_was_synced_survives_empty() {
    // The model: namespace changes are durable at once, file data only
    // when synced (an unsynced write-then-rename leaves an empty file, as
    // on a real disk that committed the rename but not the data).
    let Some(mut disk) = disk() else { return };
    fs::create_dir(disk.path().join("d")).expect("mkdir");
    let tmp = disk.path().join("d/meta.tmp");
    fs::write(&tmp, b"config").expect("write");
    fs::rename(&tmp, disk.path().join("d/meta")).expect("rename");
    let kept = disk.path().join("d/kept");
    let mut f = File::create(&kept).expect("create");
    f.write_all(b"kept").expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    fs::rename(&kept, disk.path().join("kept")).expect("rename the synced file");
    disk.cut_power();
    disk.power_on().expect("power on");
    let mut names: Vec<String> = fs::read_dir(disk.path().join("d"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["meta"],
        "the rename is durable, the temporary name gone"
    );
    assert_eq!(
        read(&disk.path().join("d/meta")),
        b"",
        "its unsynced data is not"
    );
    assert_eq!(
        read(&disk.path().join("kept")),
        b"kept",
        "synced data follows a rename"
    );
}

#[test]
fn an_unlink_is_durable_and_its_unsynced_data_goes_with_it() {
    let Some(mut disk) = disk() else { return };
    let p = disk.path().join("gone");
    let mut f = File::create(&p).expect("create");
    f.write_all(b"x").expect("write");
    f.sync_all().expect("fsync");
    f.write_all(b"y").expect("write");
    fs::remove_file(&p).expect("unlink");
    // The open handle still reads and syncs the unlinked file.
    f.sync_all().expect("fsync an unlinked file");
    drop(f);
    assert!(!disk.platter().join("gone").exists());
    disk.cut_power();
    disk.power_on().expect("power on");
    assert!(!p.exists(), "the unlink survived the cut");
}

#[test]
fn writes_across_many_pages_survive_only_up_to_the_last_sync() {
    let Some(mut disk) = disk() else { return };
    let p = disk.path().join("big");
    let mut f = File::create(&p).expect("create");
    let chunk: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    f.write_all(&chunk).expect("write");
    f.sync_all().expect("fsync");
    f.write_all(&chunk).expect("write");
    drop(f);
    assert_eq!(read(&p).len(), 200_000);
    let dropped = disk.cut_power();
    assert!(dropped.bytes >= 100_000, "{dropped:?}");
    disk.power_on().expect("power on");
    assert_eq!(read(&p), chunk);
}
