//! The state directory and its files: the server's generated certificate and stateless-reset
//! key, the client's known hosts.
//!
//! Whoever may write the directory can plant a symbolic link where a file is about to be
//! written, and so send the write (a private key included) wherever the link points, or make
//! the endpoint read a file of their choosing. So a directory another user owns, or that group
//! or others may write, is refused; a state file is never read or written through a link; and
//! each is written whole to a new file of an unpredictable name (`O_EXCL | O_NOFOLLOW`, mode
//! 0600), then moved into place.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::IdentityError;

/// Makes `dir` ready to hold state files: creates it (mode 0700) when it is missing, and
/// refuses it when it is not a directory, another user owns it, or group or others may write
/// it.
pub fn prepare_state_dir(dir: &Path) -> Result<(), IdentityError> {
    let failed = |source| IdentityError::StateDir {
        path: dir.into(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    // Checked after creating, so that a directory made by someone else in between is judged too.
    let meta = std::fs::metadata(dir).map_err(failed)?;
    if !meta.is_dir() {
        return Err(IdentityError::StateDirNotADir { path: dir.into() });
    }
    let me = effective_uid();
    if meta.uid() != me {
        return Err(IdentityError::StateDirOwner {
            path: dir.into(),
            owner: meta.uid(),
            me,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(IdentityError::StateDirWritable {
            path: dir.into(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// The contents of the state file `path`, or `None` when there is none. A link is refused,
/// never followed, and so is anything but a regular file.
pub(crate) fn read(path: &Path) -> Result<Option<Vec<u8>>, IdentityError> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(refused_or(path, source)),
    };
    let failed = |source| IdentityError::Read {
        path: path.into(),
        source,
    };
    if !file.metadata().map_err(failed)?.is_file() {
        return Err(IdentityError::NotAFile { path: path.into() });
    }
    let mut contents = Vec::new();
    file.read_to_end(&mut contents).map_err(failed)?;
    Ok(Some(contents))
}

/// Creates the state file `path` with `contents` unless it exists. The file appears whole and
/// only once: of two processes starting together, one creates it and the other keeps what it
/// holds. Returns whether this call created it. Hard links neither follow nor replace a link
/// at `path`.
pub(crate) fn create_once(path: &Path, contents: &[u8]) -> Result<bool, IdentityError> {
    let partial = write_partial(path, contents)?;
    let linked = std::fs::hard_link(&partial, path);
    let _ = std::fs::remove_file(&partial);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(IdentityError::Write {
            path: path.into(),
            source,
        }),
    }
}

/// Replaces the state file `path` with `contents`, whole: renaming over `path` replaces a link
/// there instead of following it.
pub(crate) fn replace(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let partial = write_partial(path, contents)?;
    std::fs::rename(&partial, path).map_err(|source| {
        let _ = std::fs::remove_file(&partial);
        IdentityError::Write {
            path: path.into(),
            source,
        }
    })
}

/// An exclusive lock on the directory `dir` between processes (and between threads, each
/// taking its own), held until the returned file is dropped.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, IdentityError> {
    let failed = |source| IdentityError::Lock {
        path: dir.into(),
        source,
    };
    let file = File::open(dir).map_err(failed)?;
    loop {
        // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(file);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(failed(error));
        }
    }
}

/// Writes `contents` to a new file beside `path`, synced to disk, and returns its name. The
/// name is random and the file must be new (`O_EXCL`, and `O_NOFOLLOW` besides): a link or
/// file planted under that name makes this fail, never redirects the write.
fn write_partial(path: &Path, contents: &[u8]) -> Result<PathBuf, IdentityError> {
    let failed = |source| IdentityError::Write {
        path: path.into(),
        source,
    };
    let partial = partial_name(path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&partial)
        .map_err(failed)?;
    if let Err(source) = file.write_all(contents).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(&partial);
        return Err(failed(source));
    }
    Ok(partial)
}

/// `.NAME.HEX.new` beside `path`, HEX from 8 random bytes.
fn partial_name(path: &Path) -> Result<PathBuf, IdentityError> {
    let mut random = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| IdentityError::Generate("a random file name".into()))?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    Ok(path.with_file_name(format!(".{name}.{hex}.new")))
}

/// The error for a state file that could not be opened: a clear one when a link is in the way.
fn refused_or(path: &Path, source: io::Error) -> IdentityError {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match is_link {
        true => IdentityError::Link { path: path.into() },
        false => IdentityError::Read {
            path: path.into(),
            source,
        },
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid takes nothing, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}
