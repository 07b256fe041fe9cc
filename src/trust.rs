//! Files another local user could have planted: the cache file, its lock file and the key
//! file are used only when the running user (or, for the key file, root) owns them and no
//! one else can write them.
//!
//! In a directory other users can write to, such as a sticky `/tmp`, anyone can create
//! `tokens.cache` or `tokens.cache.lock` before tokenrelay does. A planted plaintext cache
//! would be served as tokens, a planted lock held open would stall every start-up, a planted
//! symbolic link would be followed. So names are opened with `O_NOFOLLOW` (and `O_NONBLOCK`,
//! so a planted FIFO cannot block the open) and the checks run on the opened descriptor
//! (`fstat`), never on the path, which could be swapped between a check and an open.

use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::path::Path;

/// Why a file is not trusted. Shown to the operator with the file's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Untrusted {
    /// The name is a symbolic link; it was not followed.
    Symlink,
    /// A FIFO, socket, device or directory where a regular file belongs.
    NotRegular { uid: u32, mode: u32 },
    /// Owned by a user tokenrelay does not run as.
    Owner { uid: u32, euid: u32, mode: u32 },
    /// Writable by the group or by everyone, so others can change what it holds.
    Writable { uid: u32, mode: u32 },
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Symlink => f.write_str("is a symbolic link"),
            Self::NotRegular { uid, mode } => {
                write!(f, "is not a regular file (owner uid {uid}, mode {:o})", mode & 0o177_777)
            }
            Self::Owner { uid, euid, mode } => write!(
                f,
                "is owned by uid {uid}, not by uid {euid} that tokenrelay runs as (mode {:04o})",
                mode & 0o7777
            ),
            Self::Writable { uid, mode } => {
                write!(f, "is writable by other users (owner uid {uid}, mode {:04o})", mode & 0o7777)
            }
        }
    }
}

/// What opening a file that must be trusted found.
#[derive(Debug)]
pub enum Opened {
    /// Opened, and the descriptor passed the checks.
    Trusted(File),
    /// There is a file, and it is not trusted; the descriptor (if one was opened) is closed.
    /// `identity` is the device and inode it was judged by, when known, so that whoever
    /// moves it aside can make sure the name still refers to that file.
    Refused { why: Untrusted, identity: Option<(u64, u64)> },
    /// Any other failure, such as `NotFound`.
    Failed(std::io::Error),
}

/// Who may own a trusted file besides the running user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owners {
    /// The running user only: files tokenrelay creates and replaces itself.
    RunningUser,
    /// The running user or root: files the platform provides, such as a key mounted from a
    /// Kubernetes Secret (owned by root, readable through the pod's group).
    RunningUserOrRoot,
}

/// The effective user id of this process.
#[cfg(unix)]
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Checks the metadata of an opened file: a regular file, owned as `owners` allows and not
/// writable by group or others.
#[cfg(unix)]
pub fn check(metadata: &Metadata, euid: u32, owners: Owners) -> Result<(), Untrusted> {
    use std::os::unix::fs::MetadataExt;
    let (uid, mode) = (metadata.uid(), metadata.mode());
    if !metadata.file_type().is_file() {
        return Err(Untrusted::NotRegular { uid, mode });
    }
    let owner_ok = uid == euid || (owners == Owners::RunningUserOrRoot && uid == 0);
    if !owner_ok {
        return Err(Untrusted::Owner { uid, euid, mode });
    }
    if mode & 0o022 != 0 {
        return Err(Untrusted::Writable { uid, mode });
    }
    Ok(())
}

/// Opens `path` with `options` without following a symbolic link in its last component and
/// without blocking on a FIFO, then checks the descriptor.
#[cfg(unix)]
pub fn open(path: &Path, options: &mut OpenOptions, owners: Owners) -> Opened {
    open_with(path, options, owners, rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK)
}

/// [`open`], following symbolic links: for a file the operator names and the platform may
/// provide through links, such as a Kubernetes Secret's `key -> ..data/key`. What is checked
/// is the file finally opened.
#[cfg(unix)]
pub fn open_following(path: &Path, options: &mut OpenOptions, owners: Owners) -> Opened {
    open_with(path, options, owners, rustix::fs::OFlags::NONBLOCK)
}

#[cfg(unix)]
fn open_with(path: &Path, options: &mut OpenOptions, owners: Owners, flags: rustix::fs::OFlags) -> Opened {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = match options.custom_flags(flags.bits() as i32).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Opened::Failed(error),
        Err(error) => {
            // Not opened, so nothing was read from it; the name's metadata only explains why:
            // a symbolic link (ELOOP under O_NOFOLLOW), a file of another user with mode 0600
            // (EACCES), a directory (EISDIR). An error on a file that passes is passed on.
            let following = !flags.contains(rustix::fs::OFlags::NOFOLLOW);
            let metadata = if following { std::fs::metadata(path) } else { std::fs::symlink_metadata(path) };
            return match metadata {
                Ok(metadata) if metadata.file_type().is_symlink() => {
                    Opened::Refused { why: Untrusted::Symlink, identity: Some((metadata.dev(), metadata.ino())) }
                }
                Ok(metadata) => match check(&metadata, euid(), owners) {
                    Err(why) => Opened::Refused { why, identity: Some((metadata.dev(), metadata.ino())) },
                    Ok(()) => Opened::Failed(error),
                },
                Err(_) => Opened::Failed(error),
            };
        }
    };
    let metadata = match file.metadata() {
        Ok(metadata) => metadata,
        Err(error) => return Opened::Failed(error),
    };
    match check(&metadata, euid(), owners) {
        Ok(()) => Opened::Trusted(file),
        Err(why) => Opened::Refused { why, identity: Some((metadata.dev(), metadata.ino())) },
    }
}

/// The device and inode `path` names now, without following a symbolic link.
#[cfg(unix)]
pub fn identity_of_name(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether the file's group or others may read it (for a warning: such a key is not
/// planted, but it is not secret either).
#[cfg(unix)]
pub fn readable_by_others(metadata: &Metadata) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    (metadata.mode() & 0o044 != 0).then(|| (metadata.uid(), metadata.mode()))
}

/// Without Unix user ids, no one is anyone else.
#[cfg(not(unix))]
pub fn euid() -> u32 {
    0
}

/// Without Unix ownership and modes there is nothing to check.
#[cfg(not(unix))]
pub fn open(path: &Path, options: &mut OpenOptions, _owners: Owners) -> Opened {
    match options.open(path) {
        Ok(file) => Opened::Trusted(file),
        Err(error) => Opened::Failed(error),
    }
}

#[cfg(not(unix))]
pub fn open_following(path: &Path, options: &mut OpenOptions, owners: Owners) -> Opened {
    open(path, options, owners)
}

#[cfg(not(unix))]
pub fn identity_of_name(_path: &Path) -> Option<(u64, u64)> {
    None
}

#[cfg(not(unix))]
pub fn readable_by_others(_metadata: &Metadata) -> Option<(u32, u32)> {
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A uid no test process runs as (`nobody` on Debian).
    pub(crate) const OTHER_UID: u32 = 65534;

    /// Gives `path` to [`OTHER_UID`]. Only root may: the tests that call it are ignored by a
    /// plain `cargo test` and run with `--ignored` (`scripts/dev privileged`).
    pub(crate) fn give_away(path: &Path) {
        std::os::unix::fs::lchown(path, Some(OTHER_UID), Some(OTHER_UID)).unwrap_or_else(|error| {
            panic!("cannot chown {} to uid {OTHER_UID} (this test needs root): {error}", path.display())
        });
    }

    fn read() -> OpenOptions {
        let mut options = OpenOptions::new();
        options.read(true);
        options
    }

    fn refused(opened: Opened) -> Untrusted {
        match opened {
            Opened::Refused { why, .. } => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_private_file_of_the_running_user_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(open(&path, &mut read(), Owners::RunningUser), Opened::Trusted(_)));
    }

    #[test]
    fn a_file_writable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        for mode in [0o666, 0o620, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let why = refused(open(&path, &mut read(), Owners::RunningUserOrRoot));
            assert_eq!(why, Untrusted::Writable { uid: euid(), mode: 0o100_000 | mode });
            assert!(why.to_string().contains(&format!("mode {mode:04o}")), "{why}");
        }
    }

    #[test]
    #[ignore = "needs root: gives a file to another user (docs/testing.md#privileges)"]
    fn a_file_of_another_user_is_refused_unless_root_may_own_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        give_away(&path);
        let why = refused(open(&path, &mut read(), Owners::RunningUser));
        assert_eq!(why, Untrusted::Owner { uid: OTHER_UID, euid: euid(), mode: 0o100_600 });
        let text = why.to_string();
        assert!(text.contains("uid 65534") && text.contains("mode 0600"), "{text}");

        // Root owning it is fine where root may (when tokenrelay runs as root, root is also
        // the running user).
        if euid() == 0 {
            std::os::unix::fs::lchown(&path, Some(0), Some(0)).unwrap();
            assert!(matches!(open(&path, &mut read(), Owners::RunningUserOrRoot), Opened::Trusted(_)));
        }
    }

    #[test]
    fn a_symbolic_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut create = OpenOptions::new();
        create.read(true).write(true).create(true).truncate(false);
        let Opened::Refused { why, identity } = open(&link, &mut create, Owners::RunningUser) else {
            panic!("followed")
        };
        assert_eq!(why, Untrusted::Symlink);
        assert_eq!(identity, identity_of_name(&link), "judged by the link itself");
    }

    #[test]
    fn a_directory_where_a_file_belongs_is_refused_even_when_it_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        std::fs::create_dir(&path).unwrap();
        let mut write = OpenOptions::new();
        write.read(true).write(true).create(true).truncate(false);
        // Opening a directory for writing fails (EISDIR); for reading it succeeds.
        for options in [&mut write, &mut read()] {
            let why = refused(open(&path, options, Owners::RunningUser));
            assert!(matches!(why, Untrusted::NotRegular { .. }), "{why:?}");
        }
    }

    #[test]
    fn a_fifo_neither_blocks_nor_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo").arg(&path).status().expect("mkfifo (coreutils) runs");
        assert!(status.success(), "mkfifo {}: {status}", path.display());
        // A blocking open for reading would wait for a writer for ever.
        let why = refused(open(&path, &mut read(), Owners::RunningUser));
        assert!(matches!(why, Untrusted::NotRegular { .. }), "{why:?}");
    }
}
