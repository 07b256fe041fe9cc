//! A test's persistent-cache directory: a key file and the cache file's location, shared by
//! the persistence tests and the persistence fault tests.

use std::path::PathBuf;

use base64::Engine;

use super::{ConfigText, FakeEntra, TestConfig, utf8};

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

    /// [`TestConfig::client_secret`] persisting to this directory, encrypted with its key.
    pub fn config(&self, entra: &FakeEntra) -> TestConfig {
        self.persisting(TestConfig::client_secret(entra)).set("cache.persistence.key_file", utf8(&self.key_file()))
    }

    /// `config` persisting to this directory's cache file, with no key chosen.
    pub fn persisting(&self, config: TestConfig) -> TestConfig {
        config.set("cache.persistence.enabled", true).set("cache.persistence.path", utf8(&self.file()))
    }

    /// The file holding this directory's key (base64).
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("key")
    }

    /// Writes `toml` as `tokenrelay.toml` in this directory and returns its path.
    pub fn config_file(&self, toml: &(impl ConfigText + ?Sized)) -> PathBuf {
        let path = self.dir.path().join("tokenrelay.toml");
        std::fs::write(&path, toml.config_text()).unwrap();
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
