//! A file system that can lose power, for the power-loss test
//! (`powerloss.rs`): a FUSE pass-through to a backing directory that
//! remembers, for every file, what it held at its last `fsync` (or
//! `fdatasync`), and on [`Lossy::cut`] puts every file back to that. What
//! a program wrote and did not sync is gone, as after a power cut on a disk
//! with a volatile write cache; what it synced stays. A SIGKILL alone
//! cannot show this: the kernel's page cache outlives the process.
//!
//! The model, and its limits:
//! - File data and length: writes go through to the backing file at once,
//!   but before a page (4 KiB) that held synced data is first overwritten
//!   or cut off by a truncation, its synced bytes are saved; a sync of the
//!   file forgets what was saved, and a cut writes it back and truncates
//!   the file to its synced length. A cut may also tear ([`Cut::Torn`]):
//!   each unsynced page then independently keeps its new bytes, gets its
//!   old ones back, or (past the synced length, when the new length is
//!   kept) reads as zeros, as a disk that wrote some sectors and not others.
//! - Names, strictly as POSIX promises them: a name made (create, mkdir,
//!   link), removed (unlink, rmdir) or moved (rename) is durable only once
//!   every directory it changed has been synced (`fsync` of the directory)
//!   since. Until then a cut undoes it, newest first: a made name goes, a
//!   removed one comes back (removed files wait in a graveyard beside the
//!   backing directory until their removal is durable), a rename is
//!   reversed. Syncing a file does not make its name durable. Real file
//!   systems are often kinder (ext4 and XFS commit a new file's name with
//!   its first `fsync`); a program that passes here does not rely on that.
//!   They can also be harsher: a journal commits every change of names
//!   made so far, in order, whoever syncs, so a new name may be on the
//!   disk before its file's bytes are. A torn cut keeps such a prefix.
//! - `fallocate` is refused (ENOSYS), so RocksDB writes its log without
//!   preallocation here; extended attributes, special files, symlinks and
//!   locks across the mount are not served (locks stay the kernel's own).
//! - Torn cuts tear by 4 KiB page (a disk with 512-byte sectors can tear
//!   inside one). A file shrunk since its sync gets its synced length back,
//!   each page cut off its old bytes or zeros.
//! - A directory renamed while changes of names under it are pending is
//!   refused (EXDEV): those are kept by path. The vault and RocksDB never
//!   rename directories.
//! - The cut comes after the writer is killed and reaped, which fences
//!   every write a thread waited for. Writes nobody waits for (a shared
//!   writable mmap written back later, AIO, io_uring) could arrive after
//!   the cut; the vault and RocksDB (by default) use none.
//!
//! Served by one thread, with attributes and names never cached by the
//! kernel (time to live 0), so a cut is seen at once by the next open.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, WriteFlags,
};
use rand::Rng;

const PAGE: u64 = 4096;
const TTL: Duration = Duration::ZERO;

/// How a cut leaves what was not synced.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cut {
    /// Everything unsynced is gone: each file as it was at its last sync.
    Clean,
    /// Each unsynced page independently survives, is lost, or reads as
    /// zeros; a grown file's unsynced length survives or not (a shrunk one
    /// gets its synced length back); the oldest unsynced changes of names,
    /// up to a random one, survive.
    Torn,
}

/// What a cut did, for the test's own checks and its failure messages.
#[derive(Debug, Default)]
pub(crate) struct CutReport {
    /// Files that had unsynced changes.
    pub files: usize,
    /// Changes of names undone.
    pub names: usize,
    /// Pages put back to their synced bytes.
    pub restored: usize,
    /// Unsynced bytes cut off the ends of files.
    pub truncated: u64,
}

struct Dirty {
    /// The backing file (an open handle, so a rename does not lose it).
    file: File,
    /// Its length at its last sync.
    synced_len: u64,
    /// Page number to the bytes it held at the last sync (up to
    /// `synced_len`), saved before the page was first changed since.
    saved: BTreeMap<u64, Vec<u8>>,
}

/// A change of names not yet durable, and how to undo it.
enum Undo {
    /// A name made: remove it.
    Made(PathBuf),
    /// A name removed: what it named waits at `grave`.
    Removed { path: PathBuf, grave: PathBuf },
    /// A rename; what `to` named before, if anything, waits at `replaced`.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<PathBuf>,
    },
}

struct Pending {
    undo: Undo,
    /// Directories it changed that have not been synced since.
    dirs: Vec<PathBuf>,
}

#[derive(Default)]
struct State {
    /// FUSE inode number to backing path.
    paths: HashMap<u64, PathBuf>,
    /// Open files by handle.
    open: HashMap<u64, Arc<File>>,
    /// Open directories by handle: their entries as listed at the read
    /// from offset 0, so offsets mean the same from one read to the next.
    listings: HashMap<u64, Vec<(u64, FileType, std::ffi::OsString)>>,
    next_fh: u64,
    /// Files changed since their last sync, by inode number (in order:
    /// over the same files, a seeded torn cut draws the same way).
    dirty: BTreeMap<u64, Dirty>,
    /// Changes of names not yet durable, oldest first.
    names: Vec<Pending>,
    graves: u64,
    /// Bytes written and syncs served since the mount, for the test to
    /// see that the vault's writes went through here.
    written: u64,
    syncs: u64,
    /// A directory whose sync is answered EINVAL, as some file systems
    /// answer every directory's (backing path).
    unsyncable: Option<PathBuf>,
    /// Links answered EPERM, as on a file system without hard links.
    no_links: bool,
    /// Renames with flags (RENAME_NOREPLACE) answered EINVAL, as by file
    /// systems that do not know them.
    no_rename_flags: bool,
}

struct Shared {
    root: PathBuf,
    /// Where removed files wait until their removal is durable.
    graveyard: PathBuf,
    state: Mutex<State>,
}

/// A mounted lossy file system; unmounted when dropped.
pub(crate) struct Lossy {
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Lossy {
    /// Mounts a lossy view of `backing` at `mountpoint` (both existing
    /// directories). Fails where FUSE cannot be mounted (no /dev/fuse, or
    /// not allowed to mount).
    pub(crate) fn mount(backing: &Path, mountpoint: &Path) -> std::io::Result<Lossy> {
        let mut graveyard = backing.as_os_str().to_owned();
        graveyard.push(".graveyard");
        let graveyard = PathBuf::from(graveyard);
        std::fs::create_dir_all(&graveyard)?;
        let shared = Arc::new(Shared {
            root: backing.to_path_buf(),
            graveyard,
            state: Mutex::new(State::default()),
        });
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("vault-lossy".into()),
            MountOption::DefaultPermissions,
        ];
        let session = fuser::spawn_mount(Fs(shared.clone()), mountpoint, &config)?;
        Ok(Lossy {
            shared,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    /// Bytes written through the mount and syncs served since it was
    /// mounted.
    /// From now on, a sync of directory `dir` (a path under the mount) is
    /// answered EINVAL and makes nothing durable.
    pub(crate) fn refuse_dir_sync(&self, mountpoint: &Path, dir: &Path) {
        let rest = dir.strip_prefix(mountpoint).unwrap();
        let backing = self.shared.root.join(rest);
        // The mount's root is the backing directory itself.
        let backing = if rest.as_os_str().is_empty() {
            self.shared.root.clone()
        } else {
            backing
        };
        self.shared.state.lock().unwrap().unsyncable = Some(backing);
    }

    /// From now on, links are refused (EPERM), as on vfat; and, with
    /// `flags`, renames with flags too (EINVAL), as by some shared folders.
    pub(crate) fn refuse_links(&self, flags: bool) {
        let mut s = self.shared.state.lock().unwrap();
        s.no_links = true;
        s.no_rename_flags = flags;
    }

    pub(crate) fn traffic(&self) -> (u64, u64) {
        let s = self.shared.state.lock().unwrap();
        (s.written, s.syncs)
    }

    /// The power cut: every file goes back to what it held at its last
    /// sync (or, torn, to some mix of that and what was written since).
    /// Whoever wrote must be gone first (killed and reaped): a write served
    /// after the cut would count as written after power came back.
    pub(crate) fn cut(&self, how: Cut, rng: &mut impl Rng) -> std::io::Result<CutReport> {
        let mut s = self.shared.state.lock().unwrap();
        let mut report = CutReport::default();
        // Names first, newest first; then each file's bytes (by open
        // handle, wherever its name now is). Torn, the oldest changes of
        // names may already be on the disk, as a journalling file system
        // commits them in order whoever syncs: a random number of them
        // stay, the rest are undone.
        let mut undone = std::mem::take(&mut s.names);
        let kept = match how {
            Cut::Torn => rng.gen_range(0..=undone.len()),
            Cut::Clean => 0,
        };
        let durable: Vec<Pending> = undone.drain(..kept).collect();
        bury_all_for_good(durable)?;
        for p in undone.into_iter().rev() {
            report.names += 1;
            // A name already moved on by a later change that is durable
            // has nothing left to undo here.
            let gone = |r: std::io::Result<()>| match r {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            };
            match p.undo {
                Undo::Made(path) => gone(remove(&path))?,
                Undo::Removed { path, grave } => gone(std::fs::rename(grave, path))?,
                Undo::Renamed { from, to, replaced } => {
                    gone(std::fs::rename(&to, from))?;
                    if let Some(grave) = replaced {
                        gone(std::fs::rename(grave, to))?;
                    }
                }
            }
        }
        for (_, d) in std::mem::take(&mut s.dirty) {
            report.files += 1;
            let len = d.file.metadata()?.len();
            let keep_len = matches!(how, Cut::Torn) && len > d.synced_len && rng.gen_bool(0.5);
            for (page, bytes) in &d.saved {
                if matches!(how, Cut::Torn) && rng.gen_bool(0.5) {
                    continue;
                }
                d.file.write_all_at(bytes, page * PAGE)?;
                report.restored += 1;
            }
            if keep_len {
                // Pages past the synced length: each kept, or zeros.
                let mut page = d.synced_len.div_ceil(PAGE);
                while page * PAGE < len {
                    if rng.gen_bool(0.5) {
                        let n = PAGE.min(len - page * PAGE);
                        d.file.write_all_at(&vec![0; n as usize], page * PAGE)?;
                    }
                    page += 1;
                }
            } else {
                report.truncated += len.saturating_sub(d.synced_len);
                d.file.set_len(d.synced_len)?;
            }
        }
        Ok(report)
    }
}

/// Mounts a lossy file system over `dir/disk` at `dir/mnt`, or, where this
/// host cannot mount one (no /dev/fuse, not allowed to mount) and
/// `VAULT_REQUIRE_FUSE` is unset, says why and gives `None`. CI sets it:
/// there the test must run.
pub(crate) fn mount_in(dir: &Path) -> Option<(Lossy, PathBuf, PathBuf)> {
    let (backing, mnt) = (dir.join("disk"), dir.join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    match Lossy::mount(&backing, &mnt) {
        Ok(fs) => Some((fs, backing, mnt)),
        Err(e) if std::env::var_os("VAULT_REQUIRE_FUSE").is_some() => {
            panic!("cannot mount the lossy file system: {e}")
        }
        Err(e) => {
            eprintln!(
                "SKIPPED: cannot mount a FUSE file system here ({e}); \
                 VAULT_REQUIRE_FUSE=1 makes this a failure"
            );
            None
        }
    }
}

impl Drop for Lossy {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if s.umount_and_join().is_err() {
                // Busy (a child still holds files on it): detach it, so no
                // dead mount outlives the test.
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.mountpoint)
                    .status();
            }
        }
    }
}

struct Fs(Arc<Shared>);

/// Removes a file or a whole directory.
fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// Changes of names became durable: what they removed is gone for good.
/// Goes through them all; the first failure is the answer.
fn bury_all_for_good(durable: Vec<Pending>) -> std::io::Result<()> {
    let mut result = Ok(());
    for p in durable {
        let r = match p.undo {
            Undo::Removed { grave, .. }
            | Undo::Renamed {
                replaced: Some(grave),
                ..
            } => match remove(&grave) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
            _ => Ok(()),
        };
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// The entries of directory `path` (FUSE number `ino`), `.` and `..`
/// first.
fn listing(ino: u64, path: &Path) -> Result<Vec<(u64, FileType, std::ffi::OsString)>, Errno> {
    let mut entries = vec![
        (ino, FileType::Directory, ".".into()),
        (ino, FileType::Directory, "..".into()),
    ];
    for e in std::fs::read_dir(path).map_err(errno)? {
        let e = e.map_err(errno)?;
        let m = e.metadata().map_err(errno)?;
        entries.push((m.ino() + 2, kind(&m), e.file_name()));
    }
    Ok(entries)
}

fn dir_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}

fn kind(m: &Metadata) -> FileType {
    let t = m.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

impl Fs {
    fn ino_of(&self, path: &Path, m: &Metadata) -> u64 {
        if path == self.0.root {
            1
        } else {
            // Never 1 (the root's number for FUSE).
            m.ino() + 2
        }
    }

    fn attr(&self, ino: u64, m: &Metadata) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: m.len(),
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind(m),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: m.blksize() as u32,
            flags: 0,
        }
    }

    fn path(&self, s: &State, ino: INodeNo) -> Result<PathBuf, Errno> {
        if ino.0 == 1 {
            return Ok(self.0.root.clone());
        }
        s.paths.get(&ino.0).cloned().ok_or(Errno::ESTALE)
    }

    /// Looks `path` up on the backing side and remembers its number.
    fn enter(&self, s: &mut State, path: PathBuf) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(&path).map_err(errno)?;
        let ino = self.ino_of(&path, &m);
        let attr = self.attr(ino, &m);
        s.paths.insert(ino, path);
        Ok(attr)
    }

    fn child(&self, s: &State, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(s, parent)?.join(name))
    }

    /// Records a change of names, durable once `dirs` are synced.
    fn changed(s: &mut State, undo: Undo, mut dirs: Vec<PathBuf>) {
        dirs.dedup();
        s.names.push(Pending { undo, dirs });
    }

    /// Moves what `path` names into the graveyard; returns where.
    fn bury(&self, s: &mut State, path: &Path) -> Result<PathBuf, Errno> {
        let m = std::fs::symlink_metadata(path).map_err(errno)?;
        s.graves += 1;
        let grave = self.0.graveyard.join(s.graves.to_string());
        std::fs::rename(path, &grave).map_err(errno)?;
        // Still open, it may be asked about by number.
        s.paths.insert(self.ino_of(path, &m), grave.clone());
        Ok(grave)
    }

    /// `dir` was synced: changes that waited only for it are durable, and
    /// what they removed is gone for good.
    fn synced_dir(s: &mut State, dir: &Path) -> std::io::Result<()> {
        let (mut durable, mut kept) = (Vec::new(), Vec::new());
        for mut p in std::mem::take(&mut s.names) {
            p.dirs.retain(|d| d != dir);
            if p.dirs.is_empty() {
                durable.push(p);
            } else {
                kept.push(p);
            }
        }
        // The record is right before anything can fail.
        s.names = kept;
        bury_all_for_good(durable)
    }

    fn handle(s: &mut State, file: File) -> u64 {
        s.next_fh += 1;
        s.open.insert(s.next_fh, Arc::new(file));
        s.next_fh
    }

    /// Before `ino`'s bytes in `[from, to)` change: start tracking the
    /// file if it was clean, and save the synced bytes of every page in
    /// the range not saved yet.
    fn before_change(
        s: &mut State,
        ino: u64,
        file: &File,
        from: u64,
        to: u64,
    ) -> Result<(), Errno> {
        let d = match s.dirty.entry(ino) {
            std::collections::btree_map::Entry::Occupied(d) => d.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let synced_len = file.metadata().map_err(errno)?.len();
                // A handle of its own that can read (the writer's may be
                // write-only), reopened through /proc so it reaches the
                // same file whatever its name is now.
                let fd = std::os::fd::AsRawFd::as_raw_fd(file);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(format!("/proc/self/fd/{fd}"))
                    .map_err(errno)?;
                v.insert(Dirty {
                    file,
                    synced_len,
                    saved: BTreeMap::new(),
                })
            }
        };
        let to = to.min(d.synced_len);
        if from >= to {
            return Ok(());
        }
        for page in from / PAGE..=(to - 1) / PAGE {
            if d.saved.contains_key(&page) {
                continue;
            }
            let start = page * PAGE;
            let end = (start + PAGE).min(d.synced_len);
            let mut bytes = vec![0; (end - start) as usize];
            d.file.read_exact_at(&mut bytes, start).map_err(errno)?;
            d.saved.insert(page, bytes);
        }
        Ok(())
    }

    /// Sets the length of `ino`'s file, saving what a shrink cuts off.
    fn set_len(s: &mut State, ino: u64, file: &File, len: u64) -> Result<(), Errno> {
        let now = file.metadata().map_err(errno)?.len();
        Self::before_change(s, ino, file, len.min(now), now.max(len))?;
        file.set_len(len).map_err(errno)
    }

    fn open_file(path: &Path, flags: i32, create: Option<u32>) -> std::io::Result<File> {
        let mut o = OpenOptions::new();
        match flags & libc::O_ACCMODE {
            libc::O_WRONLY => o.write(true),
            libc::O_RDWR => o.read(true).write(true),
            _ => o.read(true),
        };
        if let Some(mode) = create {
            if flags & libc::O_EXCL != 0 {
                o.create_new(true);
            } else {
                o.create(true);
            }
            o.mode(mode);
        }
        // Never O_APPEND on the backing side: writes come with their
        // offset (the kernel resolves appends), and pwrite on an append
        // descriptor would ignore it.
        o.custom_flags(flags & libc::O_CLOEXEC);
        o.open(path)
    }
}

macro_rules! tri {
    ($reply:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $reply.error(e),
        }
    };
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.0.state.lock().unwrap();
        let path = tri!(reply, self.child(&s, parent, name));
        let attr = tri!(reply, self.enter(&mut s, path));
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = self.0.state.lock().unwrap();
        let m = match fh.and_then(|fh| s.open.get(&fh.0)) {
            Some(f) => f.metadata(),
            None => {
                let path = tri!(reply, self.path(&s, ino));
                std::fs::symlink_metadata(path)
            }
        };
        let m = tri!(reply, m.map_err(errno));
        reply.attr(&TTL, &self.attr(ino.0, &m));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<fuser::TimeOrNow>,
        mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.0.state.lock().unwrap();
        let path = tri!(reply, self.path(&s, ino));
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            let p = std::fs::Permissions::from_mode(mode & 0o7777);
            tri!(reply, std::fs::set_permissions(&path, p).map_err(errno));
        }
        if uid.is_some() || gid.is_some() {
            tri!(
                reply,
                std::os::unix::fs::lchown(&path, uid, gid).map_err(errno)
            );
        }
        if let Some(len) = size {
            let file = match fh.and_then(|fh| s.open.get(&fh.0)) {
                Some(f) => f.clone(),
                None => Arc::new(tri!(
                    reply,
                    OpenOptions::new().write(true).open(&path).map_err(errno)
                )),
            };
            tri!(reply, Self::set_len(&mut s, ino.0, &file, len));
        }
        if atime.is_some() || mtime.is_some() {
            let at = |t: fuser::TimeOrNow| match t {
                fuser::TimeOrNow::SpecificTime(t) => t,
                fuser::TimeOrNow::Now => SystemTime::now(),
            };
            let mut times = std::fs::FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(at(t));
            }
            if let Some(t) = mtime {
                times = times.set_modified(at(t));
            }
            let f = tri!(reply, File::open(&path).map_err(errno));
            tri!(reply, f.set_times(times).map_err(errno));
        }
        let m = tri!(reply, std::fs::symlink_metadata(&path).map_err(errno));
        reply.attr(&TTL, &self.attr(ino.0, &m));
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
        let mut s = self.0.state.lock().unwrap();
        let path = tri!(reply, self.child(&s, parent, name));
        tri!(
            reply,
            std::fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(&path)
                .map_err(errno)
        );
        Self::changed(&mut s, Undo::Made(path.clone()), vec![dir_of(&path)]);
        let attr = tri!(reply, self.enter(&mut s, path));
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.0.state.lock().unwrap();
        let path = tri!(reply, self.child(&s, parent, name));
        let m = tri!(reply, std::fs::symlink_metadata(&path).map_err(errno));
        if m.is_dir() {
            return reply.error(Errno::EISDIR);
        }
        let grave = tri!(reply, self.bury(&mut s, &path));
        let dir = dir_of(&path);
        Self::changed(&mut s, Undo::Removed { path, grave }, vec![dir]);
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.0.state.lock().unwrap();
        let path = tri!(reply, self.child(&s, parent, name));
        let m = tri!(reply, std::fs::symlink_metadata(&path).map_err(errno));
        if !m.is_dir() {
            return reply.error(Errno::ENOTDIR);
        }
        if tri!(reply, std::fs::read_dir(&path).map_err(errno))
            .next()
            .is_some()
        {
            return reply.error(Errno::ENOTEMPTY);
        }
        let grave = tri!(reply, self.bury(&mut s, &path));
        let dir = dir_of(&path);
        Self::changed(&mut s, Undo::Removed { path, grave }, vec![dir]);
        reply.ok();
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
        let mut s = self.0.state.lock().unwrap();
        let noreplace = flags == RenameFlags::RENAME_NOREPLACE;
        if flags.bits() != 0 && (!noreplace || s.no_rename_flags) {
            return reply.error(Errno::EINVAL);
        }
        let from = tri!(reply, self.child(&s, parent, name));
        let to = tri!(reply, self.child(&s, newparent, newname));
        let moved = tri!(reply, std::fs::symlink_metadata(&from).map_err(errno));
        if from == to {
            return reply.ok();
        }
        // Pending changes are kept by path: a directory moved with some
        // under it would leave them pointing nowhere. Not modelled (neither
        // the vault nor RocksDB renames directories): refused as across
        // devices, which callers know to fall back from.
        let under = |p: &Path| p.starts_with(&from);
        if moved.is_dir()
            && s.names.iter().any(|p| {
                p.dirs.iter().any(|d| under(d))
                    || match &p.undo {
                        Undo::Made(x) | Undo::Removed { path: x, .. } => under(x),
                        Undo::Renamed { from: f, to: t, .. } => under(f) || under(t),
                    }
            })
        {
            return reply.error(Errno::EXDEV);
        }
        let replaced = match std::fs::symlink_metadata(&to) {
            Ok(_) if noreplace => return reply.error(Errno::EEXIST),
            Ok(_) => Some(tri!(reply, self.bury(&mut s, &to))),
            Err(_) => None,
        };
        if let Err(e) = std::fs::rename(&from, &to) {
            if let Some(grave) = &replaced {
                let _ = std::fs::rename(grave, &to);
            }
            return reply.error(errno(e));
        }
        let dirs = vec![dir_of(&from), dir_of(&to)];
        let undo = Undo::Renamed {
            from: from.clone(),
            to: to.clone(),
            replaced,
        };
        Self::changed(&mut s, undo, dirs);
        // Everything at or under `from` now lives under `to`.
        for p in s.paths.values_mut() {
            if let Ok(rest) = p.strip_prefix(&from) {
                *p = if rest.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(rest)
                };
            }
        }
        reply.ok();
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut s = self.0.state.lock().unwrap();
        if s.no_links {
            return reply.error(Errno::EPERM);
        }
        let from = tri!(reply, self.path(&s, ino));
        let to = tri!(reply, self.child(&s, newparent, newname));
        tri!(reply, std::fs::hard_link(&from, &to).map_err(errno));
        Self::changed(&mut s, Undo::Made(to.clone()), vec![dir_of(&to)]);
        let m = tri!(reply, std::fs::symlink_metadata(&to).map_err(errno));
        reply.entry(&TTL, &self.attr(ino.0, &m), Generation(0));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.0.state.lock().unwrap();
        let path = tri!(reply, self.path(&s, ino));
        let file = tri!(reply, Self::open_file(&path, flags.0, None).map_err(errno));
        if flags.0 & libc::O_TRUNC != 0 && flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            tri!(reply, Self::set_len(&mut s, ino.0, &file, 0));
        }
        let fh = Self::handle(&mut s, file);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let file = {
            let s = self.0.state.lock().unwrap();
            tri!(reply, s.open.get(&fh.0).cloned().ok_or(Errno::EBADF))
        };
        let mut buf = vec![0; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(e)),
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.0.state.lock().unwrap();
        let file = tri!(reply, s.open.get(&fh.0).cloned().ok_or(Errno::EBADF));
        let end = offset + data.len() as u64;
        tri!(
            reply,
            Self::before_change(&mut s, ino.0, &file, offset, end)
        );
        tri!(reply, file.write_all_at(data, offset).map_err(errno));
        s.written += data.len() as u64;
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // A close is not a sync.
        reply.ok();
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
        self.0.state.lock().unwrap().open.remove(&fh.0);
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
        // Data and length both: fdatasync persists a grown length too.
        let mut s = self.0.state.lock().unwrap();
        s.dirty.remove(&ino.0);
        s.syncs += 1;
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Listed at the first read (offset 0).
        let mut s = self.0.state.lock().unwrap();
        tri!(reply, self.path(&s, ino));
        s.next_fh += 1;
        let fh = s.next_fh;
        s.listings.insert(fh, Vec::new());
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.0.state.lock().unwrap();
        if offset == 0 {
            // From the start (a first read or a rewind): list it as it is now.
            let path = tri!(reply, self.path(&s, ino));
            let entries = tri!(reply, listing(ino.0, &path));
            s.listings.insert(fh.0, entries);
        }
        let entries = tri!(reply, s.listings.get(&fh.0).ok_or(Errno::EBADF));
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.0.state.lock().unwrap().listings.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.0.state.lock().unwrap();
        let dir = tri!(reply, self.path(&s, ino));
        if s.unsyncable.as_ref() == Some(&dir) {
            return reply.error(Errno::EINVAL);
        }
        tri!(reply, Self::synced_dir(&mut s, &dir).map_err(errno));
        s.syncs += 1;
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let v = tri!(
            reply,
            rustix::fs::statvfs(&self.0.root).map_err(|e| Errno::from_i32(e.raw_os_error()))
        );
        reply.statfs(
            v.f_blocks,
            v.f_bfree,
            v.f_bavail,
            v.f_files,
            v.f_ffree,
            v.f_bsize as u32,
            v.f_namemax as u32,
            v.f_frsize as u32,
        );
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
        let mut s = self.0.state.lock().unwrap();
        let path = tri!(reply, self.child(&s, parent, name));
        let existed = std::fs::symlink_metadata(&path).is_ok();
        let file = tri!(
            reply,
            Self::open_file(&path, flags, Some(mode & !umask & 0o7777)).map_err(errno)
        );
        if !existed {
            let dir = dir_of(&path);
            Self::changed(&mut s, Undo::Made(path.clone()), vec![dir]);
        }
        let mut attr = tri!(reply, self.enter(&mut s, path));
        if flags & libc::O_TRUNC != 0 && attr.size > 0 {
            tri!(reply, Self::set_len(&mut s, attr.ino.0, &file, 0));
            attr.size = 0;
        }
        let fh = Self::handle(&mut s, file);
        reply.created(
            &TTL,
            &attr,
            Generation(0),
            FileHandle(fh),
            FopenFlags::empty(),
        );
    }
}

/// The instrument itself: what a cut keeps and what it undoes.
#[test]
fn a_cut_keeps_exactly_what_was_synced() {
    use rand::SeedableRng;
    let dir = tempfile::tempdir().unwrap();
    let Some((fs, _, mnt)) = mount_in(dir.path()) else {
        return;
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let sync_dir = |p: &Path| File::open(p).unwrap().sync_all().unwrap();
    let page = |b: u8| vec![b; PAGE as usize];

    // Bytes: synced three pages of 1s; then page 1 overwritten, two
    // pages appended, the file synced nowhere since.
    let a = mnt.join("a");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&a)
        .unwrap();
    f.write_all_at(&[page(1), page(1), page(1)].concat(), 0)
        .unwrap();
    f.sync_data().unwrap();
    sync_dir(&mnt);
    f.write_all_at(&page(2), PAGE).unwrap();
    f.write_all_at(&[page(3), page(3)].concat(), 3 * PAGE)
        .unwrap();
    // A durable file removed and another renamed over a durable one,
    // neither durable.
    let (c, d, e) = (mnt.join("c"), mnt.join("d"), mnt.join("e"));
    for (p, body) in [(&c, "c"), (&d, "d"), (&e, "e")] {
        std::fs::write(p, body).unwrap();
        File::open(p).unwrap().sync_all().unwrap();
    }
    sync_dir(&mnt);
    std::fs::remove_file(&c).unwrap();
    std::fs::rename(&d, &e).unwrap();
    // A file made and synced, but its name never synced.
    let b = mnt.join("b");
    std::fs::write(&b, b"unnamed").unwrap();
    File::open(&b).unwrap().sync_all().unwrap();
    drop(f);

    let r = fs.cut(Cut::Clean, &mut rng).unwrap();
    assert_eq!(r.restored, 1, "{r:?}");
    assert_eq!(r.truncated, 2 * PAGE, "{r:?}");
    assert_eq!(
        std::fs::read(&a).unwrap(),
        [page(1), page(1), page(1)].concat()
    );
    assert!(!b.exists(), "a name never synced survived");
    assert_eq!(std::fs::read(&c).unwrap(), b"c", "an unsynced unlink stuck");
    assert_eq!(std::fs::read(&d).unwrap(), b"d", "an unsynced rename stuck");
    assert_eq!(
        std::fs::read(&e).unwrap(),
        b"e",
        "a replaced file stayed gone"
    );

    // What was synced stays: a truncation and a rename, each followed by
    // the syncs that make them durable.
    let f = OpenOptions::new().write(true).open(&a).unwrap();
    f.set_len(PAGE).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&d, mnt.join("d2")).unwrap();
    sync_dir(&mnt);
    let r = fs.cut(Cut::Clean, &mut rng).unwrap();
    assert_eq!((r.restored, r.truncated, r.names), (0, 0, 0), "{r:?}");
    assert_eq!(std::fs::read(&a).unwrap(), page(1));
    assert!(!d.exists() && mnt.join("d2").exists());

    // Torn: every page is its synced bytes or its new ones (or, past the
    // synced length, zeros), and the length is one of the two.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..16 {
        let f = OpenOptions::new().write(true).open(&a).unwrap();
        f.write_all_at(&[page(5), page(5), page(5)].concat(), 0)
            .unwrap();
        drop(f);
        fs.cut(Cut::Torn, &mut rng).unwrap();
        let got = std::fs::read(&a).unwrap();
        assert!(got.len() as u64 == PAGE || got.len() as u64 == 3 * PAGE);
        for (i, p) in got.chunks(PAGE as usize).enumerate() {
            let ok = p == page(5) || (i == 0 && p == page(1)) || (i > 0 && p == page(0));
            assert!(ok, "page {i} is neither old nor new");
            seen.insert((i, p[0]));
        }
        // Back to one synced page of 1s for the next round.
        let f = OpenOptions::new().write(true).open(&a).unwrap();
        f.write_all_at(&page(1), 0).unwrap();
        f.set_len(PAGE).unwrap();
        f.sync_all().unwrap();
    }
    // Both outcomes of each kind happened.
    for want in [(0, 1), (0, 5), (1, 0), (1, 5)] {
        assert!(seen.contains(&want), "never saw {want:?}: {seen:?}");
    }

    // Torn names: the changes that stay are the oldest ones, in order.
    let mut kept_counts = std::collections::BTreeSet::new();
    for round in 0..16 {
        let names: Vec<PathBuf> = (0..4).map(|i| mnt.join(format!("n{round}-{i}"))).collect();
        for n in &names {
            std::fs::write(n, b"x").unwrap();
        }
        fs.cut(Cut::Torn, &mut rng).unwrap();
        let there: Vec<bool> = names.iter().map(|n| n.exists()).collect();
        let k = there.iter().take_while(|t| **t).count();
        assert!(there[k..].iter().all(|t| !t), "not a prefix: {there:?}");
        kept_counts.insert(k);
    }
    assert!(
        kept_counts.contains(&0) && kept_counts.contains(&4),
        "{kept_counts:?}"
    );

    // A directory's sync makes its own names durable, not another's.
    let (d1, d2) = (mnt.join("dir1"), mnt.join("dir2"));
    std::fs::create_dir(&d1).unwrap();
    std::fs::create_dir(&d2).unwrap();
    sync_dir(&mnt);
    std::fs::write(d1.join("a"), b"a").unwrap();
    std::fs::write(d2.join("b"), b"b").unwrap();
    sync_dir(&d1);
    // A synced file changed, then removed; and one truncated on open.
    let (f, g) = (mnt.join("f1"), mnt.join("g1"));
    std::fs::write(&f, b"old f").unwrap();
    std::fs::write(&g, b"old g").unwrap();
    File::open(&f).unwrap().sync_all().unwrap();
    File::open(&g).unwrap().sync_all().unwrap();
    sync_dir(&mnt);
    OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .write_all_at(b"new", 0)
        .unwrap();
    std::fs::remove_file(&f).unwrap();
    std::fs::write(&g, b"replaced").unwrap();
    // A new directory's contents go with it when its own name was never
    // synced, whatever was synced inside it.
    let d3 = mnt.join("dir3");
    std::fs::create_dir(&d3).unwrap();
    std::fs::write(d3.join("x"), b"x").unwrap();
    File::open(d3.join("x")).unwrap().sync_all().unwrap();
    sync_dir(&d3);
    fs.cut(Cut::Clean, &mut rng).unwrap();
    assert!(d1.join("a").exists(), "a synced directory's name was lost");
    assert!(
        !d2.join("b").exists(),
        "another directory's sync kept a name"
    );
    assert!(
        !d3.exists(),
        "a directory whose name was never synced survived"
    );
    assert_eq!(std::fs::read(&f).unwrap(), b"old f");
    assert_eq!(std::fs::read(&g).unwrap(), b"old g");
}
