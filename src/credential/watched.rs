//! Credential files that are read again when they change: a client secret file, a certificate
//! with its key and password, a client assertion or federated token file.
//!
//! Kubernetes updates a mounted Secret in place: it writes the new content into a fresh
//! timestamped directory beside the old one and renames a `..data_tmp` symlink over `..data`,
//! through which every visible file (`key -> ..data/key`) resolves; then it removes the old
//! directory. cert-manager and the Secrets Store CSI driver deliver renewed certificates the
//! same way, and other tools rewrite a file in place. So before every upstream exchange each
//! file is resolved through all its symlinks and `stat`ed, and read again only when that
//! yields anything new: another target path, device, inode, size, modification or change time.
//! When nothing changed, nothing is read.
//!
//! Invariants:
//! - A value, once loaded, is only ever replaced by one that parsed. A read that fails (a file
//!   missing between two steps of a swap, half written, a certificate that does not parse)
//!   keeps the previous value and logs a warning naming the file and the problem, never the
//!   content. Only the very first load reports a failure to the caller.
//! - A set of files that failed to parse is not read again until one of them changes, so a
//!   broken file costs one warning, not one per exchange.
//! - [`WatchedFiles::exchange`] is the single place where an exchange is retried because the
//!   authority refused what the files held: the files are read again unconditionally and the
//!   exchange runs once more, only if that yielded different content.
//! - Contents are read through the descriptor that was `fstat`ed, so the recorded metadata always
//!   describes the bytes that were parsed; raw bytes are zeroed once parsed.

use std::fs::{File, Metadata};
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use tokio::sync::Mutex;

use super::CredentialError;
use crate::token::AccessToken;
use zeroize::Zeroize;

/// Largest file read: far above any secret, token, PEM chain or PFX, and a bound on what a
/// wrong path (a log file, `/dev/zero` behind a symlink) can make the process hold.
pub(crate) const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// What the files yield, as held between exchanges.
pub(crate) trait FileContent: Clone + Send + Sync + 'static {
    /// What a log line may say about a newly loaded value (a certificate's thumbprint);
    /// never anything secret.
    fn describe(&self) -> Option<String> {
        None
    }
}

/// Why no value could be loaded. Only the first load reports it; later failures keep the
/// previous value.
#[derive(Debug)]
pub(crate) enum LoadError {
    /// A file could not be read: missing, not a regular file, too large, no permission.
    Read { path: PathBuf, reason: String },
    /// The files were read but do not hold a usable value (the parser's explanation).
    Invalid(String),
}

type Parse<T> = dyn Fn(&[Vec<u8>]) -> Result<T, String> + Send + Sync;

/// One or more files parsed together into a `T`, read again when any of them changes.
pub(crate) struct WatchedFiles<T> {
    /// For log lines: `client secret file`, `certificate`, `federated token file`.
    what: &'static str,
    paths: Vec<PathBuf>,
    /// Longest time contents are trusted without reading them again even though nothing
    /// about the files changed; `None`: until they change.
    max_age: Option<Duration>,
    parse: Box<Parse<T>>,
    /// Held across a read, so concurrent exchanges read a changed file once.
    state: Mutex<State<T>>,
    #[cfg(test)]
    reads: std::sync::atomic::AtomicUsize,
}

struct State<T> {
    loaded: Option<Loaded<T>>,
    /// The files as they were when their content failed to parse.
    refused: Option<Vec<Fingerprint>>,
}

struct Loaded<T> {
    value: T,
    fingerprints: Vec<Fingerprint>,
    /// SHA-256 over the raw contents: tells a re-read that found the same bytes (a `touch`,
    /// an identical Secret written again) from a change. Never leaves this struct.
    digest: [u8; 32],
    /// Increases with every new value; a retry is worth it only if it moved.
    generation: u64,
    read_at: tokio::time::Instant,
}

/// A loaded value and its generation.
struct Current<T> {
    value: T,
    generation: u64,
}

/// What identifies the content of a file without reading it. The target path changes with
/// every kubelet swap; device and inode with any rename over the file; size, modification and
/// change time with a rewrite in place (the change time even when a tool restores the
/// modification time, as `cp -p` does).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    target: PathBuf,
    device: u64,
    inode: u64,
    size: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
}

impl Fingerprint {
    fn of(target: PathBuf, metadata: &Metadata) -> Self {
        #[cfg(unix)]
        let (device, inode, changed) = {
            use std::os::unix::fs::MetadataExt;
            (metadata.dev(), metadata.ino(), (metadata.ctime(), metadata.ctime_nsec()))
        };
        #[cfg(not(unix))]
        let (device, inode, changed) = (0, 0, (0, 0));
        Self { target, device, inode, size: metadata.len(), modified: metadata.modified().ok(), changed }
    }
}

impl<T: FileContent> WatchedFiles<T> {
    /// Files `paths`, parsed together by `parse` (which gets their contents in the same
    /// order). `max_age` forces a read after that long even when nothing seems changed.
    pub(crate) fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        max_age: Option<Duration>,
        parse: impl Fn(&[Vec<u8>]) -> Result<T, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            what,
            paths,
            max_age,
            parse: Box::new(parse),
            state: Mutex::new(State { loaded: None, refused: None }),
            #[cfg(test)]
            reads: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The files, in the order `parse` gets their contents.
    pub(crate) fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Runs `exchange` with the current value. When the authority refuses it with one of
    /// `stale_codes` (the value is no longer registered or valid: the files may have been
    /// rotated since they were last looked at, even during the exchange), the files are read
    /// again unconditionally, and if that yields different content the exchange runs once
    /// more with it. Returns the outcome and the value last presented, which error details
    /// describe.
    pub(crate) async fn exchange<F, Fut>(
        &self,
        stale_codes: &[u32],
        exchange: F,
    ) -> Result<(Result<AccessToken, CredentialError>, T), LoadError>
    where
        F: Fn(T) -> Fut,
        Fut: Future<Output = Result<AccessToken, CredentialError>>,
    {
        let first = self.load(false).await?;
        let result = exchange(first.value.clone()).await;
        let Err(CredentialError::Rejected { aadsts: Some(code), .. }) = &result else {
            return Ok((result, first.value));
        };
        let code = *code;
        if !stale_codes.contains(&code) {
            return Ok((result, first.value));
        }
        let again = match self.load(true).await {
            Ok(again) if again.generation != first.generation => again,
            _ => {
                tracing::debug!(file = %self.paths[0].display(), code, "{} refused and unchanged on disk; not retrying", self.what);
                return Ok((result, first.value));
            }
        };
        tracing::info!(
            file = %self.paths[0].display(),
            code,
            "{} refused with AADSTS{code} and changed on disk since; retrying once with the new one",
            self.what
        );
        let retried = exchange(again.value.clone()).await;
        Ok((retried, again.value))
    }

    /// Loads the value: returns the held one when no file changed (unless `force`), else reads
    /// and parses the files, keeping the held one when that fails.
    async fn load(&self, force: bool) -> Result<Current<T>, LoadError> {
        let mut guard = self.state.lock().await;
        let state = &mut *guard;
        if !force && let Some(loaded) = &state.loaded {
            let fresh = self.max_age.is_none_or(|age| loaded.read_at.elapsed() < age);
            if fresh {
                let paths = self.paths.clone();
                // A failed stat (a file missing for a moment during a swap) reads, which
                // then reports the problem or finds the new file.
                if let Ok(Ok(now)) = tokio::task::spawn_blocking(move || fingerprints(&paths)).await
                    && (now == loaded.fingerprints || state.refused.as_ref() == Some(&now))
                {
                    return Ok(Current { value: loaded.value.clone(), generation: loaded.generation });
                }
            }
        }

        #[cfg(test)]
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let paths = self.paths.clone();
        let read = tokio::task::spawn_blocking(move || read_all(&paths)).await.unwrap_or_else(|e| {
            Err(LoadError::Read { path: self.paths[0].clone(), reason: format!("reading was interrupted: {e}") })
        });
        let (fingerprints, mut contents) = match read {
            Ok(read) => read,
            Err(error) => return self.keep_previous(state, error),
        };
        let digest = content_digest(&contents);
        if let Some(loaded) = state.loaded.as_mut()
            && loaded.digest == digest
        {
            // The same bytes under new metadata: nothing to parse, nothing to announce.
            wipe(&mut contents);
            loaded.fingerprints = fingerprints;
            loaded.read_at = tokio::time::Instant::now();
            state.refused = None;
            return Ok(Current { value: loaded.value.clone(), generation: loaded.generation });
        }
        let parsed = (self.parse)(&contents);
        wipe(&mut contents);
        match parsed {
            Ok(value) => {
                let generation = state.loaded.as_ref().map_or(0, |loaded| loaded.generation + 1);
                if generation > 0 {
                    match value.describe() {
                        Some(detail) => {
                            tracing::info!(file = %self.paths[0].display(), %detail, "{} changed on disk; using the new one", self.what)
                        }
                        None => {
                            tracing::info!(file = %self.paths[0].display(), "{} changed on disk; using the new one", self.what)
                        }
                    }
                }
                state.loaded = Some(Loaded {
                    value: value.clone(),
                    fingerprints,
                    digest,
                    generation,
                    read_at: tokio::time::Instant::now(),
                });
                state.refused = None;
                Ok(Current { value, generation })
            }
            Err(problem) => {
                let current = self.keep_previous(state, LoadError::Invalid(problem));
                if state.loaded.is_some() {
                    state.refused = Some(fingerprints);
                }
                current
            }
        }
    }

    /// After a failed read: the held value with a warning, or the error on a first load.
    fn keep_previous(&self, state: &State<T>, error: LoadError) -> Result<Current<T>, LoadError> {
        let Some(loaded) = &state.loaded else {
            return Err(error);
        };
        let (path, problem) = match &error {
            LoadError::Read { path, reason } => (path.as_path(), reason.as_str()),
            LoadError::Invalid(problem) => (self.paths[0].as_path(), problem.as_str()),
        };
        tracing::warn!(
            file = %path.display(),
            %problem,
            "{} changed on disk but cannot be used; keeping the one read before",
            self.what
        );
        Ok(Current { value: loaded.value.clone(), generation: loaded.generation })
    }
}

/// Fingerprints of `paths` from metadata alone.
fn fingerprints(paths: &[PathBuf]) -> std::io::Result<Vec<Fingerprint>> {
    paths
        .iter()
        .map(|path| {
            let target = std::fs::canonicalize(path)?;
            let metadata = std::fs::metadata(&target)?;
            Ok(Fingerprint::of(target, &metadata))
        })
        .collect()
}

/// Reads every file, each with the fingerprint of exactly what was read.
fn read_all(paths: &[PathBuf]) -> Result<(Vec<Fingerprint>, Vec<Vec<u8>>), LoadError> {
    let mut fingerprints = Vec::with_capacity(paths.len());
    let mut contents: Vec<Vec<u8>> = Vec::with_capacity(paths.len());
    for path in paths {
        match read_one(path) {
            Ok((fingerprint, content)) => {
                fingerprints.push(fingerprint);
                contents.push(content);
            }
            Err(reason) => {
                wipe(&mut contents);
                return Err(LoadError::Read { path: path.clone(), reason });
            }
        }
    }
    Ok((fingerprints, contents))
}

fn read_one(path: &Path) -> Result<(Fingerprint, Vec<u8>), String> {
    let target = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    // Checked before opening: opening a FIFO would block until something writes to it.
    if !std::fs::metadata(&target).map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".to_owned());
    }
    let file = File::open(&target).map_err(|e| e.to_string())?;
    let metadata = file.metadata().map_err(|e| e.to_string())?;
    if !metadata.is_file() {
        return Err("not a regular file".to_owned());
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let mut content = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    let read = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut content);
    if let Err(e) = read {
        content.zeroize();
        return Err(e.to_string());
    }
    if content.len() as u64 > MAX_FILE_BYTES {
        content.zeroize();
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok((Fingerprint::of(target, &metadata), content))
}

/// SHA-256 over the contents, each preceded by its length so no two sets collide by
/// moving bytes from one file to the next.
fn content_digest(contents: &[Vec<u8>]) -> [u8; 32] {
    let mut context = digest::Context::new(&digest::SHA256);
    for content in contents {
        context.update(&(content.len() as u64).to_be_bytes());
        context.update(content);
    }
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// Zeroes raw contents (secrets, private keys) before their buffers are freed.
fn wipe(contents: &mut [Vec<u8>]) {
    for content in contents {
        content.zeroize();
    }
}

/// Text from a file, trimmed (Kubernetes Secrets made with `--from-file` often end in a
/// newline); an error when nothing is left.
pub(crate) fn non_empty_text(content: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(content).map_err(|_| "is not UTF-8 text".to_owned())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("is empty".to_owned());
    }
    Ok(text.to_owned())
}

impl FileContent for crate::secret::Secret {}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::CredentialKind;
    use crate::secret::Secret;

    fn secret_file(path: &Path) -> WatchedFiles<Secret> {
        WatchedFiles::new("client secret file", vec![path.to_owned()], None, |contents| {
            non_empty_text(&contents[0]).map(Secret::new)
        })
    }

    impl<T: FileContent> WatchedFiles<T> {
        /// What an exchange would present now.
        async fn current(&self) -> Result<T, LoadError> {
            self.load(false).await.map(|current| current.value)
        }
    }

    fn reads<T>(files: &WatchedFiles<T>) -> usize {
        files.reads.load(Ordering::SeqCst)
    }

    /// Replaces `path` the way an atomic writer does: a new file renamed over it.
    fn replace(path: &Path, content: &str) {
        let staging = path.with_extension("staging");
        std::fs::write(&staging, content).unwrap();
        std::fs::rename(&staging, path).unwrap();
    }

    fn token() -> AccessToken {
        AccessToken { token: Secret::new("t"), expires_on: 2, not_before: 1, ext_expires_on: 2, refresh_on: None }
    }

    fn refused(code: u32) -> CredentialError {
        CredentialError::Rejected {
            credential: CredentialKind::ClientCertificate,
            aadsts: Some(code),
            message: String::new(),
            correlation_id: None,
        }
    }

    #[tokio::test]
    async fn an_unchanged_file_is_stat_only_and_a_replaced_one_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "first\n").unwrap();
        let files = secret_file(&path);
        assert_eq!(files.current().await.unwrap().expose(), "first");
        for _ in 0..3 {
            assert_eq!(files.current().await.unwrap().expose(), "first");
        }
        assert_eq!(reads(&files), 1, "nothing changed, so nothing was read again");

        // Same length, and the modification time put back: the new inode still shows.
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        replace(&path, "other\n");
        File::options().write(true).open(&path).unwrap().set_modified(modified).unwrap();
        assert_eq!(files.current().await.unwrap().expose(), "other");
        assert_eq!(reads(&files), 2);
    }

    #[tokio::test]
    async fn a_rewrite_in_place_that_restores_size_and_modification_time_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "aaaa").unwrap();
        let files = secret_file(&path);
        assert_eq!(files.current().await.unwrap().expose(), "aaaa");
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, "bbbb").unwrap();
        File::options().write(true).open(&path).unwrap().set_modified(modified).unwrap();
        assert_eq!(files.current().await.unwrap().expose(), "bbbb", "the change time moved");
    }

    #[tokio::test]
    async fn a_broken_new_file_keeps_the_old_value_and_is_read_once_until_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "good").unwrap();
        let files = secret_file(&path);
        assert_eq!(files.current().await.unwrap().expose(), "good");

        replace(&path, " \n");
        for _ in 0..3 {
            assert_eq!(files.current().await.unwrap().expose(), "good");
        }
        assert_eq!(reads(&files), 2, "the empty file was read once, then remembered as refused");

        std::fs::remove_file(&path).unwrap();
        assert_eq!(files.current().await.unwrap().expose(), "good", "a missing file keeps it too");

        replace(&path, "better");
        assert_eq!(files.current().await.unwrap().expose(), "better");
    }

    #[tokio::test]
    async fn the_first_load_reports_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let Err(LoadError::Read { path: named, reason }) = secret_file(&path).current().await else {
            panic!("a missing file is a read error");
        };
        assert_eq!(named, path);
        assert!(reason.contains("No such file"), "{reason}");

        std::fs::write(&path, "\n").unwrap();
        let Err(LoadError::Invalid(problem)) = secret_file(&path).current().await else { panic!("empty") };
        assert_eq!(problem, "is empty");

        let Err(LoadError::Read { reason, .. }) = secret_file(dir.path()).current().await else { panic!("dir") };
        assert_eq!(reason, "not a regular file");

        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let Err(LoadError::Read { reason, .. }) = secret_file(&big).current().await else { panic!("big") };
        assert!(reason.contains("larger than"), "{reason}");
    }

    #[tokio::test]
    async fn the_same_bytes_under_new_metadata_are_not_a_new_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "same").unwrap();
        let parsed = Arc::new(AtomicUsize::new(0));
        let counter = parsed.clone();
        let files = WatchedFiles::new("client secret file", vec![path.clone()], None, move |contents| {
            counter.fetch_add(1, Ordering::SeqCst);
            non_empty_text(&contents[0]).map(Secret::new)
        });
        let first = files.load(false).await.unwrap();
        replace(&path, "same");
        let again = files.load(false).await.unwrap();
        assert_eq!((again.generation, reads(&files)), (first.generation, 2));
        assert_eq!(parsed.load(Ordering::SeqCst), 1, "identical bytes are not parsed again");
        let forced = files.load(true).await.unwrap();
        assert_eq!(forced.generation, first.generation);
    }

    #[tokio::test(start_paused = true)]
    async fn max_age_reads_even_when_nothing_seems_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "t").unwrap();
        let files = WatchedFiles::new("federated token file", vec![path], Some(Duration::from_secs(300)), |c| {
            non_empty_text(&c[0]).map(Secret::new)
        });
        files.current().await.unwrap();
        files.current().await.unwrap();
        assert_eq!(reads(&files), 1);
        tokio::time::advance(Duration::from_secs(301)).await;
        files.current().await.unwrap();
        assert_eq!(reads(&files), 2);
    }

    #[tokio::test]
    async fn several_files_are_one_value_and_any_of_them_changing_reloads_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "2").unwrap();
        let files = WatchedFiles::new("pair", vec![a.clone(), b.clone()], None, |c| {
            Ok(Secret::new(format!("{}{}", non_empty_text(&c[0])?, non_empty_text(&c[1])?)))
        });
        assert_eq!(files.current().await.unwrap().expose(), "12");
        replace(&b, "3");
        assert_eq!(files.current().await.unwrap().expose(), "13");
        // The second file unreadable: the error names it, on a first load.
        let fresh = WatchedFiles::new("pair", vec![a, dir.path().join("missing")], None, |_| Ok(Secret::new("x")));
        let Err(LoadError::Read { path, .. }) = fresh.current().await else { panic!("missing") };
        assert!(path.ends_with("missing"));
    }

    #[tokio::test]
    async fn a_refusal_rereads_and_retries_once_only_when_the_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "old").unwrap();
        let files = secret_file(&path);
        let presented = std::sync::Mutex::new(Vec::new());
        // The authority knows only "new"; the file is replaced while "old" is in flight, so
        // the check before the exchange could not have seen it.
        let exchange = |secret: Secret| {
            presented.lock().unwrap().push(secret.expose().to_owned());
            let path = path.clone();
            async move {
                if secret.expose() == "new" {
                    return Ok(token());
                }
                replace(&path, "new");
                Err(refused(7000215))
            }
        };
        let (result, last) = files.exchange(&[7000215], exchange).await.unwrap();
        assert!(result.is_ok());
        assert_eq!(last.expose(), "new");
        assert_eq!(*presented.lock().unwrap(), ["old", "new"]);

        // Refused again with nothing new on disk: no second attempt.
        presented.lock().unwrap().clear();
        let (result, _) = files
            .exchange(&[7000215], |secret: Secret| {
                presented.lock().unwrap().push(secret.expose().to_owned());
                async { Err(refused(7000215)) }
            })
            .await
            .unwrap();
        assert!(result.is_err());
        assert_eq!(*presented.lock().unwrap(), ["new"]);

        // A refusal with another code is returned as it is, without reading.
        let before = reads(&files);
        replace(&path, "newer");
        let calls = AtomicUsize::new(0);
        let (result, last) = files
            .exchange(&[7000215], |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(refused(700016)) }
            })
            .await
            .unwrap();
        assert!(result.is_err());
        assert_eq!((calls.load(Ordering::SeqCst), last.expose()), (1, "newer"));
        assert_eq!(reads(&files), before + 1, "only the check before the exchange read it");
    }
}
