//! A directory written and updated the way the kubelet projects a Secret, ConfigMap or
//! service-account token volume (its `AtomicWriter`, kubernetes `pkg/volume/util/atomic_writer.go`):
//!
//! ```text
//! <dir>/client-secret -> ..data/client-secret                  one relative symlink per key
//! <dir>/..data        -> ..2026_12_06_07_40_00.123456789       the current version
//! <dir>/..2026_12_06_07_40_00.123456789/client-secret          the real file (mode 0644)
//! ```
//!
//! An update never writes a visible path: it writes a new timestamped directory, creates the
//! symlinks of new keys, points a fresh `..data_tmp` symlink at the new directory, renames it
//! over `..data` (the one atomic step), removes the symlinks of keys that went away and then
//! the old directory. A reader holding the old directory's path afterwards finds nothing.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// A projected volume in a temporary directory.
pub struct ProjectedVolume {
    dir: tempfile::TempDir,
    /// Keys of the current version.
    keys: Vec<String>,
    /// Makes timestamped names unique within one second, as Go's `TempDir` suffix does.
    versions: u32,
}

impl ProjectedVolume {
    /// A volume holding `files` (key, content), as the kubelet sets it up for a pod.
    pub fn new(files: &[(&str, &[u8])]) -> Self {
        let mut volume = Self { dir: tempfile::tempdir().unwrap(), keys: Vec::new(), versions: 0 };
        volume.update(files);
        volume
    }

    /// The path an application is configured with: `<dir>/<key>`, a symlink through `..data`.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.path().join(key)
    }

    /// The timestamped directory `..data` points at now.
    pub fn current_version(&self) -> PathBuf {
        self.dir.path().join(std::fs::read_link(self.dir.path().join(DATA)).unwrap())
    }

    /// Replaces the whole payload with `files`, atomically for readers that resolve through
    /// `..data`, in the kubelet's order.
    pub fn update(&mut self, files: &[(&str, &[u8])]) {
        let root = self.dir.path();
        let old = std::fs::read_link(root.join(DATA)).ok().map(|name| root.join(name));

        // A new timestamped directory (0755 whatever the umask), with the payload (0644).
        self.versions += 1;
        let version = format!("..{}.{:09}", utc_timestamp(), self.versions);
        let version_dir = root.join(&version);
        std::fs::create_dir(&version_dir).unwrap();
        std::fs::set_permissions(&version_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (key, content) in files {
            let file = version_dir.join(key);
            std::fs::write(&file, content).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }

        // Visible symlinks for keys that are new; existing ones already go through `..data`.
        for (key, _) in files {
            let visible = root.join(key);
            if std::fs::symlink_metadata(&visible).is_err() {
                symlink(Path::new(DATA).join(key), &visible).unwrap();
            }
        }

        // The atomic step: `..data_tmp` -> new version, renamed over `..data`.
        symlink(&version, root.join(DATA_TMP)).unwrap();
        std::fs::rename(root.join(DATA_TMP), root.join(DATA)).unwrap();

        // Keys that went away, then the old version.
        let keys: Vec<String> = files.iter().map(|(key, _)| (*key).to_owned()).collect();
        for gone in self.keys.iter().filter(|key| !keys.contains(key)) {
            std::fs::remove_file(root.join(gone)).unwrap();
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(old).unwrap();
        }
        self.keys = keys;
    }
}

/// `2026_12_06_07_40_00`: the current UTC time as the kubelet names versions.
fn utc_timestamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}_{month:02}_{day:02}_{:02}_{:02}_{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[test]
fn the_layout_and_an_update_are_the_kubelets() {
    let mut volume = ProjectedVolume::new(&[("client-secret", &b"one"[..]), ("old-key", &b"x"[..])]);
    let visible = volume.path("client-secret");
    assert_eq!(std::fs::read_link(&visible).unwrap(), Path::new("..data/client-secret"));
    let first = volume.current_version();
    let name = first.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with("..20") && name.len() == "..2026_12_06_07_40_00.000000001".len(), "{name}");
    assert_eq!(std::fs::read(&visible).unwrap(), b"one");

    volume.update(&[("client-secret", &b"two"[..])]);
    assert_eq!(std::fs::read(&visible).unwrap(), b"two");
    assert_ne!(volume.current_version(), first);
    assert!(!first.exists(), "the old version is removed");
    assert!(std::fs::symlink_metadata(volume.path("old-key")).is_err(), "a key that went away is removed");
    assert!(std::fs::symlink_metadata(volume.path(DATA_TMP)).is_err());
    let mode = std::fs::metadata(&visible).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
}
