//! The small filesystem of [`super::Fault::DiskFull`]: a tmpfs mounted in
//! the round's folder (`mount -t tmpfs -o size=...`, which needs root), the
//! SQLite files on it, a filler file that takes every free byte for the
//! fault's duration and is then deleted. Unmounted after the round (also on
//! drop); the SQLite files of a failed round are copied out first.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The filler is written in these chunks, then in pages once the first
/// no longer fits, so that not even a page is left free.
const CHUNK_BYTES: usize = 1 << 20;
const PAGE_BYTES: usize = 4_096;
/// Bounds the filler whatever the filesystem says (the tmpfs is far smaller).
const MAX_FILLER_BYTES: u64 = 4 << 30;
const FILLER: &str = "filler";

/// Whether this process can mount a tmpfs (root, and `mount` present): tries
/// a 1 MiB one in a temp folder.
pub fn tmpfs_available() -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("concert-drill-tmpfs-probe-")
        .tempdir()
        .map_err(|err| format!("cannot create a temp folder: {err}"))?;
    let mut mount = TmpfsMount::mount(&dir.path().join("mnt"), 1)?;
    mount.unmount_now()
}

pub struct TmpfsMount {
    path: PathBuf,
    mounted: bool,
}

impl TmpfsMount {
    /// Creates `path` and mounts a tmpfs of `size_mib` MiB on it.
    pub fn mount(path: &Path, size_mib: u64) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|err| format!("cannot create {}: {err}", path.display()))?;
        let mut mount = Command::new("mount");
        mount
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_mib}m,mode=0700"))
            .arg("concert-drill")
            .arg(path);
        run(mount).map_err(|err| format!("cannot mount a tmpfs (root is needed): {err}"))?;
        Ok(Self {
            path: path.to_owned(),
            mounted: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the filesystem with a filler file, keeps it full for
    /// `duration`, deletes the filler. Returns what it did.
    pub async fn fill_for(&self, duration: Duration) -> Result<String, String> {
        let filler = self.path.join(FILLER);
        let path = filler.clone();
        let written = tokio::task::spawn_blocking(move || fill(&path))
            .await
            .map_err(|err| format!("the fill task failed: {err}"))??;
        tokio::time::sleep(duration).await;
        std::fs::remove_file(&filler).map_err(|err| format!("cannot delete the filler {}: {err}", filler.display()))?;
        Ok(format!(
            "filled the tmpfs with a {:.1} MiB filler (until ENOSPC), kept it full {:.1}s, deleted the filler",
            written as f64 / f64::from(1u32 << 20),
            duration.as_secs_f64()
        ))
    }

    /// Copies the SQLite files into `keep_in` (when given), then unmounts.
    pub async fn unmount(&mut self, keep_in: Option<&Path>) -> Result<(), String> {
        if let Some(dir) = keep_in {
            let kept = dir.join("sqlite-files");
            // Best effort: the copies only help a reader.
            let _ = std::fs::create_dir_all(&kept);
            if let Ok(entries) = std::fs::read_dir(&self.path) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if name != FILLER {
                        let _ = std::fs::copy(entry.path(), kept.join(name));
                    }
                }
            }
        }
        self.unmount_now()
    }

    fn unmount_now(&mut self) -> Result<(), String> {
        if !self.mounted {
            return Ok(());
        }
        let mut umount = Command::new("umount");
        umount.arg(&self.path);
        let result = run(umount).or_else(|err| {
            // Busy (a file still open): detach now, freed once closed.
            let mut lazy = Command::new("umount");
            lazy.arg("-l").arg(&self.path);
            run(lazy).map_err(|lazy_err| format!("{err}; umount -l: {lazy_err}"))
        });
        self.mounted = result.is_err();
        result
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        // Nothing to report from a drop: the mount must just not outlive us.
        let _ = self.unmount_now();
    }
}

/// Writes zeros to `path` until the filesystem says ENOSPC; returns the bytes written.
fn fill(path: &Path) -> Result<u64, String> {
    let mut file = File::create(path).map_err(|err| format!("cannot create {}: {err}", path.display()))?;
    let chunk = vec![0u8; CHUNK_BYTES];
    let mut written: u64 = 0;
    for size in [CHUNK_BYTES, PAGE_BYTES] {
        while written < MAX_FILLER_BYTES {
            match file.write(&chunk[..size]) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(err) if is_no_space(&err) => break,
                Err(err) => return Err(format!("writing {}: {err}", path.display())),
            }
        }
    }
    Ok(written)
}

fn is_no_space(err: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        err.raw_os_error() == Some(libc::ENOSPC)
    }
    #[cfg(not(unix))]
    {
        let _ = err;
        false
    }
}

fn run(mut command: Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run {shown}: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown} exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
