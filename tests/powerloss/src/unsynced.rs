//! One file's content between two syncs: what the application wrote (and
//! truncated) since the last `fsync`/`fdatasync`, held in memory over the
//! durable content in the backing file, which changes only when the file is
//! synced. Losing power is dropping this value.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The granularity of the overlay (a page, as in a kernel's page cache).
pub(crate) const PAGE: u64 = 4096;

/// A file's unsynced state over its durable (backing) content.
#[derive(Debug)]
pub(crate) struct Unsynced {
    /// The backing file's length (it is not written between syncs).
    durable_len: u64,
    /// The size the application sees.
    size: u64,
    /// The smallest size since the last sync: durable bytes at or past it
    /// were truncated away and read as zeros.
    floor: u64,
    /// Written pages by page index, each a whole page as the application
    /// sees it (bytes past `size` are zero).
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl Unsynced {
    /// Nothing unsynced yet over a backing file of `durable_len` bytes.
    pub(crate) fn new(durable_len: u64) -> Self {
        Self {
            durable_len,
            size: durable_len,
            floor: durable_len,
            pages: BTreeMap::new(),
        }
    }

    /// The size the application sees.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// How many bytes a cut would drop (written pages, a page each).
    pub(crate) fn dirty_bytes(&self) -> u64 {
        self.pages.len() as u64 * PAGE
    }

    /// Whether a sync would change the backing file.
    pub(crate) fn is_clean(&self) -> bool {
        self.pages.is_empty() && self.size == self.durable_len && self.floor == self.durable_len
    }

    /// The durable content of page `idx` as the application sees it
    /// (truncated-away bytes as zeros).
    fn durable_page(&self, backing: &File, idx: u64) -> io::Result<Box<[u8]>> {
        let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = idx * PAGE;
        let visible = self.floor.min(self.durable_len);
        if start < visible {
            let n = (visible - start).min(PAGE) as usize;
            read_exact_at(backing, &mut page[..n], start)?;
        }
        Ok(page)
    }

    /// Up to `len` bytes at `offset`, as the application sees them.
    pub(crate) fn read(&self, backing: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut at = offset;
        while at < end {
            let idx = at / PAGE;
            let in_page = (at % PAGE) as usize;
            let n = ((end - at).min(PAGE - at % PAGE)) as usize;
            match self.pages.get(&idx) {
                Some(page) => out.extend_from_slice(&page[in_page..in_page + n]),
                None => {
                    let page = self.durable_page(backing, idx)?;
                    out.extend_from_slice(&page[in_page..in_page + n]);
                }
            }
            at += n as u64;
        }
        Ok(out)
    }

    /// Writes `data` at `offset`, growing the file if it ends past it.
    pub(crate) fn write(&mut self, backing: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let idx = at / PAGE;
            let in_page = (at % PAGE) as usize;
            let n = ((end - at).min(PAGE - at % PAGE)) as usize;
            if !self.pages.contains_key(&idx) {
                let page = self.durable_page(backing, idx)?;
                self.pages.insert(idx, page);
            }
            let src = (at - offset) as usize;
            if let Some(page) = self.pages.get_mut(&idx) {
                page[in_page..in_page + n].copy_from_slice(&data[src..src + n]);
            }
            at += n as u64;
        }
        self.size = self.size.max(end);
        Ok(())
    }

    /// Sets the size: shrinking forgets what lay past it, growing adds zeros.
    pub(crate) fn truncate(&mut self, size: u64) {
        if size < self.size {
            self.floor = self.floor.min(size);
            let first_gone = size.div_ceil(PAGE);
            self.pages.split_off(&first_gone);
            if !size.is_multiple_of(PAGE)
                && let Some(page) = self.pages.get_mut(&(size / PAGE))
            {
                page[(size % PAGE) as usize..].fill(0);
            }
        }
        self.size = size;
    }

    /// Makes the backing file hold what the application sees, and starts
    /// over with nothing unsynced.
    pub(crate) fn sync_into(&mut self, backing: &File) -> io::Result<()> {
        if self.floor < self.durable_len {
            backing.set_len(self.floor)?;
        }
        for (&idx, page) in &self.pages {
            let start = idx * PAGE;
            if start >= self.size {
                break;
            }
            let n = (self.size - start).min(PAGE) as usize;
            backing.write_all_at(&page[..n], start)?;
        }
        backing.set_len(self.size)?;
        *self = Self::new(self.size);
        Ok(())
    }
}

/// Fills `buf` from `file` at `offset`; bytes past the end stay as they are.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Up to `len` bytes of `file` at `offset` (fewer at its end).
pub(crate) fn read_durable(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let size = file.metadata()?.len();
    let end = offset.saturating_add(len).min(size);
    if offset >= end {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; (end - offset) as usize];
    read_exact_at(file, &mut buf, offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn backing(content: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(content).expect("write");
        let file = f.reopen().expect("reopen");
        (f, file)
    }

    fn on_disk(f: &File) -> Vec<u8> {
        read_durable(f, 0, u64::MAX).expect("read")
    }

    #[test]
    fn writes_are_seen_but_not_on_disk_until_synced() {
        let (_t, f) = backing(b"hello world");
        let mut u = Unsynced::new(11);
        u.write(&f, 6, b"there, friend").expect("write");
        assert_eq!(u.read(&f, 0, 100).expect("read"), b"hello there, friend");
        assert_eq!(u.size(), 19);
        assert_eq!(
            on_disk(&f),
            b"hello world",
            "nothing reaches the disk before a sync"
        );
        u.sync_into(&f).expect("sync");
        assert_eq!(on_disk(&f), b"hello there, friend");
        assert!(u.is_clean());
        assert_eq!(u.dirty_bytes(), 0);
    }

    #[test]
    fn writes_across_pages_and_past_the_end_leave_zeros_between() {
        let (_t, f) = backing(b"");
        let mut u = Unsynced::new(0);
        let far = 3 * PAGE + 10;
        u.write(&f, far, b"tail").expect("write");
        u.write(&f, PAGE - 2, b"span").expect("write");
        let all = u.read(&f, 0, u64::MAX).expect("read");
        assert_eq!(all.len() as u64, far + 4);
        assert_eq!(&all[(PAGE - 2) as usize..(PAGE + 2) as usize], b"span");
        assert!(all[..(PAGE - 2) as usize].iter().all(|&b| b == 0));
        assert!(
            all[(PAGE + 2) as usize..far as usize]
                .iter()
                .all(|&b| b == 0)
        );
        u.sync_into(&f).expect("sync");
        assert_eq!(on_disk(&f), all);
    }

    #[test]
    fn a_truncate_then_regrow_hides_the_old_bytes_and_a_sync_applies_it() {
        let (_t, f) = backing(&[7u8; 10_000]);
        let mut u = Unsynced::new(10_000);
        u.write(&f, 100, b"abc").expect("write");
        u.truncate(101);
        assert_eq!(u.read(&f, 98, 10).expect("read"), [7, 7, b'a']);
        u.truncate(9_000);
        let seen = u.read(&f, 0, u64::MAX).expect("read");
        assert_eq!(seen.len(), 9_000);
        assert_eq!(&seen[99..101], &[7, b'a']);
        assert!(
            seen[101..].iter().all(|&b| b == 0),
            "truncated bytes come back as zeros"
        );
        assert_eq!(
            on_disk(&f),
            vec![7u8; 10_000],
            "the disk is untouched before a sync"
        );
        u.sync_into(&f).expect("sync");
        assert_eq!(on_disk(&f), seen);
    }

    #[test]
    fn dropping_the_overlay_is_losing_everything_since_the_sync() {
        let (_t, f) = backing(b"durable");
        let mut u = Unsynced::new(7);
        u.write(&f, 0, b"DUR").expect("write");
        u.sync_into(&f).expect("sync");
        u.write(&f, 3, b"ABLE and more").expect("write");
        u.truncate(5);
        assert!(!u.is_clean());
        drop(u);
        assert_eq!(on_disk(&f), b"DURable", "only the synced write survives");
    }
}
