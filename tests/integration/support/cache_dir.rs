//! A test's persistent-cache directory: a key file and the cache file's location, shared by
//! the persistence tests and the persistence fault tests.

use std::path::PathBuf;

use base64::Engine;

use super::{FakeEntra, secret_config};

/// A test's cache directory with a fresh random key in `key`.
pub struct CacheDir {
    pub dir: tempfile::TempDir,
    pub key: [u8; 32],
}

impl CacheDir {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key: [u8; 32] = std::array::from_fn(|_| fastrand::u8(..));
        std::fs::write(dir.path().join("key"), base64::engine::general_purpose::STANDARD.encode(key)).unwrap();
        Self { dir, key }
    }

    /// The cache file (inside a subdirectory tokenrelay creates).
    pub fn file(&self) -> PathBuf {
        self.dir.path().join("cache/tokens.cache")
    }

    /// A configuration for `entra` persisting to this directory with its key.
    pub fn config(&self, entra: &FakeEntra, extra_identity: &str) -> String {
        self.config_with(entra, extra_identity, &format!("key_file = {:?}", self.dir.path().join("key")))
    }

    pub fn config_with(&self, entra: &FakeEntra, extra_identity: &str, persistence: &str) -> String {
        format!(
            "{}\n[cache.persistence]\nenabled = true\npath = {:?}\n{persistence}\n",
            secret_config(entra, extra_identity),
            self.file()
        )
    }

    pub fn config_file(&self, toml: &str) -> PathBuf {
        let path = self.dir.path().join("tokenrelay.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// Files beside the cache file that were moved aside.
    pub fn set_aside(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.file().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".unreadable-"))
            .collect()
    }
}
