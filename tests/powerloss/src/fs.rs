//! The FUSE filesystem: a pass-through over a backing directory (the
//! "platter") whose file contents change only when the application syncs a
//! file; between syncs, writes and truncations live in memory
//! ([`Unsynced`]). Namespace changes (create, mkdir, rename, unlink, rmdir,
//! chmod) reach the platter at once.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::unsynced::{Unsynced, read_durable};

/// Attributes and entries are not cached by the kernel: every stat comes
/// here, so sizes always include unsynced writes and never outlive a cut.
const TTL: Duration = Duration::ZERO;

/// What the filesystem knows, shared with the [`Disk`](crate::Disk) that
/// can cut its power.
#[derive(Debug)]
pub(crate) struct State {
    /// The backing directory.
    platter: PathBuf,
    /// False once the power is cut: every operation then fails with EIO.
    powered: bool,
    /// Inodes by their path relative to the platter ("" is the root).
    by_path: HashMap<PathBuf, u64>,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
}

#[derive(Debug)]
struct Node {
    /// Relative path; `None` once unlinked (open handles still use it).
    path: Option<PathBuf>,
    /// The backing file, while the file is open or has unsynced content.
    file: Option<Arc<File>>,
    open: u32,
    unsynced: Option<Unsynced>,
}

#[derive(Debug, Clone, Copy)]
struct Handle {
    ino: u64,
    /// Opened with O_SYNC or O_DSYNC: every write is synced before it
    /// returns.
    sync: bool,
}

/// What a power cut dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Files that had unsynced writes or truncations.
    pub files: usize,
    /// Pages of unsynced writes, in bytes.
    pub bytes: u64,
    /// Those files' paths on the disk (sorted; empty for unlinked ones).
    pub paths: Vec<PathBuf>,
}

impl Dropped {
    fn add(&mut self, node: &Node, u: &Unsynced) {
        self.files += 1;
        self.bytes += u.dirty_bytes();
        if let Some(p) = &node.path {
            let at = self.paths.partition_point(|x| x < p);
            self.paths.insert(at, p.clone());
        }
    }
}

impl State {
    pub(crate) fn new(platter: PathBuf) -> Self {
        let mut s = Self {
            platter,
            powered: true,
            by_path: HashMap::new(),
            nodes: HashMap::new(),
            next_ino: INodeNo::ROOT.0,
            handles: HashMap::new(),
            next_fh: 1,
        };
        s.ino_of(PathBuf::new());
        s
    }

    /// Forgets everything not synced and fails every later operation.
    pub(crate) fn cut(&mut self) -> Dropped {
        let mut dropped = Dropped::default();
        for node in self.nodes.values_mut() {
            if let Some(u) = node.unsynced.take()
                && !u.is_clean()
            {
                dropped.add(node, &u);
            }
            node.file = None;
        }
        self.powered = false;
        self.handles.clear();
        dropped
    }

    /// What a cut would drop now.
    pub(crate) fn pending(&self) -> Dropped {
        let mut d = Dropped::default();
        for node in self.nodes.values() {
            if let Some(u) = &node.unsynced
                && !u.is_clean()
            {
                d.add(node, u);
            }
        }
        d
    }

    fn ino_of(&mut self, rel: PathBuf) -> u64 {
        if let Some(&ino) = self.by_path.get(&rel) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.by_path.insert(rel.clone(), ino);
        self.nodes.insert(
            ino,
            Node {
                path: Some(rel),
                file: None,
                open: 0,
                unsynced: None,
            },
        );
        ino
    }

    fn node(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn rel(&self, ino: u64) -> Result<PathBuf, Errno> {
        self.nodes
            .get(&ino)
            .and_then(|n| n.path.clone())
            .ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.rel(parent)?.join(name))
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        self.platter.join(rel)
    }

    /// The attributes the application sees: the platter's, with the size
    /// of unsynced content.
    fn attr(&mut self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let meta = match (&node.path, &node.file) {
            (Some(rel), _) => fs::symlink_metadata(self.platter.join(rel))?,
            (None, Some(f)) => f.metadata()?,
            (None, None) => return Err(Errno::ENOENT),
        };
        let size = node.unsynced.as_ref().map_or(meta.len(), Unsynced::size);
        Ok(to_attr(ino, &meta, size))
    }

    /// The node's backing file, opened if it is not.
    fn file(&mut self, ino: u64) -> Result<Arc<File>, Errno> {
        if let Some(f) = &self.node(ino)?.file {
            return Ok(f.clone());
        }
        let abs = self.abs(&self.rel(ino)?);
        let f = match OpenOptions::new().read(true).write(true).open(&abs) {
            Ok(f) => f,
            Err(_) => File::open(&abs)?,
        };
        let f = Arc::new(f);
        self.node(ino)?.file = Some(f.clone());
        Ok(f)
    }

    /// The node's unsynced state, started if there is none.
    fn unsynced(&mut self, ino: u64) -> Result<(&mut Unsynced, Arc<File>), Errno> {
        let file = self.file(ino)?;
        let node = self.node(ino)?;
        if node.unsynced.is_none() {
            node.unsynced = Some(Unsynced::new(file.metadata()?.len()));
        }
        let u = node.unsynced.as_mut().ok_or(Errno::EIO)?;
        Ok((u, file))
    }

    fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        let Some(file) = self.node(ino)?.file.clone() else {
            return Ok(());
        };
        if let Some(u) = self.node(ino)?.unsynced.as_mut() {
            u.sync_into(&file)?;
        }
        Ok(())
    }

    fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let (u, _) = self.unsynced(ino)?;
        u.truncate(size);
        Ok(())
    }

    /// Drops the backing file of a node nobody has open and nothing
    /// unsynced needs, and the node itself once it is unlinked.
    fn settle(&mut self, ino: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        if node.open > 0 {
            return;
        }
        if node.path.is_none() {
            self.nodes.remove(&ino);
        } else if node.unsynced.as_ref().is_none_or(Unsynced::is_clean) {
            node.unsynced = None;
            node.file = None;
        }
    }

    fn open_handle(&mut self, ino: u64, flags: i32) -> Result<u64, Errno> {
        self.file(ino)?;
        if flags & libc::O_TRUNC != 0 {
            self.truncate(ino, 0)?;
        }
        self.node(ino)?.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(
            fh,
            Handle {
                ino,
                sync: flags & libc::O_DSYNC != 0,
            },
        );
        Ok(fh)
    }

    /// Forgets the path `rel` (unlinked or replaced by a rename).
    fn unlinked(&mut self, rel: &Path) {
        if let Some(ino) = self.by_path.remove(rel) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.path = None;
            }
            self.settle(ino);
        }
    }

    /// Moves `from` and everything under it to `to`.
    fn moved(&mut self, from: &Path, to: &Path) {
        let affected: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for old in affected {
            let Some(ino) = self.by_path.remove(&old) else {
                continue;
            };
            let new = match old.strip_prefix(from) {
                Ok(rest) if rest.as_os_str().is_empty() => to.to_owned(),
                Ok(rest) => to.join(rest),
                Err(_) => continue,
            };
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.path = Some(new.clone());
            }
            self.by_path.insert(new, ino);
        }
    }
}

fn to_attr(ino: u64, meta: &fs::Metadata, size: u64) -> FileAttr {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_fifo() {
        FileType::NamedPipe
    } else if ft.is_socket() {
        FileType::Socket
    } else if ft.is_char_device() {
        FileType::CharDevice
    } else if ft.is_block_device() {
        FileType::BlockDevice
    } else {
        FileType::RegularFile
    };
    let time = |secs: i64, nsecs: i64| {
        let secs = u64::try_from(secs).unwrap_or(0);
        let nsecs = u32::try_from(nsecs).unwrap_or(0);
        UNIX_EPOCH + Duration::new(secs, nsecs)
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: SystemTime::UNIX_EPOCH,
        kind,
        perm: (meta.mode() & 0o7777) as u16,
        nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: u32::try_from(meta.rdev()).unwrap_or(0),
        blksize: 4096,
        flags: 0,
    }
}

/// The filesystem handed to fuser.
#[derive(Debug)]
pub(crate) struct LossyFs {
    pub(crate) state: Arc<Mutex<State>>,
}

impl LossyFs {
    /// The state, if the power is on.
    fn on(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.powered { Ok(s) } else { Err(Errno::EIO) }
    }

    /// Unlink or rmdir: removed from the backing directory at once (names
    /// are durable in this model), and forgotten.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        remove: impl FnOnce(&Path) -> std::io::Result<()>,
    ) {
        let r = self.on().and_then(|mut s| {
            let rel = s.child(parent.0, name)?;
            remove(&s.abs(&rel))?;
            s.unlinked(&rel);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.on().and_then(|mut s| {
            let rel = s.child(parent.0, name)?;
            fs::symlink_metadata(s.abs(&rel))?;
            let ino = s.ino_of(rel);
            s.attr(ino)
        });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.on().and_then(|mut s| s.attr(ino.0)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.on().and_then(|mut s| {
            if let Some(mode) = mode {
                let abs = s.abs(&s.rel(ino.0)?);
                fs::set_permissions(abs, fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if let Some(size) = size {
                s.truncate(ino.0, size)?;
                s.settle(ino.0);
            }
            s.attr(ino.0)
        });
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.on().and_then(|mut s| {
            let rel = s.child(parent.0, name)?;
            fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(s.abs(&rel))?;
            let ino = s.ino_of(rel);
            s.attr(ino)
        });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| fs::remove_file(p));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| fs::remove_dir(p));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.on().and_then(|mut s| {
            let from = s.child(parent.0, name)?;
            let to = s.child(newparent.0, newname)?;
            if flags.contains(RenameFlags::RENAME_EXCHANGE)
                || flags.contains(RenameFlags::RENAME_WHITEOUT)
            {
                return Err(Errno::EINVAL);
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE)
                && fs::symlink_metadata(s.abs(&to)).is_ok()
            {
                return Err(Errno::EEXIST);
            }
            fs::rename(s.abs(&from), s.abs(&to))?;
            if from != to {
                s.unlinked(&to);
                s.moved(&from, &to);
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.on().and_then(|mut s| s.open_handle(ino.0, flags.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.on().and_then(|mut s| {
            let rel = s.child(parent.0, name)?;
            let mut o = OpenOptions::new();
            o.read(true).write(true).mode(mode & !umask & 0o7777);
            if flags & libc::O_EXCL != 0 {
                o.create_new(true);
            } else {
                o.create(true);
            }
            let file = o.open(s.abs(&rel))?;
            let ino = s.ino_of(rel);
            let node = s.node(ino)?;
            if node.file.is_none() {
                node.file = Some(Arc::new(file));
            }
            let fh = s.open_handle(ino, flags)?;
            Ok((s.attr(ino)?, fh))
        });
        match r {
            Ok((a, fh)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.on().and_then(|mut s| {
            let file = s.file(ino.0)?;
            Ok(match s.node(ino.0)?.unsynced.as_ref() {
                Some(u) => u.read(&file, offset, u64::from(size))?,
                None => read_durable(&file, offset, u64::from(size))?,
            })
        });
        match r {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.on().and_then(|mut s| {
            let handle_sync = s.handles.get(&fh.0).is_some_and(|h| h.sync);
            let (u, file) = s.unsynced(ino.0)?;
            u.write(&file, offset, data)?;
            if handle_sync || flags.0 & libc::O_DSYNC != 0 {
                s.sync(ino.0)?;
            }
            u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
        });
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // Closing a file does not make it durable.
        match self.on() {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // After a cut there is nothing left to release; succeed regardless.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = s.handles.remove(&fh.0) {
            if let Some(n) = s.nodes.get_mut(&h.ino) {
                n.open = n.open.saturating_sub(1);
            }
            s.settle(h.ino);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.on().and_then(|mut s| s.sync(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.on().and_then(|mut s| {
            let rel = s.rel(ino.0)?;
            let parent_ino = match rel.parent() {
                Some(p) => s.ino_of(p.to_owned()),
                None => ino.0,
            };
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".into()),
                (parent_ino, FileType::Directory, "..".into()),
            ];
            let mut names: Vec<(std::ffi::OsString, FileType)> = fs::read_dir(s.abs(&rel))?
                .filter_map(Result::ok)
                .map(|e| {
                    let kind = match e.file_type() {
                        Ok(t) if t.is_dir() => FileType::Directory,
                        Ok(t) if t.is_symlink() => FileType::Symlink,
                        _ => FileType::RegularFile,
                    };
                    (e.file_name(), kind)
                })
                .collect();
            names.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, kind) in names {
                let child = s.ino_of(rel.join(&name));
                entries.push((child, kind, name));
            }
            Ok(entries)
        });
        match r {
            Ok(entries) => {
                let skip = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(skip) {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are already on the platter.
        match self.on() {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let r = self.on().and_then(|s| {
            nix::sys::statvfs::statvfs(&s.platter).map_err(|e| Errno::from_i32(e as i32))
        });
        match r {
            Ok(v) => reply.statfs(
                v.blocks(),
                v.blocks_free(),
                v.blocks_available(),
                v.files(),
                v.files_free(),
                u32::try_from(v.block_size()).unwrap_or(4096),
                u32::try_from(v.name_max()).unwrap_or(255),
                u32::try_from(v.fragment_size()).unwrap_or(4096),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.on() {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.on().and_then(|mut s| {
            if mode == libc::FALLOC_FL_KEEP_SIZE {
                return Ok(());
            }
            if mode != 0 {
                return Err(Errno::from_i32(libc::EOPNOTSUPP));
            }
            let (u, _) = s.unsynced(ino.0)?;
            let end = offset.saturating_add(length);
            if end > u.size() {
                u.truncate(end);
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
