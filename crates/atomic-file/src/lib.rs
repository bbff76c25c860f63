//! # atomic-file
//!
//! The one way files are written in this workspace: into a temporary sibling, flushed to disk,
//! renamed over the destination, and the folder flushed too. A crash or a `kill -9` at any point
//! leaves either the previous file or the complete new one, never a mix, and once a call returns
//! the new file survives a power cut (on file systems that honour `fsync`).
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("metrics.json");
//! atomic_file::write(&path, b"{}")?;
//! // Formats that write through a path (image encoders, burn's stores) get the temporary path.
//! atomic_file::write_with(&path, |tmp| std::fs::write(tmp, b"{\"fid\": 1}"))?;
//! assert_eq!(std::fs::read(&path)?, b"{\"fid\": 1}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Folders (training checkpoints) are written the same way with [`replace_dir`]: fill a
//! temporary folder from [`temp_path`], then swap it in.
//!
//! ## Feature flags
//! None.
#![warn(missing_docs)]

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// What went wrong in [`write_with`]: the caller's writer failed, or the file system did.
#[derive(Debug)]
pub enum Error<E> {
    /// The writer passed to [`write_with`] failed (the temporary file was removed).
    Write(E),
    /// Flushing, renaming or creating the folder failed.
    Io(io::Error),
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Write(e) => e.fmt(f),
            Self::Io(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for Error<E> {}

impl From<Error<io::Error>> for io::Error {
    fn from(e: Error<io::Error>) -> Self {
        match e {
            Error::Write(e) | Error::Io(e) => e,
        }
    }
}

/// The folder `path` lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// A fresh hidden sibling of `path` (`.NAME.tmp-PID-N`, plus `path`'s extension, so writers that
/// pick a format from the extension, like plotters', still do): same folder, so the final rename
/// never crosses file systems; unique per process and call, so concurrent writers never collide.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    parent_dir(path).join(format!(".{name}.tmp-{}-{n}{ext}", std::process::id()))
}

/// Flush a folder's entries (a rename inside it) to disk. A no-op where folders cannot be opened
/// (Windows), where renames are durable by other means.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Write `bytes` to `path` atomically and durably (see the crate docs). Creates the folder.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, |tmp| std::fs::write(tmp, bytes)).map_err(io::Error::from)
}

/// Let `write` create the file at a temporary path, then flush it and rename it over `path`.
/// On any failure the temporary file is removed and `path` is untouched.
pub fn write_with<E>(path: &Path, write: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), Error<E>> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(Error::Io)?;
    let tmp = temp_path(path);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Write(e));
    }
    let finish = || -> io::Result<()> {
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    };
    finish().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io(e)
    })
}

/// Flush every file under `dir` (recursively) and the folders themselves.
pub fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let p = entry.path();
        if entry.file_type()?.is_dir() {
            sync_tree(&p)?;
        } else {
            File::open(&p)?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Swap a completely written folder `tmp` in as `dest`: its files are flushed, an existing
/// `dest` is moved aside first and deleted only once `tmp` stands in its place, and the parent
/// folder is flushed. A crash leaves `dest` whole (old or new); at worst a hidden `.NAME.old-*`
/// or `.NAME.tmp-*` folder remains, which readers ignore.
pub fn replace_dir(tmp: &Path, dest: &Path) -> io::Result<()> {
    sync_tree(tmp)?;
    let parent = parent_dir(dest);
    let old = dest.exists().then(|| {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        parent.join(format!(".{name}.old-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)))
    });
    if let Some(old) = &old {
        std::fs::rename(dest, old)?;
    }
    std::fs::rename(tmp, dest)?;
    sync_dir(parent)?;
    if let Some(old) = &old {
        std::fs::remove_dir_all(old)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/out.bin");
        write(&p, b"first").unwrap();
        write(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.bin")]);
    }

    #[test]
    fn a_failed_writer_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        write(&p, b"good").unwrap();
        let r = write_with(&p, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err("encoder failed")
        });
        assert!(matches!(r, Err(Error::Write("encoder failed"))));
        assert_eq!(std::fs::read(&p).unwrap(), b"good");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn folders_are_swapped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("step-1");
        for content in ["old", "new"] {
            let tmp = temp_path(&dest);
            std::fs::create_dir_all(tmp.join("inner")).unwrap();
            std::fs::write(tmp.join("inner/w.bin"), content).unwrap();
            replace_dir(&tmp, &dest).unwrap();
        }
        assert_eq!(std::fs::read_to_string(dest.join("inner/w.bin")).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
