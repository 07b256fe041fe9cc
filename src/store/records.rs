//! The record layout (format version 2) of the cache file and of its journal: a header, then
//! a sequence of frames, each holding one record sealed on its own. A file is written and read
//! one record at a time, so neither a save nor a load needs a buffer the size of the file.
//!
//! ```text
//! header, 51 bytes
//! offset  size  field
//!      0     8  magic "TOKENRLY"
//!      8     1  format version (2)
//!      9     1  protection: 0 plaintext, 1 AES-256-GCM
//!     10     8  key id, as in version 1; zero in plaintext
//!     18     1  kind: 0 snapshot (the cache file), 1 journal (`<file>.journal`)
//!     19    16  file id, random, fresh for every file written
//!     35    16  base id: for a journal, the file id of the snapshot it follows; zero otherwise
//!
//! then frames, until the end of the file
//!      0     4  n, the length of what follows (little-endian)
//!      4    12  nonce, random per frame; zero in plaintext
//!     16  n-28  the record, AES-256-GCM-sealed; plaintext without a key
//!   n-12    16  the tag; in plaintext the first 16 bytes of SHA-256(associated data || record)
//! ```
//!
//! A frame's associated data is the whole header followed by the frame's sequence number in its
//! file (u64, little-endian, counting from 0): a frame cannot be moved to another position or
//! another file, and a journal cannot be applied to another snapshot, without failing
//! authentication. The records of one file are sealed with a key of that file alone,
//! HKDF-SHA256(key, salt = file id, info = "tokenrelay cache records"), so the 2^32 limit on
//! random 96-bit nonces applies per file (a snapshot holds one frame per token), not to
//! the key's whole life.
//!
//! A record is one kind byte followed by JSON: 1 a token (the members of version 1's tokens),
//! 2 a removal (`client_id`, `resource`, `written_by`), 3 a signed-in user's refresh token
//! (version 1's accounts), 4 the end of a snapshot (`records`: how many frames precede it).
//! A snapshot always ends with its end record, so a truncated snapshot is detected; a
//! journal has none, since it only ever grows by appends.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read};
use zeroize::Zeroize;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::format::{self, DecodeError, Protection, StoredAccount, StoredToken};

/// The record layout's format version.
pub const VERSION: u8 = 2;
/// Length of a file id.
pub const ID_LEN: usize = 16;
/// Length of the header.
pub const HEADER_LEN: usize = 8 + 1 + 1 + format::KEY_ID_LEN + 1 + ID_LEN + ID_LEN;
const TAG_LEN: usize = 16;
/// The largest frame read. A token record is about 2 KB; this bounds what a damaged length
/// field can make a reader allocate.
pub const MAX_FRAME: usize = 1 << 20;
const MIN_FRAME: usize = NONCE_LEN + TAG_LEN + 1;

const TOKEN: u8 = 1;
const REMOVAL: u8 = 2;
const ACCOUNT: u8 = 3;
const END: u8 = 4;

/// Which file a header starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// The cache file: every token, then an end record.
    Snapshot,
    /// `<file>.journal`: changes since the snapshot whose id it names.
    Journal,
}

/// A file's header.
#[derive(Clone, Copy)]
pub struct Header([u8; HEADER_LEN]);

impl Header {
    /// A header for a new file with a fresh random id.
    pub fn new(kind: FileKind, base: [u8; ID_LEN], protection: &Protection) -> Self {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[..8].copy_from_slice(format::MAGIC);
        bytes[8] = VERSION;
        if let Protection::Encrypted(cipher) = protection {
            bytes[9] = format::AES_256_GCM_ID;
            bytes[10..10 + format::KEY_ID_LEN].copy_from_slice(cipher.key_id());
        }
        bytes[18] = match kind {
            FileKind::Snapshot => 0,
            FileKind::Journal => 1,
        };
        SystemRandom::new().fill(&mut bytes[19..19 + ID_LEN]).expect("the system random source works");
        bytes[19 + ID_LEN..].copy_from_slice(&base);
        Self(bytes)
    }

    /// Checks a header read from a file against the configured protection.
    pub fn parse(bytes: &[u8], protection: &Protection) -> Result<Self, DecodeError> {
        if bytes.len() < 8 {
            return Err(DecodeError::Truncated(bytes.len()));
        }
        if bytes[..8] != format::MAGIC[..] {
            return Err(DecodeError::NotACacheFile);
        }
        if bytes.len() < 9 {
            return Err(DecodeError::Truncated(bytes.len()));
        }
        if bytes[8] != VERSION {
            return Err(DecodeError::UnknownVersion(bytes[8]));
        }
        if bytes.len() < HEADER_LEN {
            // Too short for any record: whatever was written of it was cut off.
            return Err(DecodeError::Tampered);
        }
        match (bytes[9], protection) {
            (format::PLAINTEXT, Protection::Plaintext) => {}
            (format::PLAINTEXT, Protection::Encrypted(_)) => return Err(DecodeError::UnexpectedPlaintext),
            (format::AES_256_GCM_ID, Protection::Plaintext) => return Err(DecodeError::NoKey),
            (format::AES_256_GCM_ID, Protection::Encrypted(cipher)) => {
                if bytes[10..10 + format::KEY_ID_LEN] != cipher.key_id()[..] {
                    return Err(DecodeError::WrongKey);
                }
            }
            (other, _) => return Err(DecodeError::UnknownProtection(other)),
        }
        if bytes[18] > 1 {
            return Err(DecodeError::BadPayload(format!("unknown file kind {}", bytes[18])));
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&bytes[..HEADER_LEN]);
        Ok(Self(header))
    }

    /// The kind of file.
    pub fn kind(&self) -> FileKind {
        if self.0[18] == 0 { FileKind::Snapshot } else { FileKind::Journal }
    }

    /// This file's id.
    pub fn id(&self) -> [u8; ID_LEN] {
        self.0[19..19 + ID_LEN].try_into().expect("ID_LEN bytes")
    }

    /// For a journal, the id of the snapshot it follows.
    pub fn base(&self) -> [u8; ID_LEN] {
        self.0[19 + ID_LEN..].try_into().expect("ID_LEN bytes")
    }

    /// The bytes written at the start of the file.
    pub fn bytes(&self) -> &[u8; HEADER_LEN] {
        &self.0
    }
}

/// Seals and opens the frames of one file.
pub struct Sealer {
    header: Header,
    /// The file's own key; `None` in plaintext.
    key: Option<LessSafeKey>,
}

impl Sealer {
    /// The sealer of the file that `header` starts.
    pub fn new(header: Header, protection: &Protection) -> Self {
        let key = match protection {
            Protection::Plaintext => None,
            Protection::Encrypted(cipher) => {
                let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &header.id()).extract(cipher.secret());
                let info: [&[u8]; 1] = [b"tokenrelay cache records"];
                let okm = prk.expand(&info, &AES_256_GCM).expect("HKDF-SHA256 can expand to an AES-256 key");
                Some(LessSafeKey::new(UnboundKey::from(okm)))
            }
        };
        Self { header, key }
    }

    /// The header of the file this sealer writes or reads.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn aad(&self, seq: u64) -> [u8; HEADER_LEN + 8] {
        let mut aad = [0u8; HEADER_LEN + 8];
        aad[..HEADER_LEN].copy_from_slice(&self.header.0);
        aad[HEADER_LEN..].copy_from_slice(&seq.to_le_bytes());
        aad
    }

    /// Appends the frame of record `seq`, holding `record` (a kind byte and JSON), to `out`.
    pub fn seal(&self, seq: u64, record: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let frame_len = u32::try_from(NONCE_LEN + record.len() + TAG_LEN).expect("a record is far below 4 GiB");
        out.extend_from_slice(&frame_len.to_le_bytes());
        let aad = self.aad(seq);
        match &self.key {
            None => {
                out.extend_from_slice(&[0u8; NONCE_LEN]);
                out.extend_from_slice(record);
                out.extend_from_slice(&checksum(&aad, record));
            }
            Some(key) => {
                let mut nonce = [0u8; NONCE_LEN];
                SystemRandom::new().fill(&mut nonce).expect("the system random source works");
                out.extend_from_slice(&nonce);
                let body = out.len();
                out.extend_from_slice(record);
                let tag = key
                    .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut out[body..])
                    .expect("AES-256-GCM sealing of an in-memory buffer cannot fail");
                out.extend_from_slice(tag.as_ref());
            }
        }
        debug_assert_eq!(out.len() - start, 4 + frame_len as usize);
    }

    /// Opens frame `seq` (what follows its length field), in place; `None` when it does not
    /// authenticate.
    pub fn open<'b>(&self, seq: u64, frame: &'b mut [u8]) -> Option<&'b [u8]> {
        if frame.len() < MIN_FRAME {
            return None;
        }
        let aad = self.aad(seq);
        let (nonce, body) = frame.split_at_mut(NONCE_LEN);
        match &self.key {
            None => {
                let (record, tag) = body.split_at(body.len() - TAG_LEN);
                (nonce.iter().all(|&b| b == 0) && checksum(&aad, record) == tag).then_some(record)
            }
            Some(key) => {
                let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
                key.open_in_place(nonce, Aad::from(&aad), body).ok().map(|record| &*record)
            }
        }
    }
}

/// The integrity check of a plaintext frame: it detects a torn or damaged frame, not a forged
/// one (whoever can write a plaintext file can write any token into it).
fn checksum(aad: &[u8], record: &[u8]) -> [u8; TAG_LEN] {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(aad);
    context.update(record);
    let mut sum = [0u8; TAG_LEN];
    sum.copy_from_slice(&context.finish().as_ref()[..TAG_LEN]);
    sum
}

/// A removal: the token of (`client_id`, `resource`) goes, if `written_by` wrote it.
#[derive(Deserialize, Serialize)]
pub struct Removal<'a> {
    #[serde(borrow)]
    pub client_id: Cow<'a, str>,
    #[serde(borrow)]
    pub resource: Cow<'a, str>,
    pub written_by: u64,
}

#[derive(Deserialize, Serialize)]
struct End {
    records: u64,
}

/// One record, its strings borrowed from the opened frame or from memory.
pub enum Record<'a> {
    /// A token, replacing the one of its key unless that one expires later.
    Token(StoredToken<'a>),
    /// A token dropped from memory by its writer.
    Removal(Removal<'a>),
    /// A signed-in user's refresh token.
    Account(StoredAccount<'a>),
    /// The end of a snapshot: `records` frames precede it.
    End { records: u64 },
}

impl Record<'_> {
    /// The record's bytes (kind byte and JSON) into `out`, cleared first.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        let written = match self {
            Self::Token(token) => {
                out.push(TOKEN);
                serde_json::to_writer(&mut *out, token)
            }
            Self::Removal(removal) => {
                out.push(REMOVAL);
                serde_json::to_writer(&mut *out, removal)
            }
            Self::Account(account) => {
                out.push(ACCOUNT);
                serde_json::to_writer(&mut *out, account)
            }
            Self::End { records } => {
                out.push(END);
                serde_json::to_writer(&mut *out, &End { records: *records })
            }
        };
        written.expect("a record of strings and integers always serialises");
    }

    /// Parses an opened record. serde_json's messages name positions and expected types,
    /// never the input's text.
    pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
        let bad = |e: serde_json::Error| DecodeError::BadPayload(e.to_string());
        let (&kind, json) = bytes.split_first().ok_or_else(|| DecodeError::BadPayload("an empty record".into()))?;
        match kind {
            TOKEN => serde_json::from_slice(json).map(Record::Token).map_err(bad),
            REMOVAL => serde_json::from_slice(json).map(Record::Removal).map_err(bad),
            ACCOUNT => serde_json::from_slice(json).map(Record::Account).map_err(bad),
            END => serde_json::from_slice::<End>(json).map(|e| Record::End { records: e.records }).map_err(bad),
            other => Err(DecodeError::BadPayload(format!("unknown record kind {other}"))),
        }
    }
}

/// What reading the next frame found.
pub enum Next<'a> {
    /// A frame that authenticated: its offset in the file (of its length field) and record.
    Record { offset: u64, seq: u64, record: &'a [u8] },
    /// The end of the file, after a whole frame.
    End,
    /// The last frame is incomplete or does not authenticate, and nothing follows it: a write
    /// that a crash or a full disk interrupted. Whole frames end at `at`.
    Torn { at: u64 },
    /// A frame that does not authenticate (or has an impossible length) with more of the file
    /// after it: damage, not an interrupted append.
    Corrupt { at: u64, seq: u64 },
}

/// Reads the frames of a file one at a time, through a small buffer.
pub struct Frames<'f> {
    reader: io::BufReader<&'f File>,
    offset: u64,
    file_len: u64,
    seq: u64,
    frame: Vec<u8>,
}

impl<'f> Frames<'f> {
    /// Frames from `offset` (after the header) of `file`, which is `file_len` bytes long, the
    /// first numbered `seq`. The file is read from its current position, which must be
    /// `offset`.
    pub fn new(file: &'f File, offset: u64, file_len: u64) -> Self {
        Self { reader: io::BufReader::with_capacity(64 * 1024, file), offset, file_len, seq: 0, frame: Vec::new() }
    }

    /// The next frame.
    pub fn next(&mut self, sealer: &Sealer) -> io::Result<Next<'_>> {
        let at = self.offset;
        let remaining = self.file_len - at;
        if remaining == 0 {
            return Ok(Next::End);
        }
        if remaining < 4 {
            return Ok(Next::Torn { at });
        }
        let mut len = [0u8; 4];
        self.reader.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        let end = at + 4 + len as u64;
        let damaged = |end: u64, seq: u64| {
            if end >= self.file_len { Next::Torn { at } } else { Next::Corrupt { at, seq } }
        };
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) || end > self.file_len {
            return Ok(damaged(end, self.seq));
        }
        self.frame.resize(len, 0);
        self.reader.read_exact(&mut self.frame)?;
        let seq = self.seq;
        let file_len = self.file_len;
        match sealer.open(seq, &mut self.frame) {
            Some(record) => {
                self.offset = end;
                self.seq += 1;
                // `record` borrows `self.frame`; the fields it needs were copied above.
                Ok(Next::Record { offset: at, seq, record })
            }
            None if end >= file_len => Ok(Next::Torn { at }),
            None => Ok(Next::Corrupt { at, seq }),
        }
    }
}

impl Drop for Frames<'_> {
    fn drop(&mut self) {
        // The buffer held decrypted tokens.
        self.frame.zeroize();
    }
}

/// Reads the frame at `offset` of `file` (numbered `seq`) into `buffer` and opens it.
pub fn read_at<'b>(
    file: &File,
    offset: u64,
    seq: u64,
    sealer: &Sealer,
    buffer: &'b mut Vec<u8>,
) -> Result<&'b [u8], DecodeError> {
    let mut len = [0u8; 4];
    read_exact_at(file, &mut len, offset).map_err(|_| DecodeError::Tampered)?;
    let len = u32::from_le_bytes(len) as usize;
    if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
        return Err(DecodeError::Tampered);
    }
    buffer.resize(len, 0);
    read_exact_at(file, buffer, offset + 4).map_err(|_| DecodeError::Tampered)?;
    sealer.open(seq, buffer).ok_or(DecodeError::Tampered)
}

/// Fills `buffer` from `offset` of `file` (`pread`), leaving the file's position alone.
#[cfg(unix)]
fn read_exact_at(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buffer, offset)
}

/// Fills `buffer` from `offset` of `file`. Windows' positioned read (`seek_read`) also moves
/// the file's position; that is harmless here, because a file is read at offsets only after
/// its frames were scanned, and appends seek to where they write.
#[cfg(windows)]
fn read_exact_at(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<()> {
    fill_at(buffer, offset, |part, at| std::os::windows::fs::FileExt::seek_read(file, part, at))
}

/// Fills `buffer` from `offset` with `read`, a positioned read that may return fewer bytes
/// than asked (as `ReadFile` does): the loop std's `read_exact_at` runs on Unix.
#[cfg(any(windows, test))]
fn fill_at(
    mut buffer: &mut [u8],
    mut offset: u64,
    mut read: impl FnMut(&mut [u8], u64) -> io::Result<usize>,
) -> io::Result<()> {
    while !buffer.is_empty() {
        match read(buffer, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buffer = &mut buffer[n..];
                offset += n as u64;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Cipher;

    fn frames_of(header: &Header, protection: &Protection, records: &[&[u8]]) -> Vec<u8> {
        let sealer = Sealer::new(*header, protection);
        let mut bytes = header.bytes().to_vec();
        for (seq, record) in records.iter().enumerate() {
            sealer.seal(seq as u64, record, &mut bytes);
        }
        bytes
    }

    /// The Windows positioned read loop, driven by a reader that hands out at most three
    /// bytes per call and is interrupted once, as `ReadFile` may be.
    #[test]
    fn a_positioned_read_is_completed_from_short_reads_and_stops_at_the_end() {
        let data: Vec<u8> = (0..32).collect();
        let mut interrupted = false;
        let mut read = |part: &mut [u8], at: u64| -> io::Result<usize> {
            if !interrupted {
                interrupted = true;
                return Err(io::ErrorKind::Interrupted.into());
            }
            let rest = data.get(at as usize..).unwrap_or(&[]);
            let n = part.len().min(3).min(rest.len());
            part[..n].copy_from_slice(&rest[..n]);
            Ok(n)
        };
        let mut buffer = [0u8; 10];
        fill_at(&mut buffer, 20, &mut read).unwrap();
        assert_eq!(buffer[..], data[20..30]);
        let past_the_end = fill_at(&mut buffer, 25, &mut read).unwrap_err();
        assert_eq!(past_the_end.kind(), io::ErrorKind::UnexpectedEof);
        let failing = fill_at(&mut buffer, 0, |_, _| Err(io::ErrorKind::PermissionDenied.into())).unwrap_err();
        assert_eq!(failing.kind(), io::ErrorKind::PermissionDenied);
    }

    fn read_all(bytes: &[u8], protection: &Protection) -> (Vec<Vec<u8>>, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        let mut file = File::open(&path).unwrap();
        let mut header = [0u8; HEADER_LEN];
        file.read_exact(&mut header).unwrap();
        let sealer = Sealer::new(Header::parse(&header, protection).unwrap(), protection);
        let mut frames = Frames::new(&file, HEADER_LEN as u64, bytes.len() as u64);
        let mut out = Vec::new();
        loop {
            match frames.next(&sealer).unwrap() {
                Next::Record { record, .. } => out.push(record.to_vec()),
                Next::End => return (out, "end".into()),
                Next::Torn { at } => return (out, format!("torn at {at}")),
                Next::Corrupt { at, seq } => return (out, format!("corrupt at {at} (record {seq})")),
            }
        }
    }

    #[test]
    fn frames_round_trip_and_hide_their_records() {
        for protection in [Protection::Encrypted(Cipher::new(&[7; 32])), Protection::Plaintext] {
            let header = Header::new(FileKind::Journal, [3; ID_LEN], &protection);
            let bytes = frames_of(&header, &protection, &[b"\x01first-secret", b"\x02second"]);
            let encrypted = matches!(protection, Protection::Encrypted(_));
            assert_eq!(!encrypted, bytes.windows(12).any(|w| w == b"first-secret"));
            let (records, end) = read_all(&bytes, &protection);
            assert_eq!(records, [b"\x01first-secret".to_vec(), b"\x02second".to_vec()]);
            assert_eq!(end, "end");
            let parsed = Header::parse(&bytes, &protection).unwrap();
            assert_eq!((parsed.kind(), parsed.base(), parsed.id()), (FileKind::Journal, [3; ID_LEN], header.id()));
        }
    }

    #[test]
    fn a_torn_last_frame_is_told_from_a_damaged_one_in_the_middle() {
        let protection = Protection::Encrypted(Cipher::new(&[7; 32]));
        let header = Header::new(FileKind::Journal, [0; ID_LEN], &protection);
        let bytes = frames_of(&header, &protection, &[b"\x01a", b"\x01b", b"\x01c"]);
        let frame = (bytes.len() - HEADER_LEN) / 3;
        let third = (HEADER_LEN + 2 * frame) as u64;
        for cut in [1, 4, 10, frame - 1] {
            let (records, end) = read_all(&bytes[..bytes.len() - cut], &protection);
            assert_eq!((records.len(), end), (2, format!("torn at {third}")), "cut {cut}");
        }
        let mut last_flipped = bytes.clone();
        *last_flipped.last_mut().unwrap() ^= 1;
        assert_eq!(read_all(&last_flipped, &protection).1, format!("torn at {third}"), "a final frame that fails");
        let mut middle = bytes.clone();
        middle[HEADER_LEN + frame + 20] ^= 1;
        let (records, end) = read_all(&middle, &protection);
        assert_eq!((records.len(), end), (1, format!("corrupt at {} (record 1)", HEADER_LEN + frame)));
        let mut swapped = bytes.clone();
        swapped[HEADER_LEN..HEADER_LEN + frame].copy_from_slice(&bytes[HEADER_LEN + frame..HEADER_LEN + 2 * frame]);
        assert!(read_all(&swapped, &protection).1.starts_with("corrupt at 51"), "frames cannot be reordered");
    }

    #[test]
    fn a_frame_of_another_file_or_key_does_not_open() {
        let protection = Protection::Encrypted(Cipher::new(&[7; 32]));
        let a = Header::new(FileKind::Journal, [0; ID_LEN], &protection);
        let b = Header::new(FileKind::Journal, [0; ID_LEN], &protection);
        let mut frame = Vec::new();
        Sealer::new(a, &protection).seal(0, b"\x01a", &mut frame);
        assert!(Sealer::new(b, &protection).open(0, &mut frame.clone()[4..]).is_none(), "another file");
        assert!(Sealer::new(a, &protection).open(1, &mut frame.clone()[4..]).is_none(), "another position");
        assert!(Sealer::new(a, &protection).open(0, &mut frame.clone()[4..]).is_some());
        let other = Protection::Encrypted(Cipher::new(&[8; 32]));
        assert_eq!(Header::parse(a.bytes(), &other).err(), Some(DecodeError::WrongKey));
        assert_eq!(Header::parse(a.bytes(), &Protection::Plaintext).err(), Some(DecodeError::NoKey));
    }

    proptest::proptest! {
        /// Whatever follows a header (damage, a forged file of the right owner), reading
        /// frames ends, without a panic and without reading past the file, and only frames
        /// that authenticate come out.
        #[test]
        fn any_bytes_after_a_header_read_as_frames_torn_or_corrupt(
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            records in 0usize..3,
            cut in 0usize..64,
        ) {
            let protection = Protection::Encrypted(Cipher::new(&[7; 32]));
            let header = Header::new(FileKind::Journal, [0; ID_LEN], &protection);
            let good: Vec<&[u8]> = [b"\x01a".as_slice(), b"\x01bb", b"\x01ccc"][..records].to_vec();
            let mut bytes = frames_of(&header, &protection, &good);
            bytes.truncate(bytes.len().saturating_sub(cut).max(HEADER_LEN));
            bytes.extend_from_slice(&tail);
            let (read, _) = read_all(&bytes, &protection);
            proptest::prop_assert!(read.len() <= records);
            for (got, expected) in read.iter().zip(&good) {
                proptest::prop_assert_eq!(got.as_slice(), *expected);
            }
        }
    }

    #[test]
    fn records_round_trip() {
        let mut bytes = Vec::new();
        Record::Removal(Removal { client_id: "c".into(), resource: "r".into(), written_by: 9 }).encode(&mut bytes);
        let Ok(Record::Removal(removal)) = Record::decode(&bytes) else { panic!("a removal") };
        assert_eq!((&*removal.client_id, &*removal.resource, removal.written_by), ("c", "r", 9));
        Record::End { records: 3 }.encode(&mut bytes);
        assert!(matches!(Record::decode(&bytes), Ok(Record::End { records: 3 })));
        assert!(Record::decode(b"\x09{}").is_err());
        assert!(Record::decode(b"").is_err());
    }
}
