//! The cache file and its journal: atomic replacement, an advisory lock shared by every
//! process that uses the file, owner-only permissions, and bad files moved aside rather than
//! overwritten. What is written when, and how the two are read together, is in
//! [`super::journal`].
//!
//! A snapshot is written to a temporary file in the same directory (created 0600), which is
//! flushed to disk, renamed over the cache file and followed by an fsync of the directory, so
//! a crash leaves either the old file or the new one, never half of one. Every read and write runs
//! while holding an exclusive `flock` on `<file>.lock` (the lock file is never deleted,
//! which would let two processes lock different inodes), so two tokenrelay processes sharing
//! a file merge their tokens instead of losing one another's.
//!
//! The cache file, its journal and the lock file are opened without following symbolic links and used
//! only when the running user owns them and no one else can write them ([`super::trust`]):
//! in a shared directory another user could have planted either. A refused file is renamed
//! to `<file>.refused-<UTC time>` where the directory allows, and a fresh one is used;
//! where it does not, the operation fails with [`StoreError::Refused`], which turns
//! persistence off for the run rather than trusting the file or waiting on its lock.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::format::Protection;
use super::journal::Written;
use super::{Held, OnUnreadable, PersistedAccount, SaveReport, Snapshot, Store, StoreError};
use crate::clock::{Clock, SystemClock};
use crate::trust::{self, Opened, Owners, Untrusted};

/// How long to wait for another process to release the lock before giving up. A writer
/// holds it for milliseconds; a process stuck with it must not hang this one for ever.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often to retry a held lock.
const LOCK_RETRY: Duration = Duration::from_millis(20);

/// A cache file and how its contents are protected.
pub struct FileStore {
    path: PathBuf,
    pub(super) protection: Protection,
    description: String,
    /// What this process last wrote, which a save compares memory with.
    pub(super) written: Mutex<Written>,
}

impl FileStore {
    /// A store at `path`; nothing is touched until the first operation.
    pub fn new(path: &Path, protection: Protection, description: String) -> Self {
        Self { path: path.to_owned(), protection, description, written: Mutex::default() }
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether tokens are written in plaintext.
    pub fn is_plaintext(&self) -> bool {
        matches!(self.protection, Protection::Plaintext)
    }

    /// A warning when the directory lets other users replace, delete or plant files: writable
    /// by others without the sticky bit, shared with the sticky bit (such as `/tmp`), or
    /// owned by another user who is not root.
    pub fn directory_warning(&self) -> Option<String> {
        let dir = parent(&self.path);
        let (mode, uid) = directory_mode_and_owner(dir)?;
        let shown = dir.display();
        let advice = "Use a directory only tokenrelay's user can write (0700), such as the default under \
                      $XDG_CACHE_HOME or $HOME/.cache";
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Some(format!(
                "the directory {shown} of the token cache is writable by other users (mode {:o}); they can delete or \
                 replace the cache file. {advice}",
                mode & 0o7777
            ));
        }
        if mode & 0o022 != 0 {
            return Some(format!(
                "the directory {shown} of the token cache is shared with other users (mode {:o}, sticky); they can \
                 create the cache file or its lock file before tokenrelay does. tokenrelay refuses such files (and \
                 runs without persistence when it cannot move them aside). {advice}",
                mode & 0o7777
            ));
        }
        let euid = trust::euid();
        (uid != euid && uid != 0).then(|| {
            format!(
                "the directory {shown} of the token cache belongs to uid {uid}, not to uid {euid} that tokenrelay runs \
                 as; its owner can replace the cache file. {advice}"
            )
        })
    }

    /// Opens a cache file or journal to read it; must run under the lock. `None` when there
    /// is none, or when it could not be opened or was refused and was moved aside.
    pub(super) fn open_trusted(
        &self,
        path: &Path,
        what: &'static str,
        on_unreadable: OnUnreadable,
    ) -> Result<Option<File>, StoreError> {
        let mut options = OpenOptions::new();
        options.read(true);
        match trust::open(path, &mut options, Owners::RunningUser) {
            Opened::Trusted(file) => Ok(Some(file)),
            Opened::Failed(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Opened::Failed(error) => {
                self.unreadable(path, format!("cannot read it: {error}"), on_unreadable).map(|()| None)
            }
            Opened::Refused { why, .. } if on_unreadable == OnUnreadable::Report => {
                Err(refused(what, path, &why, None))
            }
            Opened::Refused { why, identity } => {
                set_aside_refused(what, path, &why, identity)?;
                Ok(None)
            }
        }
    }

    /// A cache file (or journal) that cannot be read: an error with [`OnUnreadable::Report`],
    /// else renamed to `<name>.unreadable-<UTC time>` and logged.
    pub(super) fn unreadable(
        &self,
        path: &Path,
        reason: String,
        on_unreadable: OnUnreadable,
    ) -> Result<(), StoreError> {
        let shown = path.display().to_string();
        if on_unreadable == OnUnreadable::Report {
            return Err(StoreError::Unreadable { path: shown, reason });
        }
        let aside = move_aside(path, "unreadable").map_err(|source| StoreError::CannotMoveAside {
            path: shown.clone(),
            reason: reason.clone(),
            source,
        })?;
        if path == self.path {
            tracing::warn!(
                path = shown,
                moved_to = %aside.display(),
                reason,
                "the token cache could not be read; moved it aside and starting with an empty cache"
            );
        } else {
            tracing::warn!(
                path = shown,
                moved_to = %aside.display(),
                reason,
                "the token cache's journal could not be read; moved it aside, keeping what could be read before the damage"
            );
        }
        Ok(())
    }

    /// Replaces the cache file with what `write` writes into a new file (temporary file,
    /// fsync, rename, fsync of the directory); must run under the lock.
    pub(super) fn replace_with(&self, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<(), StoreError> {
        let dir = parent(&self.path);
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        remove_stale_temporaries(dir, &name);
        let temporary = dir.join(format!(".{name}.tmp-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        let written = (|| {
            let mut file = create_private(&temporary)?;
            write(&mut file)?;
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
        // A save appends what changed since this process's last write to the journal, so
        // its cost (memory, I/O) is that of the change; a compaction streams the store into
        // a new snapshot record by record (see `super::journal`).
        with_lock(&self.path, || self.save_locked(held, now))
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
                self.rewrite_locked(&snapshot)?;
            }
            Ok(removed)
        })
    }

    fn save_account(&self, account: PersistedAccount) -> Result<(), StoreError> {
        with_lock(&self.path, || {
            let mut snapshot = self.load_locked(OnUnreadable::MoveAside, None)?;
            super::merge_account(&mut snapshot.accounts, account);
            self.rewrite_locked(&snapshot)
        })
    }
}

/// Runs `work` while holding the exclusive lock of the cache file at `path`, creating its
/// directory (0700) and lock file (0600) when missing.
///
/// A lock file another user could have planted is refused before it is locked, so one that
/// is held open does not stall this process for the lock timeout: it is moved aside and a
/// fresh one is created, or, where the directory does not allow that, the call fails at once.
pub fn with_lock<T>(path: &Path, work: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let dir = parent(path);
    if !dir.exists() {
        create_private_dir(dir).map_err(|e| StoreError::io("create the directory", dir, e))?;
    }
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let lock = open_lock_file(&lock_path)?;
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

/// What the cache file is called in messages.
pub(super) const CACHE_FILE: &str = "token cache";
/// What the journal is called in messages.
pub(super) const JOURNAL_FILE: &str = "token cache's journal";
/// What the lock file is called in messages.
const LOCK_FILE: &str = "token cache's lock file";

/// Opens (creating it 0600 if missing) the lock file, refusing one the running user does not
/// own or others can write: it is moved aside and a new one created. A second refusal means
/// someone is planting files as fast as they are moved, and is an error.
fn open_lock_file(lock_path: &Path) -> Result<File, StoreError> {
    match open_lock_file_once(lock_path) {
        Opened::Trusted(file) => return Ok(file),
        Opened::Failed(error) => return Err(StoreError::io("open the lock file", lock_path, error)),
        Opened::Refused { why, identity } => {
            set_aside_refused(LOCK_FILE, lock_path, &why, identity)?;
        }
    }
    match open_lock_file_once(lock_path) {
        Opened::Trusted(file) => Ok(file),
        Opened::Failed(error) => Err(StoreError::io("open the lock file", lock_path, error)),
        Opened::Refused { why, .. } => Err(refused(LOCK_FILE, lock_path, &why, Some("a new one was refused as well"))),
    }
}

/// Renames a refused file to `<file>.refused-<UTC time>`, if its name still refers to the
/// file that was judged (`identity`, when known): a file put there since is not touched.
/// In a sticky directory only the file's owner (or root) may rename it; then this fails with
/// [`StoreError::Refused`], saying why.
fn set_aside_refused(
    what: &'static str,
    path: &Path,
    why: &Untrusted,
    identity: Option<(u64, u64)>,
) -> Result<PathBuf, StoreError> {
    let moved = match identity {
        Some(judged) if trust::identity_of_name(path) != Some(judged) => {
            Err(std::io::Error::other("it was replaced while it was being checked"))
        }
        _ => move_aside(path, "refused"),
    };
    match moved {
        Ok(aside) => {
            tracing::warn!(
                path = %path.display(),
                moved_to = %aside.display(),
                reason = %why,
                "refused the {what}: it {why}, so another user may have planted it; moved it aside and carried on \
                 with a new one"
            );
            Ok(aside)
        }
        Err(error) => Err(refused(what, path, why, Some(&format!("it could not be moved aside ({error})")))),
    }
}

/// The error for a refused file that stays where it is.
fn refused(what: &'static str, path: &Path, why: &Untrusted, detail: Option<&str>) -> StoreError {
    let detail = detail.map(|d| format!("; {d}")).unwrap_or_default();
    StoreError::Refused {
        what,
        path: path.display().to_string(),
        reason: format!(
            "it {why}, so another user may have planted it{detail}. Remove it (or, if it is genuine, give it to uid \
             {} with mode 0600), and keep the cache in a directory only tokenrelay's user can write (0700), not a \
             shared one such as /tmp",
            trust::euid()
        ),
    }
}

/// Renames `path` to `<path>.<label>-<UTC time>` (plus a counter if taken), in the same
/// directory; a rename moves a symbolic link itself, never what it points to.
fn move_aside(path: &Path, label: &str) -> std::io::Result<PathBuf> {
    let stamp: String =
        crate::clock::rfc3339(SystemClock.now()).chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let base = format!("{}.{label}-{stamp}", path.display());
    let mut target = PathBuf::from(&base);
    let mut n = 1;
    while fs::symlink_metadata(&target).is_ok() {
        n += 1;
        target = PathBuf::from(format!("{base}-{n}"));
    }
    fs::rename(path, &target)?;
    sync_directory(parent(path));
    Ok(target)
}

pub(super) fn parent(path: &Path) -> &Path {
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
pub(super) fn sync_directory(dir: &Path) {
    if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), %error, "cannot fsync the cache directory");
    }
}

#[cfg(unix)]
pub(super) fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

#[cfg(not(unix))]
pub(super) fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

fn open_lock_file_once(path: &Path) -> Opened {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    trust::open(path, &mut options, Owners::RunningUser)
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
fn directory_mode_and_owner(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| (m.mode(), m.uid()))
}

#[cfg(not(unix))]
fn directory_mode_and_owner(_path: &Path) -> Option<(u32, u32)> {
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
        assert_eq!(report, SaveReport { kept: 1, pruned: 0, dropped: 0, compacted: true });
        s.save(&held(vec![token("a", "r2", 6000, "t2"), token("a", "r0", 50, "gone")]), 100).unwrap();
        let loaded = s.load(OnUnreadable::Report).unwrap();
        assert_eq!(loaded.tokens.len(), 2);

        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(s.path()), 0o600);
        assert_eq!(mode(&dir.path().join("sub")), 0o700);
        assert_eq!(mode(&dir.path().join("sub/tokens.cache.lock")), 0o600);
        assert_eq!(mode(&dir.path().join("sub/tokens.cache.journal")), 0o600);
        let names = files(&dir.path().join("sub"));
        assert_eq!(names, ["tokens.cache", "tokens.cache.journal", "tokens.cache.lock"], "no temporaries left");
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

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn refused_names(dir: &Path, prefix: &str) -> Vec<String> {
        files(dir).into_iter().filter(|n| n.starts_with(&format!("{prefix}.refused-"))).collect()
    }

    #[test]
    fn a_cache_file_others_can_write_is_reported_or_moved_aside_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1);
        s.save(&held(vec![token("a", "r1", 5000, "t1")]), 100).unwrap();
        let original = fs::read(s.path()).unwrap();
        chmod(s.path(), 0o666);

        let error = s.load(OnUnreadable::Report).unwrap_err().to_string();
        assert!(error.contains("refusing the token cache") && error.contains("mode 0666"), "{error}");
        assert!(error.contains(&s.path().display().to_string()) && error.contains("Remove it"), "{error}");
        assert_eq!(fs::read(s.path()).unwrap(), original, "Report leaves the file alone");

        assert!(s.load(OnUnreadable::MoveAside).unwrap().tokens.is_empty(), "its tokens are not used");
        let sub = dir.path().join("sub");
        let aside = refused_names(&sub, "tokens.cache");
        assert_eq!(aside.len(), 1, "{:?}", files(&sub));
        assert_eq!(fs::read(sub.join(&aside[0])).unwrap(), original, "kept byte for byte");
        assert!(!s.path().exists());
    }

    #[test]
    #[ignore = "needs root: gives a file to another user (docs/testing.md#privileges)"]
    fn a_cache_file_of_another_user_is_moved_aside_and_a_fresh_one_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1);
        s.save(&held(vec![token("a", "r1", 5000, "planted")]), 100).unwrap();
        trust::tests::give_away(s.path());
        let error = s.load(OnUnreadable::Report).unwrap_err().to_string();
        assert!(error.contains("owned by uid 65534") && error.contains("mode 0600"), "{error}");

        s.save(&held(vec![token("a", "r2", 5000, "mine")]), 100).unwrap();
        let loaded = s.load(OnUnreadable::Report).unwrap();
        let values: Vec<_> = loaded.tokens.iter().map(|t| t.token.token.expose()).collect();
        assert_eq!(values, ["mine"], "nothing of the planted file was merged");
        assert_eq!(refused_names(&dir.path().join("sub"), "tokens.cache").len(), 1);
    }

    #[test]
    fn a_symlinked_cache_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = store(dir.path(), 1);
        elsewhere.save(&held(vec![token("a", "r1", 5000, "t1")]), 100).unwrap();
        let other = dir.path().join("other");
        fs::create_dir(&other).unwrap();
        let s =
            FileStore::new(&other.join("tokens.cache"), Protection::Encrypted(Cipher::new(&[1; 32])), String::new());
        std::os::unix::fs::symlink(elsewhere.path(), s.path()).unwrap();
        let error = s.load(OnUnreadable::Report).unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
        assert!(s.load(OnUnreadable::MoveAside).unwrap().tokens.is_empty());
        assert_eq!(elsewhere.load(OnUnreadable::Report).unwrap().tokens.len(), 1, "the target is untouched");
    }

    #[test]
    fn a_symlinked_lock_file_is_moved_aside_and_its_target_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1);
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        chmod(&sub, 0o700);
        let target = dir.path().join("victim");
        fs::write(&target, "keep me").unwrap();
        chmod(&target, 0o644);
        std::os::unix::fs::symlink(&target, sub.join("tokens.cache.lock")).unwrap();

        s.save(&held(vec![token("a", "r1", 5000, "t1")]), 100).unwrap();
        let lock = fs::symlink_metadata(sub.join("tokens.cache.lock")).unwrap();
        assert!(lock.file_type().is_file() && lock.permissions().mode() & 0o777 == 0o600, "a fresh lock file");
        let aside = refused_names(&sub, "tokens.cache.lock");
        assert_eq!(aside.len(), 1, "{:?}", files(&sub));
        assert!(fs::symlink_metadata(sub.join(&aside[0])).unwrap().file_type().is_symlink(), "the link moved");
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep me");
        assert_eq!(fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o644);
    }

    /// A lock file another user planted and holds would make every start-up wait for
    /// [`LOCK_TIMEOUT`]; it is refused before it is locked.
    #[test]
    #[ignore = "needs root: gives a file to another user (docs/testing.md#privileges)"]
    fn a_held_lock_file_of_another_user_does_not_stall() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1);
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        let lock_path = sub.join("tokens.cache.lock");
        let planted = File::create(&lock_path).unwrap();
        chmod(&lock_path, 0o666);
        trust::tests::give_away(&lock_path);
        planted.lock().unwrap();

        let started = std::time::Instant::now();
        s.save(&held(vec![token("a", "r1", 5000, "t1")]), 100).unwrap();
        assert!(started.elapsed() < LOCK_TIMEOUT / 2, "took {:?}", started.elapsed());
        assert_eq!(s.load(OnUnreadable::Report).unwrap().tokens.len(), 1);
        assert_eq!(refused_names(&sub, "tokens.cache.lock").len(), 1);
        drop(planted);
    }

    #[test]
    fn a_refused_file_that_changed_since_it_was_judged_is_not_moved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.cache.lock");
        fs::write(&path, "").unwrap();
        let why = Untrusted::Writable { uid: 0, mode: 0o100_666 };
        let error = set_aside_refused(LOCK_FILE, &path, &why, Some((u64::MAX, u64::MAX))).unwrap_err().to_string();
        assert!(error.contains("could not be moved aside (it was replaced while it was being checked)"), "{error}");
        assert!(error.contains("writable by other users") && error.contains("Remove it"), "{error}");
        assert_eq!(files(dir.path()), ["tokens.cache.lock"]);
    }

    #[test]
    fn warns_about_directories_other_users_can_write_or_own() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(&dir.path().join("tokens.cache"), Protection::Plaintext, String::new());
        chmod(dir.path(), 0o700);
        assert_eq!(s.directory_warning(), None);
        chmod(dir.path(), 0o777);
        assert!(s.directory_warning().unwrap().contains("can delete or replace the cache file"));
        chmod(dir.path(), 0o1777);
        let warning = s.directory_warning().unwrap();
        assert!(warning.contains("shared with other users (mode 1777, sticky)"), "{warning}");
    }

    #[test]
    #[ignore = "needs root: gives a file to another user (docs/testing.md#privileges)"]
    fn warns_about_a_directory_of_another_user() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(&dir.path().join("tokens.cache"), Protection::Plaintext, String::new());
        chmod(dir.path(), 0o755);
        trust::tests::give_away(dir.path());
        assert!(s.directory_warning().unwrap().contains("belongs to uid 65534"));
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
