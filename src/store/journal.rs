//! The cache file as a snapshot plus a journal (`<file>.journal`) of the changes since it, in
//! the record layout of [`super::records`], and how a [`FileStore`] reads and writes the two.
//!
//! - **A save appends what changed**: this process remembers what it last wrote of each token
//!   it holds ([`Written`]), and a save appends to the journal a token record for each token
//!   fetched, refreshed or moved between the cache's segments since, and a removal for each
//!   token it no longer holds, then fsyncs the journal. Its cost is that of the change, not
//!   of the store.
//! - **Compaction** replaces both with one snapshot: the snapshot's and the journal's records
//!   replayed, merged with what memory holds by the rule of [`super::Store::save`] (expired
//!   tokens dropped, at most `max_per_client` per client id), streamed into a temporary
//!   file record by record, fsynced and renamed over the cache file; then the journal is
//!   removed. It runs at a process's first save (so a start prunes the file), when the
//!   journal has grown past the snapshot's size (and at least [`JOURNAL_FLOOR`]), when
//!   another process or tool replaced the snapshot, and whenever the files are not as this
//!   process left them in a way an append cannot continue from.
//! - **Replay** (a load, a compaction) reads the snapshot, then the journal's records in
//!   order: a token replaces the one of its key unless that one expires later (a later record
//!   wins a tie), a removal drops the key's token only if the same writer wrote it. Only an
//!   index is built (key, where the record lies, its expiry and writer); token strings are
//!   read back from the files when they are copied, so neither a load nor a compaction holds
//!   the file in memory.
//! - **Crashes**: a journal names the snapshot it follows (`base id`), so one left behind by a
//!   crash between a compaction's rename and the journal's removal follows the old snapshot,
//!   is ignored and is removed by the next compaction: its changes are in the new snapshot. A
//!   temporary file left by a crash before the rename is removed by the next write. A last
//!   journal frame that is incomplete or does not authenticate is an interrupted append: it is
//!   ignored, and cut off by the next append. A frame that does not authenticate with more
//!   of the journal after it is damage: the journal is moved aside as unreadable (its earlier
//!   records are used) and the next save compacts.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroize;

use super::file::{self, CACHE_FILE, FileStore, JOURNAL_FILE};
use super::format::{self, DecodeError, StoredAccount, StoredToken};
use super::records::{self, FileKind, Frames, HEADER_LEN, Header, ID_LEN, Next, Record, Removal, Sealer};
use super::{Held, HeldIdentity, HeldToken, OnUnreadable, PersistedAccount, PersistedToken, SaveReport, Snapshot};
use super::{StoreError, cap_per_client, implausible, merge_account};

/// The journal never grows past the snapshot's size, nor this, before it is compacted: small
/// stores are not rewritten for every few changes.
pub const JOURNAL_FLOOR: u64 = 256 * 1024;
/// Frames are written to the journal in chunks of about this size.
const CHUNK: usize = 256 * 1024;

/// The journal beside the cache file at `path`.
pub fn journal_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.journal", path.display()))
}

/// A token's key in a store: the client id lower-cased (Azure compares client ids
/// case-insensitively), then the resource exactly; ordered as [`super::key_order`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    client: String,
    resource: String,
}

impl Key {
    fn new(client_id: &str, resource: &str) -> Self {
        Self { client: client_id.to_ascii_lowercase(), resource: resource.to_owned() }
    }
}

/// Where a token's record lies.
#[derive(Clone, Copy)]
enum Loc {
    Snapshot {
        offset: u64,
        seq: u64,
    },
    Journal {
        offset: u64,
        seq: u64,
    },
    /// In a version-1 file, decoded whole (read once, when a file of an older release is
    /// migrated).
    Legacy(usize),
}

/// A token in the replayed store, without its strings.
#[derive(Clone, Copy)]
struct Entry {
    loc: Loc,
    expires_on: u64,
    in_use: bool,
    written_by: u64,
}

/// The snapshot and journal replayed: an index of every token, the accounts, and the open
/// files the tokens are read back from.
#[derive(Default)]
pub struct Replay {
    entries: BTreeMap<Key, Entry>,
    accounts: Vec<PersistedAccount>,
    snapshot: Option<(File, Sealer)>,
    journal: Option<(File, Sealer)>,
    legacy: Vec<PersistedToken>,
    buffer: Vec<u8>,
}

impl Drop for Replay {
    fn drop(&mut self) {
        // It held decrypted records.
        self.buffer.zeroize();
    }
}

impl Replay {
    fn snapshot_id(&self) -> Option<[u8; ID_LEN]> {
        self.snapshot.as_ref().map(|(_, sealer)| sealer.header().id())
    }

    /// A token record: the newer of the two stays (a later record wins a tie).
    fn put(&mut self, key: Key, entry: Entry) {
        match self.entries.entry(key) {
            MapEntry::Occupied(mut existing) => {
                if entry.expires_on >= existing.get().expires_on {
                    existing.insert(entry);
                }
            }
            MapEntry::Vacant(vacant) => {
                vacant.insert(entry);
            }
        }
    }

    /// A removal: only a token the same writer wrote goes.
    fn remove(&mut self, removal: &Removal<'_>) {
        let key = Key::new(&removal.client_id, &removal.resource);
        if removal.written_by != 0 && self.entries.get(&key).is_some_and(|e| e.written_by == removal.written_by) {
            self.entries.remove(&key);
        }
    }

    /// The record bytes (kind and JSON) of a token, read back from its file.
    fn record(&mut self, entry: &Entry) -> Result<&[u8], DecodeError> {
        let (file, sealer, offset, seq) = match entry.loc {
            Loc::Snapshot { offset, seq } => {
                let (file, sealer) = self.snapshot.as_ref().ok_or(DecodeError::Tampered)?;
                (file, sealer, offset, seq)
            }
            Loc::Journal { offset, seq } => {
                let (file, sealer) = self.journal.as_ref().ok_or(DecodeError::Tampered)?;
                (file, sealer, offset, seq)
            }
            Loc::Legacy(index) => {
                let token = self.legacy.get(index).ok_or(DecodeError::Tampered)?;
                Record::Token(StoredToken::from_token(token)).encode(&mut self.buffer);
                return Ok(&self.buffer);
            }
        };
        records::read_at(file, offset, seq, sealer, &mut self.buffer)
    }

    /// A token as an owned value.
    fn token(&mut self, entry: &Entry) -> Result<PersistedToken, DecodeError> {
        if let Loc::Legacy(index) = entry.loc {
            return self.legacy.get(index).cloned().ok_or(DecodeError::Tampered);
        }
        match Record::decode(self.record(entry)?)? {
            Record::Token(token) => Ok(token.into_token()),
            _ => Err(DecodeError::BadPayload("a token's record holds something else".into())),
        }
    }
}

/// Where the files stood after this process's last write.
#[derive(Clone, Copy)]
struct Disk {
    snapshot_id: [u8; ID_LEN],
    snapshot_len: u64,
    journal: Option<JournalEnd>,
}

#[derive(Clone, Copy)]
struct JournalEnd {
    id: [u8; ID_LEN],
    len: u64,
    records: u64,
}

/// What this process last wrote of a token it holds. A token that is refreshed or moved
/// between segments differs in one of these (the broker replaces the token's `Arc` when it
/// refreshes it; `token` is only compared, never followed).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Mark {
    token: usize,
    expires_on: u64,
    refresh_on: u64,
    in_use: bool,
}

type Marks = HashMap<String, HashMap<Arc<String>, Mark>>;

/// A held token an append writes: its identity, resource, token and whether it is in use.
type Put<'h> = (&'h HeldIdentity, &'h Arc<String>, &'h Arc<dyn HeldToken>, bool);

/// What a [`FileStore`] remembers between saves.
#[derive(Default)]
pub struct Written {
    /// The files as this process's last write left them; `None` before the first write and
    /// when they are not known (a failed compaction, a `clear`): the next save compacts.
    disk: Option<Disk>,
    /// What it wrote of each token it held, by lower-cased client id and resource.
    marks: Marks,
    /// Tokens in the file as its own writes left it.
    count: usize,
}

/// The tokens of `held` a save writes (unexpired, plausible), by lower-cased client id.
fn marks_of(held: &Held, now: u64) -> Marks {
    let mut marks: Marks = HashMap::new();
    for identity in &held.identities {
        let of_client = marks.entry(identity.client_id.to_ascii_lowercase()).or_default();
        for (resource, token, in_use) in &identity.tokens {
            let access = token.access_token();
            if access.expires_on <= now || implausible(access.expires_on, now) {
                continue;
            }
            let mark = Mark {
                token: Arc::as_ptr(token).cast::<()>() as usize,
                expires_on: access.expires_on,
                refresh_on: token.refresh_on(),
                in_use: *in_use,
            };
            of_client.insert(Arc::clone(resource), mark);
        }
    }
    marks
}

/// The outcome of trying to append.
enum Append {
    Done(SaveReport, Disk),
    /// The files are not as an append can continue from, or the journal is full.
    Compact,
}

/// A snapshot being written: frames sealed one at a time into a buffered temporary file.
struct SnapshotWriter<'w> {
    out: io::BufWriter<&'w mut File>,
    sealer: Sealer,
    seq: u64,
    frame: Vec<u8>,
    record: Vec<u8>,
}

impl SnapshotWriter<'_> {
    fn push_record(&mut self, record: &[u8]) -> io::Result<()> {
        self.frame.clear();
        self.sealer.seal(self.seq, record, &mut self.frame);
        self.seq += 1;
        self.out.write_all(&self.frame)
    }

    fn push(&mut self, record: &Record<'_>) -> io::Result<()> {
        let mut bytes = std::mem::take(&mut self.record);
        record.encode(&mut bytes);
        let pushed = self.push_record(&bytes);
        self.record = bytes;
        pushed
    }

    fn finish(mut self) -> io::Result<()> {
        self.push(&Record::End { records: self.seq })?;
        self.out.flush()?;
        self.frame.zeroize();
        self.record.zeroize();
        Ok(())
    }
}

impl FileStore {
    /// Reads the snapshot and the journal into a [`Replay`]; must run under the lock. A
    /// snapshot that cannot be read is handled as `on_unreadable` says (moved aside with its
    /// journal, or an error); so is a journal that cannot be read, except that the records
    /// before a damaged one are kept.
    pub(super) fn replay_locked(&self, on_unreadable: OnUnreadable) -> Result<Replay, StoreError> {
        let mut replay = Replay::default();
        if let Some(file) = self.open_trusted(self.path(), CACHE_FILE, on_unreadable)?
            && let Err(error) = read_snapshot(file, &self.protection, &mut replay)
        {
            replay = Replay::default();
            self.unreadable(self.path(), error.to_string(), on_unreadable)?;
            // A journal follows its snapshot; kept beside it for inspection.
            let journal = journal_path(self.path());
            if fs::symlink_metadata(&journal).is_ok() {
                let _ = self.unreadable(&journal, "its snapshot could not be read".into(), on_unreadable);
            }
            return Ok(replay);
        }
        let Some(snapshot_id) = replay.snapshot_id() else { return Ok(replay) };
        let journal = journal_path(self.path());
        let Some(file) = self.open_trusted(&journal, JOURNAL_FILE, on_unreadable)? else { return Ok(replay) };
        if let Err(error) = read_journal(file, snapshot_id, &self.protection, &mut replay) {
            self.unreadable(&journal, error.to_string(), on_unreadable)?;
        }
        Ok(replay)
    }

    /// Reads what a load returns: everything, or at most `max_per_client` unexpired tokens
    /// per client id (in use first, then the freshest) when `bound = (max_per_client, now)`.
    pub(super) fn load_locked(
        &self,
        on_unreadable: OnUnreadable,
        bound: Option<(usize, u64)>,
    ) -> Result<Snapshot, StoreError> {
        let mut replay = self.replay_locked(on_unreadable)?;
        let mut entries: Vec<(Key, Entry)> = std::mem::take(&mut replay.entries).into_iter().collect();
        if let Some((max, now)) = bound {
            entries.retain(|(_, e)| e.expires_on > now);
            cap_per_client(&mut entries, max, |(k, _)| k.client.as_str(), |(_, e)| (e.in_use, e.expires_on));
        }
        let mut tokens = Vec::with_capacity(entries.len());
        for (_, entry) in &entries {
            match replay.token(entry) {
                Ok(token) => tokens.push(token),
                // The files changed under the lock (someone not taking it): as unreadable.
                Err(error) => {
                    return self.unreadable(self.path(), error.to_string(), on_unreadable).map(|_| Snapshot::default());
                }
            }
        }
        Ok(Snapshot { tokens, accounts: std::mem::take(&mut replay.accounts) })
    }

    /// [`super::Store::save`]: an append of what changed since this process's last write,
    /// or a compaction; must run under the lock.
    pub(super) fn save_locked(&self, held: &Held, now: u64) -> Result<SaveReport, StoreError> {
        let mut written = self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let marks = marks_of(held, now);
        if let Some(disk) = written.disk {
            match self.append_locked(disk, &written, held, &marks) {
                Ok(Append::Done(report, disk)) => {
                    *written = Written { disk: Some(disk), marks, count: report.kept };
                    return Ok(report);
                }
                Ok(Append::Compact) => {}
                // The journal was cut back to where it was, or is as good as unknown.
                Err(error) => return Err(error),
            }
        }
        match self.compact_locked(held, now) {
            Ok((report, disk)) => {
                *written = Written { disk: Some(disk), marks, count: report.kept };
                Ok(report)
            }
            Err(error) => {
                written.disk = None;
                Err(error)
            }
        }
    }

    /// Appends to the journal what changed since the last write, if the files are as that
    /// write left them (or only grew by other processes' appends).
    fn append_locked(&self, disk: Disk, written: &Written, held: &Held, marks: &Marks) -> Result<Append, StoreError> {
        // What changed: tokens whose mark differs, and tokens no longer held.
        let mut puts: Vec<Put<'_>> = Vec::new();
        let mut added = 0;
        for identity in &held.identities {
            let client = identity.client_id.to_ascii_lowercase();
            let (Some(now_held), before) = (marks.get(&client), written.marks.get(&client)) else { continue };
            for (resource, token, in_use) in &identity.tokens {
                let Some(mark) = now_held.get(&**resource) else { continue };
                if mark.token != Arc::as_ptr(token).cast::<()>() as usize {
                    continue; // a second entry for one resource; the one marked is written
                }
                let previous = before.and_then(|b| b.get(&**resource));
                if previous != Some(mark) {
                    added += usize::from(previous.is_none());
                    puts.push((identity, resource, token, *in_use));
                }
            }
        }
        let mut removals: Vec<(&str, &str)> = Vec::new();
        if held.writer != 0 {
            for (client, resources) in &written.marks {
                let now_held = marks.get(client);
                for resource in resources.keys() {
                    if now_held.is_none_or(|n| !n.contains_key(&**resource)) {
                        removals.push((client.as_str(), resource.as_str()));
                    }
                }
            }
        }
        let report = |kept: usize| SaveReport { kept, pruned: 0, dropped: removals.len(), compacted: false };
        let kept = (written.count + added).saturating_sub(removals.len());
        if puts.is_empty() && removals.is_empty() {
            return Ok(Append::Done(report(kept), disk));
        }

        // The snapshot must be the one this process last wrote or appended after.
        match self.snapshot_header() {
            Some(header) if header.id() == disk.snapshot_id => {}
            _ => return Ok(Append::Compact),
        }
        let estimate: u64 =
            puts.iter().map(|(_, _, t, _)| t.access_token().token.expose().len() as u64 + 512).sum::<u64>()
                + 256 * removals.len() as u64;
        let journal = journal_path(self.path());
        let (mut file, header, end, records, created) = match self.journal_end(&journal, disk)? {
            Some((file, header, end, records)) => (file, header, end, records, false),
            None if disk.journal.is_none() => {
                let header = Header::new(FileKind::Journal, disk.snapshot_id, &self.protection);
                match file::create_private(&journal) {
                    Ok(file) => (file, header, 0, 0, true),
                    Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Ok(Append::Compact),
                    Err(error) => return Err(StoreError::io("write", &journal, error)),
                }
            }
            None => return Ok(Append::Compact),
        };
        if end.max(HEADER_LEN as u64) + estimate > disk.snapshot_len.max(JOURNAL_FLOOR) {
            if created {
                let _ = fs::remove_file(&journal);
            }
            return Ok(Append::Compact);
        }

        let sealer = Sealer::new(header, &self.protection);
        let mut seq = records;
        let appended = (|| -> io::Result<u64> {
            // Sized to the change (a batch is usually a few tokens), at most a chunk.
            let mut chunk = Vec::with_capacity(usize::try_from(estimate).unwrap_or(CHUNK).min(CHUNK) + HEADER_LEN);
            if created {
                chunk.extend_from_slice(header.bytes());
            } else {
                file.set_len(end)?;
                file.seek(SeekFrom::Start(end))?;
            }
            let mut record = Vec::new();
            let mut written_len = if created { 0 } else { end };
            let mut flush = |chunk: &mut Vec<u8>, file: &mut File| -> io::Result<()> {
                file.write_all(chunk)?;
                written_len += chunk.len() as u64;
                chunk.zeroize();
                chunk.clear();
                Ok(())
            };
            for (identity, resource, token, in_use) in &puts {
                let mut stored = StoredToken::from_held(identity, resource, &***token, *in_use);
                stored.written_by = held.writer;
                Record::Token(stored).encode(&mut record);
                sealer.seal(seq, &record, &mut chunk);
                seq += 1;
                if chunk.len() >= CHUNK {
                    flush(&mut chunk, &mut file)?;
                }
            }
            for (client, resource) in &removals {
                let removal =
                    Removal { client_id: (*client).into(), resource: (*resource).into(), written_by: held.writer };
                Record::Removal(removal).encode(&mut record);
                sealer.seal(seq, &record, &mut chunk);
                seq += 1;
            }
            flush(&mut chunk, &mut file)?;
            record.zeroize();
            file.sync_data()?;
            Ok(written_len)
        })();
        let len = match appended {
            Ok(len) => len,
            Err(error) => {
                // Leave the journal as it was: an append that failed half-way (a full disk)
                // must not stay as a torn tail for the next append to find.
                let restored =
                    if created { fs::remove_file(&journal) } else { file.set_len(end).and_then(|()| file.sync_data()) };
                if let Err(restore) = restored {
                    tracing::debug!(path = %journal.display(), error = %restore, "cannot cut the journal back");
                }
                return Err(StoreError::io("write", &journal, error));
            }
        };
        if created {
            file::sync_directory(file::parent(self.path()));
        }
        let disk = Disk { journal: Some(JournalEnd { id: header.id(), len, records: seq }), ..disk };
        Ok(Append::Done(report(kept), disk))
    }

    /// The header of the snapshot, if it is a trusted version-2 snapshot.
    fn snapshot_header(&self) -> Option<Header> {
        let mut options = OpenOptions::new();
        options.read(true);
        let crate::trust::Opened::Trusted(mut file) =
            crate::trust::open(self.path(), &mut options, crate::trust::Owners::RunningUser)
        else {
            return None;
        };
        let mut bytes = [0u8; HEADER_LEN];
        file.read_exact(&mut bytes).ok()?;
        Header::parse(&bytes, &self.protection).ok().filter(|h| h.kind() == FileKind::Snapshot)
    }

    /// The journal to append to, opened for writing, with its header, where its whole frames
    /// end and how many there are; `None` when there is none. A journal that is not the one
    /// this process last appended to (or created after `disk`'s snapshot) and follows the
    /// snapshot is scanned: another process appended to it, or a torn tail must be cut off.
    #[allow(clippy::type_complexity)]
    fn journal_end(&self, journal: &Path, disk: Disk) -> Result<Option<(File, Header, u64, u64)>, StoreError> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        // Missing, refused or unreadable: a compaction's replay deals with it.
        let crate::trust::Opened::Trusted(mut file) =
            crate::trust::open(journal, &mut options, crate::trust::Owners::RunningUser)
        else {
            return Ok(None);
        };
        let len = file.metadata().map_err(|e| StoreError::io("read", journal, e))?.len();
        let mut bytes = [0u8; HEADER_LEN];
        if len < HEADER_LEN as u64 || file.read_exact(&mut bytes).is_err() {
            return Ok(None);
        }
        let Ok(header) = Header::parse(&bytes, &self.protection) else { return Ok(None) };
        if header.kind() != FileKind::Journal || header.base() != disk.snapshot_id {
            return Ok(None);
        }
        if let Some(end) = disk.journal
            && end.id == header.id()
            && end.len == len
        {
            return Ok(Some((file, header, len, end.records)));
        }
        let sealer = Sealer::new(header, &self.protection);
        let mut frames = Frames::new(&file, HEADER_LEN as u64, len);
        let mut records = 0;
        let end = loop {
            match frames.next(&sealer).map_err(|e| StoreError::io("read", journal, e))? {
                Next::Record { .. } => records += 1,
                Next::End => break len,
                Next::Torn { at } => break at,
                Next::Corrupt { .. } => return Ok(None),
            }
        };
        drop(frames);
        Ok(Some((file, header, end, records)))
    }

    /// Replaces the snapshot with the replayed store merged with `held` (the rule of
    /// [`super::Store::save`]), streamed, and removes the journal.
    fn compact_locked(&self, held: &Held, now: u64) -> Result<(SaveReport, Disk), StoreError> {
        let mut replay = self.replay_locked(OnUnreadable::MoveAside)?;

        #[derive(Clone, Copy)]
        enum Pick<'h> {
            File(Entry),
            Held(&'h HeldIdentity, &'h str, &'h dyn HeldToken, bool),
        }
        struct Candidate<'h> {
            pick: Pick<'h>,
            expires_on: u64,
            in_use: bool,
            held: bool,
        }
        let mut pruned = 0;
        let mut held_keys: HashSet<Key> = HashSet::new();
        let mut live = Vec::new();
        for identity in &held.identities {
            for (resource, token, in_use) in &identity.tokens {
                let expires_on = token.access_token().expires_on;
                if expires_on <= now || implausible(expires_on, now) {
                    pruned += 1;
                    continue;
                }
                held_keys.insert(Key::new(&identity.client_id, resource));
                live.push((identity, resource.as_str(), &**token, *in_use, expires_on));
            }
        }
        // What this writer wrote and no longer holds was evicted, expired or refreshed away
        // here: it goes. Another writer's token it does not hold stays (within the cap).
        let mut forgotten = 0;
        let mut picks: BTreeMap<Key, Candidate<'_>> = BTreeMap::new();
        for (key, entry) in std::mem::take(&mut replay.entries) {
            // Pruned before the merge, so that a token expiring implausibly far ahead cannot
            // win its key over the genuine one memory holds.
            if entry.expires_on <= now || implausible(entry.expires_on, now) {
                pruned += 1;
                continue;
            }
            let gone = held.writer != 0
                && entry.written_by == held.writer
                && held.serves(&key.client).is_some()
                && !held_keys.contains(&key);
            if gone {
                forgotten += 1;
                continue;
            }
            let candidate =
                Candidate { pick: Pick::File(entry), expires_on: entry.expires_on, in_use: entry.in_use, held: false };
            picks.insert(key, candidate);
        }
        for (identity, resource, token, in_use, expires_on) in live {
            let candidate =
                Candidate { pick: Pick::Held(identity, resource, token, in_use), expires_on, in_use, held: true };
            match picks.entry(Key::new(&identity.client_id, resource)) {
                MapEntry::Occupied(mut existing) if existing.get().expires_on > expires_on => {
                    existing.get_mut().held = true
                }
                MapEntry::Occupied(mut existing) => {
                    existing.insert(candidate);
                }
                MapEntry::Vacant(vacant) => {
                    vacant.insert(candidate);
                }
            }
        }
        let mut kept: Vec<(Key, Candidate<'_>)> = picks.into_iter().collect();
        let over_cap = cap_per_client(
            &mut kept,
            held.max_per_client,
            |(k, _)| k.client.as_str(),
            |(_, c)| (c.held, c.in_use, c.expires_on),
        );

        let accounts = std::mem::take(&mut replay.accounts);
        let disk = self.write_snapshot_locked(|writer| {
            for (_, candidate) in &kept {
                match candidate.pick {
                    Pick::Held(identity, resource, token, in_use) => {
                        let mut stored = StoredToken::from_held(identity, resource, token, in_use);
                        stored.written_by = held.writer;
                        writer.push(&Record::Token(stored))?;
                    }
                    Pick::File(entry) => {
                        let record = replay.record(&entry).map_err(|e| {
                            io::Error::other(format!("the token cache changed while it was compacted ({e})"))
                        })?;
                        writer.push_record(record)?;
                    }
                }
            }
            for account in &accounts {
                writer.push(&Record::Account(StoredAccount::from_account(account)))?;
            }
            Ok(())
        })?;
        let report = SaveReport { kept: kept.len(), pruned, dropped: forgotten + over_cap, compacted: true };
        Ok((report, disk))
    }

    /// Replaces the store with `snapshot` (`clear`, a sign-in); must run under the lock. The
    /// next save compacts, as this process's record of what it wrote no longer holds.
    pub(super) fn rewrite_locked(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.write_snapshot_locked(|writer| {
            for token in &snapshot.tokens {
                writer.push(&Record::Token(StoredToken::from_token(token)))?;
            }
            for account in &snapshot.accounts {
                writer.push(&Record::Account(StoredAccount::from_account(account)))?;
            }
            Ok(())
        })?;
        self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner).disk = None;
        Ok(())
    }

    /// Writes a new snapshot (`fill` pushes its records), renames it over the cache file and
    /// removes the journal, which the new snapshot supersedes.
    fn write_snapshot_locked(
        &self,
        fill: impl FnOnce(&mut SnapshotWriter<'_>) -> io::Result<()>,
    ) -> Result<Disk, StoreError> {
        let header = Header::new(FileKind::Snapshot, [0; ID_LEN], &self.protection);
        let mut len = 0;
        self.replace_with(|file| {
            file.write_all(header.bytes())?;
            let mut writer = SnapshotWriter {
                out: io::BufWriter::with_capacity(64 * 1024, &mut *file),
                sealer: Sealer::new(header, &self.protection),
                seq: 0,
                frame: Vec::new(),
                record: Vec::new(),
            };
            fill(&mut writer)?;
            writer.finish()?;
            len = file.stream_position()?;
            Ok(())
        })?;
        let journal = journal_path(self.path());
        match fs::remove_file(&journal) {
            Ok(()) => file::sync_directory(file::parent(self.path())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            // It names the old snapshot, so it is ignored until the next compaction.
            Err(error) => tracing::debug!(path = %journal.display(), %error, "cannot remove the superseded journal"),
        }
        Ok(Disk { snapshot_id: header.id(), snapshot_len: len, journal: None })
    }
}

/// Reads a snapshot of either format into `replay`.
fn read_snapshot(mut file: File, protection: &format::Protection, replay: &mut Replay) -> Result<(), DecodeError> {
    let len = file.metadata().map_err(|_| DecodeError::Tampered)?.len();
    let mut head = [0u8; HEADER_LEN];
    let got = read_up_to(&mut file, &mut head).map_err(|_| DecodeError::Tampered)?;
    let head = &head[..got];
    if head.len() < 9 {
        // Too short to say which version: the version-1 decoder names what is wrong.
        return format::decode(head, protection).map(|_| ());
    }
    if head[8] == format::VERSION {
        let mut bytes = head.to_vec();
        file.read_to_end(&mut bytes).map_err(|_| DecodeError::Tampered)?;
        let decoded = format::decode_in_place(&mut bytes, protection);
        bytes.zeroize();
        let snapshot = decoded?;
        for (index, token) in snapshot.tokens.iter().enumerate() {
            let entry = Entry {
                loc: Loc::Legacy(index),
                expires_on: token.token.expires_on,
                in_use: token.in_use,
                written_by: token.written_by,
            };
            replay.put(Key::new(&token.client_id, &token.resource), entry);
        }
        replay.legacy = snapshot.tokens;
        replay.accounts = snapshot.accounts;
        return Ok(());
    }
    let header = Header::parse(head, protection)?;
    if header.kind() != FileKind::Snapshot {
        return Err(DecodeError::BadPayload("a journal where the snapshot belongs".into()));
    }
    let sealer = Sealer::new(header, protection);
    let mut ended = None;
    {
        let mut frames = Frames::new(&file, HEADER_LEN as u64, len);
        loop {
            match frames.next(&sealer).map_err(|_| DecodeError::Tampered)? {
                Next::Record { offset, seq, record } => {
                    if ended.is_some() {
                        return Err(DecodeError::BadPayload("records after the end record".into()));
                    }
                    match Record::decode(record)? {
                        Record::Token(token) => {
                            let key = Key::new(&token.client_id, &token.resource);
                            let entry = Entry {
                                loc: Loc::Snapshot { offset, seq },
                                expires_on: token.expires_on,
                                in_use: token.in_use,
                                written_by: token.written_by,
                            };
                            replay.put(key, entry);
                        }
                        Record::Account(account) => merge_account(&mut replay.accounts, account.into_account()),
                        Record::End { records } if records == seq => ended = Some(seq),
                        Record::End { .. } => return Err(DecodeError::Tampered),
                        Record::Removal(_) => return Err(DecodeError::BadPayload("a removal in a snapshot".into())),
                    }
                }
                Next::End => break,
                Next::Torn { .. } | Next::Corrupt { .. } => return Err(DecodeError::Tampered),
            }
        }
    }
    if ended.is_none() {
        return Err(DecodeError::Tampered);
    }
    replay.snapshot = Some((file, sealer));
    Ok(())
}

/// Why a journal could not be used past some record.
#[derive(Debug, thiserror::Error)]
enum JournalError {
    #[error("{0}")]
    Header(DecodeError),
    #[error("record {seq} is damaged at byte {at} ({error}); the {seq} record(s) before it were used")]
    Record { seq: u64, at: u64, error: DecodeError },
}

/// Applies the journal's records to `replay`, if it follows the snapshot `snapshot_id`.
fn read_journal(
    mut file: File,
    snapshot_id: [u8; ID_LEN],
    protection: &format::Protection,
    replay: &mut Replay,
) -> Result<(), JournalError> {
    let len = file.metadata().map_err(|_| JournalError::Header(DecodeError::Tampered))?.len();
    let mut bytes = [0u8; HEADER_LEN];
    let got = read_up_to(&mut file, &mut bytes).map_err(|_| JournalError::Header(DecodeError::Tampered))?;
    if got < HEADER_LEN {
        // A crash while the journal was being created: nothing was appended yet.
        return Ok(());
    }
    let header = Header::parse(&bytes, protection).map_err(JournalError::Header)?;
    if header.kind() != FileKind::Journal {
        return Err(JournalError::Header(DecodeError::BadPayload("a snapshot where the journal belongs".into())));
    }
    if header.base() != snapshot_id {
        // Left by a crash after a compaction's rename: the snapshot holds its changes.
        return Ok(());
    }
    let sealer = Sealer::new(header, protection);
    let mut outcome = Ok(());
    {
        let mut frames = Frames::new(&file, HEADER_LEN as u64, len);
        loop {
            let next = frames.next(&sealer).map_err(|_| JournalError::Header(DecodeError::Tampered))?;
            let (offset, seq, record) = match next {
                Next::Record { offset, seq, record } => (offset, seq, record),
                Next::End | Next::Torn { .. } => break,
                Next::Corrupt { seq, at } => {
                    outcome = Err(JournalError::Record { seq, at, error: DecodeError::Tampered });
                    break;
                }
            };
            match Record::decode(record) {
                Ok(Record::Token(token)) => {
                    let key = Key::new(&token.client_id, &token.resource);
                    let entry = Entry {
                        loc: Loc::Journal { offset, seq },
                        expires_on: token.expires_on,
                        in_use: token.in_use,
                        written_by: token.written_by,
                    };
                    replay.put(key, entry);
                }
                Ok(Record::Removal(removal)) => replay.remove(&removal),
                Ok(Record::Account(account)) => merge_account(&mut replay.accounts, account.into_account()),
                Ok(Record::End { .. }) => {
                    outcome = Err(JournalError::Record {
                        seq,
                        at: offset,
                        error: DecodeError::BadPayload("an end record".into()),
                    });
                    break;
                }
                Err(error) => {
                    outcome = Err(JournalError::Record { seq, at: offset, error });
                    break;
                }
            }
        }
    }
    replay.journal = Some((file, sealer));
    outcome
}

/// Reads until `buffer` is full or the file ends; how many bytes were read.
fn read_up_to(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buffer.len() {
        match file.read(&mut buffer[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::tests::token;
    use super::super::{Cipher, HeldIdentity, HeldToken, PersistedToken, Protection, Store};
    use super::*;

    fn store(dir: &Path) -> FileStore {
        FileStore::new(&dir.join("tokens.cache"), Protection::Encrypted(Cipher::new(&[5; 32])), String::new())
    }

    /// A process's memory: tokens held as the broker holds them, in `Arc`s kept across saves.
    struct Memory {
        writer: u64,
        tokens: Vec<(Arc<String>, Arc<dyn HeldToken>, bool)>,
    }

    impl Memory {
        fn new(writer: u64) -> Self {
            Self { writer, tokens: Vec::new() }
        }

        /// Fetches (or refreshes) `resource`: a new token replaces the old one.
        fn fetch(&mut self, resource: &str, expires_on: u64, value: &str) {
            self.forget(resource);
            let token: Arc<dyn HeldToken> = Arc::new(token("app", resource, expires_on, value));
            self.tokens.push((Arc::new(resource.to_owned()), token, false));
        }

        fn forget(&mut self, resource: &str) {
            self.tokens.retain(|(r, ..)| r.as_str() != resource);
        }

        fn held(&self, max: usize) -> Held {
            let identity = HeldIdentity {
                name: "app".into(),
                client_id: "app".into(),
                credential: "client_secret".into(),
                tokens: self.tokens.clone(),
            };
            Held { identities: vec![identity], writer: self.writer, max_per_client: max }
        }

        fn save(&self, store: &FileStore) -> SaveReport {
            store.save(&self.held(usize::MAX), 100).unwrap()
        }
    }

    /// What a fresh process loads: `resource=token` pairs, sorted.
    fn loaded(dir: &Path) -> Vec<String> {
        let mut tokens: Vec<String> = store(dir)
            .load(OnUnreadable::Report)
            .unwrap()
            .tokens
            .iter()
            .map(|t| format!("{}={}", t.resource, t.token.token.expose()))
            .collect();
        tokens.sort();
        tokens
    }

    fn journal_of(dir: &Path) -> PathBuf {
        journal_path(&dir.join("tokens.cache"))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_save_appends_only_what_changed_and_a_restart_replays_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut memory = Memory::new(7);
        for i in 0..20 {
            memory.fetch(&format!("r{i:02}"), 5000, &format!("t{i}"));
        }
        let report = memory.save(&s);
        assert!(report.compacted, "the first save writes a snapshot");
        let snapshot = fs::read(s.path()).unwrap();
        assert_eq!(snapshot[8], records::VERSION);
        assert!(!journal_of(dir.path()).exists());

        memory.fetch("r03", 6000, "refreshed");
        memory.forget("r07");
        let report = memory.save(&s);
        assert_eq!(report, SaveReport { kept: 19, pruned: 0, dropped: 1, compacted: false });
        assert_eq!(fs::read(s.path()).unwrap(), snapshot, "the snapshot is not rewritten");
        let journal = fs::read(journal_of(dir.path())).unwrap();
        let one_token = (snapshot.len() - HEADER_LEN) / 21; // 20 tokens and the end record, roughly
        assert!(journal.len() < HEADER_LEN + 2 * one_token, "one token and one removal: {} bytes", journal.len());
        assert!(!journal.windows(9).any(|w| w == b"refreshed"), "the journal is encrypted");
        assert_eq!(memory.save(&s), SaveReport { kept: 19, ..SaveReport::default() }, "nothing changed");
        assert_eq!(fs::read(journal_of(dir.path())).unwrap(), journal, "nothing appended");

        let tokens = loaded(dir.path());
        assert_eq!(tokens.len(), 19);
        assert!(tokens.contains(&"r03=refreshed".to_owned()) && !tokens.iter().any(|t| t.starts_with("r07=")));
        assert_eq!(names(dir.path()), ["tokens.cache", "tokens.cache.journal", "tokens.cache.lock"]);
    }

    #[test]
    fn moving_a_token_into_use_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut memory = Memory::new(7);
        memory.fetch("r1", 5000, "t1");
        memory.save(&s);
        memory.tokens[0].2 = true;
        assert!(!memory.save(&s).compacted);
        let loaded = store(dir.path()).load_bounded(10, 100).unwrap();
        assert!(loaded.tokens[0].in_use);
    }

    #[test]
    fn a_torn_last_record_is_ignored_and_cut_off_by_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut memory = Memory::new(7);
        memory.fetch("r1", 5000, "t1");
        memory.save(&s);
        memory.fetch("r2", 5000, "t2");
        memory.save(&s);
        memory.fetch("r3", 5000, "t3");
        memory.save(&s);
        // A crash in the middle of the last append: part of its frame reached the disk.
        let journal = journal_of(dir.path());
        let bytes = fs::read(&journal).unwrap();
        fs::write(&journal, &bytes[..bytes.len() - 30]).unwrap();
        assert_eq!(loaded(dir.path()), ["r1=t1", "r2=t2"], "the torn record is ignored, not fatal");
        assert!(!names(dir.path()).iter().any(|n| n.contains("unreadable")));

        // The next append finds the journal shorter than it left it, and cuts the torn
        // record off before appending.
        memory.fetch("r4", 5000, "t4");
        assert!(!memory.save(&s).compacted);
        assert_eq!(loaded(dir.path()), ["r1=t1", "r2=t2", "r4=t4"]);
        memory.fetch("r5", 5000, "t5");
        assert!(!memory.save(&s).compacted);
        assert_eq!(loaded(dir.path()), ["r1=t1", "r2=t2", "r4=t4", "r5=t5"]);
    }

    #[test]
    fn the_journal_is_compacted_once_it_outgrows_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut memory = Memory::new(7);
        let value = "v".repeat(1500);
        for i in 0..100 {
            memory.fetch(&format!("r{i:03}"), 5000, &value);
        }
        memory.save(&s);
        let mut compactions = 0;
        for round in 0..400u64 {
            let i = round % 100;
            memory.fetch(&format!("r{i:03}"), 5001 + round, &format!("{round}{value}"));
            let report = memory.save(&s);
            compactions += usize::from(report.compacted);
            let snapshot = fs::metadata(s.path()).unwrap().len();
            let journal = fs::metadata(journal_of(dir.path())).map_or(0, |m| m.len());
            assert!(journal <= snapshot.max(JOURNAL_FLOOR), "round {round}: journal {journal}, snapshot {snapshot}");
        }
        assert!(compactions >= 2, "{compactions} compactions");
        let tokens = store(dir.path()).load(OnUnreadable::Report).unwrap().tokens;
        assert_eq!(tokens.len(), 100);
        assert!(tokens.iter().all(|t| t.token.expires_on >= 5301), "every token is the latest of its key");
    }

    #[test]
    fn a_crash_before_a_compactions_rename_leaves_the_old_files_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut memory = Memory::new(7);
        memory.fetch("r1", 5000, "t1");
        memory.save(&s);
        memory.fetch("r2", 5000, "t2");
        memory.save(&s);
        // A compaction that died before its rename: a half-written temporary file.
        let temporary = dir.path().join(".tokens.cache.tmp-4242-deadbeef");
        fs::write(&temporary, b"TOKENRLY\x02 half a snapshot").unwrap();
        assert_eq!(loaded(dir.path()), ["r1=t1", "r2=t2"]);
        // The next process's first save compacts and clears the debris.
        let restarted = store(dir.path());
        let mut memory = Memory::new(9);
        memory.fetch("r3", 5000, "t3");
        assert!(memory.save(&restarted).compacted);
        assert_eq!(loaded(dir.path()), ["r1=t1", "r2=t2", "r3=t3"]);
        assert_eq!(names(dir.path()), ["tokens.cache", "tokens.cache.lock"]);
    }

    #[test]
    fn a_journal_left_by_a_crash_after_a_compactions_rename_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut memory = Memory::new(7);
        let s = store(dir.path());
        memory.fetch("r1", 5000, "t1");
        memory.save(&s);
        memory.fetch("r4", 5000, "t4");
        memory.save(&s);
        let journal = fs::read(journal_of(dir.path())).unwrap(); // holds r4
        memory.forget("r4");
        memory.save(&s);
        assert_eq!(loaded(dir.path()), ["r1=t1"]);

        // The process restarts and compacts; it dies after the rename, before removing the
        // journal: the journal that put r4 is back beside the new snapshot.
        let restarted = store(dir.path());
        assert!(memory.save(&restarted).compacted);
        fs::write(journal_of(dir.path()), &journal).unwrap();
        assert_eq!(loaded(dir.path()), ["r1=t1"], "the removed token is not resurrected");
        memory.fetch("r2", 5000, "t2");
        assert!(memory.save(&restarted).compacted, "a journal of another snapshot is not appended to");
        assert_eq!(loaded(dir.path()), ["r1=t1", "r2=t2"]);
        assert_eq!(names(dir.path()), ["tokens.cache", "tokens.cache.lock"]);
    }

    #[test]
    fn removed_tokens_stay_removed_across_restarts_and_compactions() {
        let dir = tempfile::tempdir().unwrap();
        let mut memory = Memory::new(7);
        let s = store(dir.path());
        for r in ["r1", "r2", "r3"] {
            memory.fetch(r, 5000, r);
        }
        memory.save(&s);
        memory.forget("r2");
        assert_eq!(memory.save(&s).dropped, 1);
        assert_eq!(loaded(dir.path()), ["r1=r1", "r3=r3"]);
        memory.forget("r3");
        memory.save(&s);
        let restarted = store(dir.path());
        assert!(memory.save(&restarted).compacted);
        assert_eq!(loaded(dir.path()), ["r1=r1"]);

        // Another writer's token is not removed by this writer's removal of the same key.
        let mut other = Memory::new(8);
        other.fetch("r1", 6000, "theirs");
        let s8 = store(dir.path());
        s8.save(&other.held(usize::MAX), 100).unwrap();
        memory.forget("r1");
        memory.save(&restarted);
        assert_eq!(loaded(dir.path()), ["r1=theirs"]);
    }

    #[test]
    fn a_damaged_journal_record_sets_the_journal_aside_keeping_the_records_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut memory = Memory::new(7);
        let s = store(dir.path());
        memory.fetch("r1", 5000, "t1");
        memory.save(&s);
        memory.fetch("r2", 5000, "t2");
        memory.save(&s);
        memory.fetch("r3", 5000, "t3");
        memory.save(&s);
        let path = journal_of(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let frame = (bytes.len() - HEADER_LEN) / 2;
        bytes[HEADER_LEN + frame + 40] ^= 0x10; // inside r3's record, the last one: torn
        bytes[HEADER_LEN + 40] ^= 0x10; // inside r2's, with r3's after it: damage
        fs::write(&path, &bytes).unwrap();

        let error = store(dir.path()).load(OnUnreadable::Report).unwrap_err().to_string();
        assert!(error.contains("tokens.cache.journal") && error.contains("record 0 is damaged"), "{error}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "Report leaves it alone");
        let tokens = store(dir.path()).load(OnUnreadable::MoveAside).unwrap().tokens;
        assert_eq!(tokens.len(), 1, "the snapshot's token");
        let aside: Vec<String> =
            names(dir.path()).into_iter().filter(|n| n.starts_with("tokens.cache.journal.unreadable-")).collect();
        assert_eq!(aside.len(), 1, "{:?}", names(dir.path()));
        assert_eq!(fs::read(dir.path().join(&aside[0])).unwrap(), bytes, "kept byte for byte");

        // The next save writes everything memory holds.
        memory.fetch("r4", 5000, "t4");
        assert!(memory.save(&s).compacted);
        assert_eq!(loaded(dir.path()), ["r1=t1", "r2=t2", "r3=t3", "r4=t4"]);
    }

    #[test]
    fn a_damaged_snapshot_is_set_aside_with_its_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut memory = Memory::new(7);
        let s = store(dir.path());
        memory.fetch("r1", 5000, "t1");
        memory.save(&s);
        memory.fetch("r2", 5000, "t2");
        memory.save(&s);
        let mut bytes = fs::read(s.path()).unwrap();
        bytes.truncate(bytes.len() - 10); // the end record is cut
        fs::write(s.path(), &bytes).unwrap();
        let error = store(dir.path()).load(OnUnreadable::Report).unwrap_err().to_string();
        assert!(error.contains("truncated, damaged or tampered with"), "{error}");
        assert!(store(dir.path()).load(OnUnreadable::MoveAside).unwrap().tokens.is_empty());
        let names = names(dir.path());
        assert!(names.iter().any(|n| n.starts_with("tokens.cache.unreadable-")), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("tokens.cache.journal.unreadable-")), "{names:?}");
    }

    #[test]
    fn a_version_1_file_is_read_and_replaced_by_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let old = vec![token("app", "r1", 5000, "t1"), token("app", "r2", 5000, "t2")];
        let snapshot = Snapshot { tokens: old, accounts: Vec::new() };
        let protection = Protection::Encrypted(Cipher::new(&[5; 32]));
        fs::write(dir.path().join("tokens.cache"), format::encode(&snapshot, &protection, 1)).unwrap();
        assert_eq!(loaded(dir.path()), ["r1=t1", "r2=t2"]);
        let s = store(dir.path());
        let bounded = s.load_bounded(10, 100).unwrap();
        let mut memory = Memory::new(7);
        for t in bounded.tokens {
            memory.fetch(&t.resource.clone(), t.token.expires_on, t.token.token.expose());
        }
        assert!(memory.save(&s).compacted);
        assert_eq!(fs::read(s.path()).unwrap()[8], records::VERSION);
        assert_eq!(loaded(dir.path()), ["r1=t1", "r2=t2"]);
    }

    #[test]
    fn a_save_keeps_what_memory_holds_and_drops_what_this_writer_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let (s7, s8) = (store(dir.path()), store(dir.path()));
        let mut seven = Memory::new(7);
        for r in ["r1", "r2", "r3"] {
            seven.fetch(r, 5000, r);
        }
        seven.save(&s7);
        seven.forget("r1");
        seven.fetch("r4", 5000, "r4");
        seven.save(&s7);
        assert_eq!(loaded(dir.path()), ["r2=r2", "r3=r3", "r4=r4"]);

        // Another process (writer 8) sharing the file and the identity keeps writer 7's
        // tokens, and writer 7 keeps its: neither holds the other's.
        let mut eight = Memory::new(8);
        eight.fetch("x1", 5000, "x1");
        let report = eight.save(&s8);
        assert_eq!((report.kept, report.dropped), (4, 0));
        seven.forget("r3");
        seven.forget("r4");
        seven.save(&s7);
        assert_eq!(loaded(dir.path()), ["r2=r2", "x1=x1"], "7 drops only what it evicted");

        // Expired tokens go whoever wrote them; tokens of client ids not served stay.
        let other_client = vec![token("b", "kept", 5000, "k"), token("app", "old", 150, "o")];
        store(dir.path()).save(&Held::from_tokens(other_client, 9, 100), 100).unwrap();
        let report = store(dir.path()).save(&seven.held(100), 200).unwrap();
        assert!(report.compacted);
        assert_eq!(report.pruned, 1);
        assert_eq!(loaded(dir.path()), ["kept=k", "r2=r2", "x1=x1"]);
    }

    #[test]
    fn a_token_expiring_implausibly_far_ahead_never_displaces_the_one_memory_holds() {
        let dir = tempfile::tempdir().unwrap();
        let forged = vec![token("app", "r1", 100 + super::super::MAX_PLAUSIBLE_LIFETIME + 1, "forged")];
        let protection = Protection::Encrypted(Cipher::new(&[5; 32]));
        let snapshot = Snapshot { tokens: forged, accounts: Vec::new() };
        fs::write(dir.path().join("tokens.cache"), format::encode(&snapshot, &protection, 1)).unwrap();
        let mut memory = Memory::new(7);
        memory.fetch("r1", 5000, "genuine");
        let report = memory.save(&store(dir.path()));
        assert_eq!((report.kept, report.pruned, report.compacted), (1, 1, true));
        assert_eq!(loaded(dir.path()), ["r1=genuine"]);
    }

    #[test]
    fn a_compaction_bounds_each_client_id_preferring_what_memory_holds() {
        let dir = tempfile::tempdir().unwrap();
        // A file from a release without the bound: 50 tokens of client app, by another writer.
        let old: Vec<PersistedToken> = (0..50).map(|i| token("app", &format!("old{i:02}"), 9000 + i, "o")).collect();
        store(dir.path()).save(&Held::from_tokens(old, 0, usize::MAX), 100).unwrap();
        // This process holds 3 (expiring before all of them) and allows 5 per client id.
        let mut memory = Memory::new(7);
        for r in ["m1", "m2", "m3"] {
            memory.fetch(r, 5000, r);
        }
        let report = store(dir.path()).save(&memory.held(5), 100).unwrap();
        assert_eq!(report, SaveReport { kept: 5, pruned: 0, dropped: 48, compacted: true });
        let resources: Vec<String> =
            loaded(dir.path()).iter().map(|t| t.split('=').next().unwrap().to_owned()).collect();
        assert_eq!(resources, ["m1", "m2", "m3", "old48", "old49"], "held first, then the freshest");
    }
}
