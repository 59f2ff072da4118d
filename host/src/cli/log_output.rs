//! Where log lines go: always standard error, and a copy appended to each file that the
//! `--config` key `log-output-paths` names (`stdout` and `stderr` there name the standard
//! streams, which get the log already, and open no file).
//!
//! Each file is opened append-only, never through a symbolic link, and created with mode
//! 0600: a log holds addresses and tokens' targets that other users need not read.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

/// Standard error plus the log files; hands out a [`Lines`] writer per log line.
#[derive(Clone, Debug, Default)]
pub struct LogOutput {
    files: Arc<[File]>,
}

impl LogOutput {
    /// Opens each path of `log-output-paths` that names a file.
    pub fn open(paths: &[String]) -> anyhow::Result<LogOutput> {
        let files: Vec<File> = paths
            .iter()
            .filter(|path| !matches!(path.as_str(), "stdout" | "stderr"))
            .map(|path| open_append(Path::new(path)))
            .collect::<anyhow::Result<_>>()?;
        Ok(LogOutput {
            files: files.into(),
        })
    }

    /// Whether only standard error gets the log (so colours may be used on a terminal).
    pub fn is_stderr_only(&self) -> bool {
        self.files.is_empty()
    }
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|error| match error.raw_os_error() {
            Some(libc::ELOOP) => anyhow::anyhow!(
                "cannot open log-output-paths {}: it is a symbolic link, which is not followed",
                path.display()
            ),
            _ => anyhow::anyhow!("cannot open log-output-paths {}: {error}", path.display()),
        })
}

impl<'a> MakeWriter<'a> for LogOutput {
    type Writer = Lines<'a>;

    fn make_writer(&'a self) -> Lines<'a> {
        Lines { files: &self.files }
    }
}

/// Writes what it is given to standard error and to every file. The formatter hands over a
/// whole line in one `write`, and each file is in append mode, so lines never interleave.
pub struct Lines<'a> {
    files: &'a [File],
}

impl Write for Lines<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // A full disk must not silence standard error: the first error is reported after all.
        let mut result = io::stderr().write_all(buf);
        for mut file in self.files {
            let written = file.write_all(buf);
            result = result.and(written);
        }
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("quictun-logout-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn lines_are_appended_to_a_file_created_0600() {
        let dir = scratch("append");
        let path = dir.join("q.log");
        std::fs::write(&path, "before\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let paths = [path.display().to_string(), "stdout".into(), "stderr".into()];
        let output = LogOutput::open(&paths).unwrap();
        assert!(!output.is_stderr_only());
        output.make_writer().write_all(b"one line\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "before\none line\n"
        );
        let fresh = dir.join("new.log");
        LogOutput::open(&[fresh.display().to_string()]).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.join("stdout").exists() && !dir.join("stderr").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symbolic_link_or_a_missing_directory_is_refused_with_the_path() {
        let dir = scratch("refuse");
        let link = dir.join("link.log");
        std::os::unix::fs::symlink(dir.join("elsewhere"), &link).unwrap();
        let error = LogOutput::open(&[link.display().to_string()]).unwrap_err();
        assert!(error.to_string().contains("symbolic link"), "{error}");
        assert!(!dir.join("elsewhere").exists());
        let missing = dir.join("no/such/dir.log").display().to_string();
        let error = LogOutput::open(std::slice::from_ref(&missing))
            .unwrap_err()
            .to_string();
        assert!(error.contains(&missing), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
