//! The cache file: atomic replacement, an advisory lock shared by every process that uses
//! the file, owner-only permissions, and bad files moved aside rather than overwritten.
//!
//! Writes go to a temporary file in the same directory (created 0600), which is flushed to
//! disk, renamed over the cache file and followed by an fsync of the directory, so a crash
//! leaves either the old file or the new one, never half of one. Every read-merge-write runs
//! while holding an exclusive `flock` on `<file>.lock` (the lock file is never deleted,
//! which would let two processes lock different inodes), so two tokenrelay processes sharing
//! a file merge their tokens instead of losing one another's.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::format::{self, Contents, Protection};
use super::{Held, OnUnreadable, PersistedAccount, SaveReport, Snapshot, Store, StoreError};
use crate::clock::{Clock, SystemClock};

/// How long to wait for another process to release the lock before giving up. A writer
/// holds it for milliseconds; a process stuck with it must not hang this one for ever.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often to retry a held lock.
const LOCK_RETRY: Duration = Duration::from_millis(20);

/// A cache file and how its contents are protected.
pub struct FileStore {
    path: PathBuf,
    protection: Protection,
    description: String,
    /// The buffers of [`Store::save`], kept from one save to the next (see there).
    buffers: Mutex<SaveBuffers>,
}

/// The file as read and the file to be written, each as large as the store (17.5 MB for
/// 10,000 tokens).
#[derive(Default)]
struct SaveBuffers {
    read: Vec<u8>,
    write: Vec<u8>,
}

impl FileStore {
    /// A store at `path`; nothing is touched until the first operation.
    pub fn new(path: &Path, protection: Protection, description: String) -> Self {
        Self { path: path.to_owned(), protection, description, buffers: Mutex::default() }
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether tokens are written in plaintext.
    pub fn is_plaintext(&self) -> bool {
        matches!(self.protection, Protection::Plaintext)
    }

    /// A warning when the directory lets other users replace or delete the file.
    pub fn directory_warning(&self) -> Option<String> {
        let dir = parent(&self.path);
        let mode = permissions_mode(dir)?;
        (mode & 0o022 != 0 && mode & 0o1000 == 0).then(|| {
            format!(
                "the directory {} of the token cache is writable by other users (mode {:o}); they can delete or \
                 replace the cache file. Use a directory only tokenrelay's user can write (0700)",
                dir.display(),
                mode & 0o7777
            )
        })
    }

    /// Reads the file into `into` (replacing what it held); must run under the lock. False
    /// when there is none, or when it could not be read and was moved aside.
    fn read_locked(&self, into: &mut Vec<u8>, on_unreadable: OnUnreadable) -> Result<bool, StoreError> {
        into.clear();
        match File::open(&self.path).and_then(|mut file| file.read_to_end(into)) {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => self.unreadable(format!("cannot read it: {error}"), on_unreadable).map(|_| false),
        }
    }

    /// Reads and decodes the file, keeping at most `bound = (max_per_client, now)` tokens
    /// per client id when given; must run under the lock.
    fn load_locked(&self, on_unreadable: OnUnreadable, bound: Option<(usize, u64)>) -> Result<Snapshot, StoreError> {
        let mut bytes = Vec::new();
        if !self.read_locked(&mut bytes, on_unreadable)? {
            return Ok(Snapshot::default());
        }
        // In place: the file's bytes are the only buffer besides the tokens parsed from it.
        let decoded = match bound {
            None => format::decode_in_place(&mut bytes, &self.protection),
            Some((max, now)) => format::decode_in_place_bounded(&mut bytes, &self.protection, max, now),
        };
        // Decrypted, the buffer holds every token in plaintext; do not leave that to the
        // allocator's free lists.
        bytes.fill(0);
        match decoded {
            Ok(snapshot) => Ok(snapshot),
            Err(error) => self.unreadable(error.to_string(), on_unreadable),
        }
    }

    fn unreadable(&self, reason: String, on_unreadable: OnUnreadable) -> Result<Snapshot, StoreError> {
        let path = self.path.display().to_string();
        if on_unreadable == OnUnreadable::Report {
            return Err(StoreError::Unreadable { path, reason });
        }
        let aside = self.move_aside().map_err(|source| StoreError::CannotMoveAside {
            path: path.clone(),
            reason: reason.clone(),
            source,
        })?;
        tracing::warn!(
            path,
            moved_to = %aside.display(),
            reason,
            "the token cache could not be read; moved it aside and starting with an empty cache"
        );
        Ok(Snapshot::default())
    }

    /// Renames the file to `<file>.unreadable-<UTC time>` (plus a counter if taken).
    fn move_aside(&self) -> std::io::Result<PathBuf> {
        let stamp: String = super::utc(SystemClock.now()).chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        let base = format!("{}.unreadable-{stamp}", self.path.display());
        let mut target = PathBuf::from(&base);
        let mut n = 1;
        while target.exists() {
            n += 1;
            target = PathBuf::from(format!("{base}-{n}"));
        }
        fs::rename(&self.path, &target)?;
        sync_directory(parent(&self.path));
        Ok(target)
    }

    /// Replaces the file with `snapshot`; must run under the lock.
    fn write_locked(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.replace_locked(&format::encode(snapshot, &self.protection, SystemClock.now()))
    }

    /// Replaces the file with `bytes` (temporary file, fsync, rename); must run under the lock.
    fn replace_locked(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let dir = parent(&self.path);
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        remove_stale_temporaries(dir, &name);
        let temporary = dir.join(format!(".{name}.tmp-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        let written = (|| {
            let mut file = create_private(&temporary)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&temporary, &self.path)
        })();
        if let Err(error) = written {
            let _ = fs::remove_file(&temporary);
            return Err(StoreError::io("write", &self.path, error));
        }
        sync_directory(dir);
        Ok(())
    }
}

impl Store for FileStore {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn load(&self, on_unreadable: OnUnreadable) -> Result<Snapshot, StoreError> {
        with_lock(&self.path, || self.load_locked(on_unreadable, None))
    }

    fn load_bounded(&self, max_per_client: usize, now: u64) -> Result<Snapshot, StoreError> {
        with_lock(&self.path, || self.load_locked(OnUnreadable::MoveAside, Some((max_per_client, now))))
    }

    fn save(&self, held: &Held, now: u64) -> Result<SaveReport, StoreError> {
        // The writer calls this for every batch, however small, and the file holds every
        // token (17.5 MB for 10,000). The existing tokens are merged where they lie in the
        // decrypted file rather than parsed into `String`s, so a save needs two buffers the
        // size of the file and nothing per token; and the two are kept for the next save
        // rather than freed: glibc serves blocks this large from its arenas once one has
        // been freed, and kept what the writer freed every batch (RSS grew by ~150 MB over a
        // refresh storm). Kept, they cost twice the file's size, once.
        with_lock(&self.path, || {
            let mut buffers = self.buffers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let SaveBuffers { read, write } = &mut *buffers;
            let merged = (|| {
                let existing = match self.read_locked(read, OnUnreadable::MoveAside)? {
                    false => Ok(Contents::empty()),
                    true => Contents::open(read, &self.protection),
                };
                let existing = match existing {
                    Ok(contents) => contents,
                    Err(error) => {
                        self.unreadable(error.to_string(), OnUnreadable::MoveAside)?;
                        Contents::empty()
                    }
                };
                Ok(existing.merge(held, now, &self.protection, write))
            })();
            // The read buffer may now hold every token in plaintext, whether the merge worked
            // or not; it stays allocated, so it must not stay readable.
            read.fill(0);
            let report = merged?;
            self.replace_locked(write)?;
            Ok(report)
        })
    }

    fn clear(&self, identity: Option<&str>) -> Result<usize, StoreError> {
        with_lock(&self.path, || {
            let mut snapshot = self.load_locked(OnUnreadable::MoveAside, None)?;
            let before = snapshot.tokens.len();
            match identity {
                Some(identity) => {
                    snapshot.tokens.retain(|t| t.identity != identity && !t.client_id.eq_ignore_ascii_case(identity))
                }
                None => {
                    snapshot.tokens.clear();
                    snapshot.accounts.clear();
                }
            }
            let removed = before - snapshot.tokens.len();
            if removed > 0 || identity.is_none() {
                self.write_locked(&snapshot)?;
            }
            Ok(removed)
        })
    }

    fn save_account(&self, account: PersistedAccount) -> Result<(), StoreError> {
        with_lock(&self.path, || {
            let mut snapshot = self.load_locked(OnUnreadable::MoveAside, None)?;
            super::merge_account(&mut snapshot.accounts, account);
            self.write_locked(&snapshot)
        })
    }
}

/// Runs `work` while holding the exclusive lock of the cache file at `path`, creating its
/// directory (0700) and lock file (0600) when missing.
pub fn with_lock<T>(path: &Path, work: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let dir = parent(path);
    if !dir.exists() {
        create_private_dir(dir).map_err(|e| StoreError::io("create the directory", dir, e))?;
    }
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let lock = open_lock_file(&lock_path).map_err(|e| StoreError::io("open the lock file", &lock_path, e))?;
    let deadline = std::time::Instant::now() + LOCK_TIMEOUT;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(LOCK_RETRY);
            }
            Err(fs::TryLockError::WouldBlock) => {
                let error = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("another process has held the lock for more than {} s", LOCK_TIMEOUT.as_secs()),
                );
                return Err(StoreError::io("lock", &lock_path, error));
            }
            Err(fs::TryLockError::Error(error)) => return Err(StoreError::io("lock", &lock_path, error)),
        }
    }
    let result = work();
    // Closing the file releases the lock as well; unlocking first makes the order explicit.
    let _ = lock.unlock();
    result
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Removes temporary files a crashed writer left behind. Only called under the lock, when
/// no other writer can be half-way through.
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Makes a rename durable. Best effort: some file systems cannot fsync a directory.
fn sync_directory(dir: &Path) {
    if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), %error, "cannot fsync the cache directory");
    }
}

#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(unix)]
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)
}

#[cfg(not(unix))]
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)
}

#[cfg(unix)]
fn permissions_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).ok().map(|m| m.permissions().mode())
}

#[cfg(not(unix))]
fn permissions_mode(_path: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::tests::token;
    use super::super::{Cipher, PersistedToken, Protection};
    use super::*;

    /// `tokens` as a save that claims no earlier write (writer 0): it only merges.
    fn held(tokens: Vec<PersistedToken>) -> Held {
        Held::from_tokens(tokens, 0, usize::MAX)
    }

    fn store(dir: &Path, key: u8) -> FileStore {
        FileStore::new(&dir.join("sub/tokens.cache"), Protection::Encrypted(Cipher::new(&[key; 32])), String::new())
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn saves_merges_and_loads_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1);
        assert!(s.load(OnUnreadable::MoveAside).unwrap().tokens.is_empty(), "no file: empty");
        let report = s.save(&held(vec![token("a", "r1", 5000, "t1")]), 100).unwrap();
        assert_eq!(report, SaveReport { kept: 1, pruned: 0, dropped: 0 });
        s.save(&held(vec![token("a", "r2", 6000, "t2"), token("a", "r0", 50, "gone")]), 100).unwrap();
        let loaded = s.load(OnUnreadable::Report).unwrap();
        assert_eq!(loaded.tokens.len(), 2);

        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(s.path()), 0o600);
        assert_eq!(mode(&dir.path().join("sub")), 0o700);
        assert_eq!(mode(&dir.path().join("sub/tokens.cache.lock")), 0o600);
        assert_eq!(files(&dir.path().join("sub")), ["tokens.cache", "tokens.cache.lock"], "no temporaries left");
    }

    #[test]
    fn clears_one_identity_or_all() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1);
        let mut other = token("b", "r1", 5000, "t3");
        other.identity = "other".into();
        s.save(&held(vec![token("a", "r1", 5000, "t1"), token("a", "r2", 5000, "t2"), other]), 100).unwrap();
        assert_eq!(s.clear(Some("other")).unwrap(), 1);
        assert_eq!(s.clear(Some("A")).unwrap(), 2, "by client id, case-insensitively");
        s.save(&held(vec![token("a", "r1", 5000, "t1")]), 100).unwrap();
        assert_eq!(s.clear(None).unwrap(), 1);
        assert!(s.load(OnUnreadable::Report).unwrap().tokens.is_empty());
    }

    #[test]
    fn an_unreadable_file_is_moved_aside_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), 1).save(&held(vec![token("a", "r1", 5000, "t1")]), 100).unwrap();
        let original = fs::read(dir.path().join("sub/tokens.cache")).unwrap();

        let wrong = store(dir.path(), 2);
        let error = wrong.load(OnUnreadable::Report).unwrap_err().to_string();
        assert!(error.contains("different key"), "{error}");
        assert_eq!(fs::read(wrong.path()).unwrap(), original, "Report leaves the file alone");

        wrong.save(&held(vec![token("a", "r2", 5000, "t2")]), 100).unwrap();
        let names = files(&dir.path().join("sub"));
        let aside = names.iter().find(|n| n.starts_with("tokens.cache.unreadable-")).expect("moved aside");
        assert_eq!(fs::read(dir.path().join("sub").join(aside)).unwrap(), original, "kept byte for byte");
        assert_eq!(wrong.load(OnUnreadable::Report).unwrap().tokens.len(), 1, "the new file holds only the new token");
    }

    /// Prints how long saving and loading take for realistic tokens (1.5 kB each).
    #[test]
    #[ignore = "a measurement: cargo test --release --lib -- --ignored --nocapture load_and_save_time"]
    fn load_and_save_time() {
        let dir = tempfile::tempdir().unwrap();
        let value = "x".repeat(1500);
        for n in [100usize, 1000, 10_000] {
            let s = FileStore::new(
                &dir.path().join(format!("{n}.cache")),
                Protection::Encrypted(Cipher::new(&[3; 32])),
                String::new(),
            );
            let tokens: Vec<_> = (0..n).map(|i| token("a", &format!("https://r{i}.example"), 5000, &value)).collect();
            let started = std::time::Instant::now();
            s.save(&held(tokens), 100).unwrap();
            let saved = started.elapsed();
            let started = std::time::Instant::now();
            assert_eq!(s.load(OnUnreadable::Report).unwrap().tokens.len(), n);
            let size = fs::metadata(s.path()).unwrap().len();
            println!("{n} tokens, {size} bytes: save {saved:?}, load {:?}", started.elapsed());
        }
    }

    /// Prints resident memory while a writer-like loop saves small batches into a store of
    /// 10,000 realistic tokens on tokio's blocking threads, as the refresh storm does (one
    /// batch per 0.5 s window): what the write path itself costs in memory.
    #[test]
    #[ignore = "a measurement: cargo test --release --lib -- --ignored --nocapture save_memory"]
    fn save_memory() {
        fn status(field: &str) -> f64 {
            let status = fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with(field)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
        }
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(FileStore::new(
            &dir.path().join("m.cache"),
            Protection::Encrypted(Cipher::new(&[3; 32])),
            String::new(),
        ));
        let value = |i: usize| format!("{i:08}{}", "x".repeat(1492));
        let tokens: Vec<_> =
            (0..10_000).map(|i| token("a", &format!("https://r{i}.example"), 5000, &value(i))).collect();
        s.save(&held(tokens), 100).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        println!("store written: RSS {:.1} MiB, peak {:.1} MiB", status("VmRSS:"), status("VmHWM:"));
        for round in 0..40 {
            let batch: Vec<_> = (0..150)
                .map(|k| {
                    let i = (round * 150 + k) % 10_000;
                    token("a", &format!("https://r{i}.example"), 6000 + round as u64, &value(i))
                })
                .collect();
            let store = s.clone();
            runtime
                .block_on(async move { tokio::task::spawn_blocking(move || store.save(&held(batch), 100)).await })
                .unwrap()
                .unwrap();
            if round % 10 == 9 {
                println!(
                    "after {} saves: RSS {:.1} MiB, peak {:.1} MiB",
                    round + 1,
                    status("VmRSS:"),
                    status("VmHWM:")
                );
            }
        }
    }

    #[test]
    fn a_start_loads_at_most_the_bound_per_client_id_in_use_and_freshest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1);
        let mut tokens: Vec<PersistedToken> =
            (0..10).map(|i| token("a", &format!("r{i}"), 1000 + i, &format!("a{i}"))).collect();
        tokens[2].in_use = true;
        tokens.push(token("a", "expired", 50, "gone"));
        tokens.extend((0..3).map(|i| token("b", &format!("r{i}"), 1000, &format!("b{i}"))));
        s.save(&held(tokens), 40).unwrap();
        let loaded = s.load_bounded(3, 100).unwrap();
        let mut values: Vec<&str> = loaded.tokens.iter().map(|t| t.token.token.expose()).collect();
        values.sort_unstable();
        assert_eq!(values, ["a2", "a8", "a9", "b0", "b1", "b2"], "in use, then the latest expiry; 3 per client id");
        assert_eq!(s.load(OnUnreadable::Report).unwrap().tokens.len(), 14, "the file itself is not changed by a load");
    }

    #[test]
    fn concurrent_writers_merge_under_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.cache");
        let threads: Vec<_> = (0..8)
            .map(|n| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let s = FileStore::new(&path, Protection::Encrypted(Cipher::new(&[9; 32])), String::new());
                    // Each thread is a process with its own writer id whose memory grows by
                    // one token per save: none may drop another's tokens.
                    let mut memory = Vec::new();
                    for i in 0..10 {
                        memory.push(token("a", &format!("r{n}-{i}"), 5000, "t"));
                        s.save(&Held::from_tokens(memory.clone(), n + 1, 1000), 100).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = FileStore::new(&path, Protection::Encrypted(Cipher::new(&[9; 32])), String::new());
        assert_eq!(s.load(OnUnreadable::Report).unwrap().tokens.len(), 80, "no write was lost");
    }
}
