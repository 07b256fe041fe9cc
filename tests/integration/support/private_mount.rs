//! A small tmpfs in a private mount namespace, for a persistence directory that is read-only
//! or full.
//!
//! The tests run as root, for whom permission bits change nothing (`chmod 500` does not stop
//! root writing), so the faults are made the way they happen in a pod: a file system that is
//! remounted read-only, and one of limited size that fills up. The mount lives in a namespace
//! of its own, invisible to the rest of the machine, held open by a sleeping process so that
//! several relays in turn (a restart) see the same files. The test reaches them from outside
//! through `/proc/<holder>/root`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// A tmpfs mounted over a directory inside a private mount namespace; gone when dropped.
pub struct PrivateMount {
    holder: Child,
    pid: String,
    dir: PathBuf,
}

impl PrivateMount {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) over `dir`, which must exist.
    /// The error says why that is not possible here (no `unshare`, no `CAP_SYS_ADMIN`), for
    /// the caller to skip with.
    pub async fn new(dir: &Path, size: &str) -> Result<Self, String> {
        let script = r#"mount -t tmpfs -o "size=$1,mode=0700" tokenrelay-test "$2" && echo mounted && exec sleep 600"#;
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh", size])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run unshare (util-linux): {e}"))?;
        let mut stdout = BufReader::new(holder.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), stdout.next_line()).await;
        if !matches!(&first, Ok(Ok(Some(line))) if line == "mounted") {
            let _ = holder.start_kill();
            let mut stderr = String::new();
            let _ = holder.stderr.take().unwrap().read_to_string(&mut stderr).await;
            let stderr = if first.is_err() { "no answer within 10 s" } else { stderr.trim() };
            return Err(format!("cannot mount a tmpfs in a private mount namespace: {stderr}"));
        }
        let pid = holder.id().expect("the holder runs").to_string();
        Ok(Self { holder, pid, dir: dir.to_owned() })
    }

    /// A command prefix that runs a program inside the namespace (`nsenter` execs it, so
    /// the process id stays the program's and signals reach it).
    pub fn wrapper(&self) -> Vec<String> {
        ["nsenter", "--target", &self.pid, "--mount", "--"].map(String::from).to_vec()
    }

    /// `path` inside the namespace, as reached from outside it.
    pub fn outside(&self, path: &Path) -> PathBuf {
        Path::new("/proc").join(&self.pid).join("root").join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Remounts the tmpfs read-only or writable again. A remount to read-only fails (EBUSY)
    /// while a file is open for writing, which a relay does for a moment on each write, so it
    /// is retried for a while.
    pub async fn set_read_only(&mut self, read_only: bool) {
        let options = if read_only { "remount,ro" } else { "remount,rw" };
        let mut last = String::new();
        for _ in 0..100 {
            let output = Command::new("nsenter")
                .args(["--target", &self.pid, "--mount", "--", "mount", "-o", options])
                .arg(&self.dir)
                .output()
                .await
                .expect("nsenter runs");
            if output.status.success() {
                return;
            }
            last = String::from_utf8_lossy(&output.stderr).into_owned();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(self.holder.try_wait().unwrap().is_none(), "the namespace holder is gone");
        panic!("mount -o {options} {} failed: {last}", self.dir.display());
    }

    /// Writes a file inside the mount until the file system is full; returns its path as
    /// reached from outside.
    pub fn fill(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let path = self.outside(&self.dir.join(name));
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        // Bounded, so a file system with no limit fails the test instead of filling the disk.
        for _ in 0..1024 {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::StorageFull => return path,
                Err(error) => panic!("filling {}: {error}", path.display()),
            }
        }
        panic!("{} did not fill up", path.display());
    }
}
