//! Records the git revision the binaries are built from, for `--version`.
//!
//! Outside a git checkout (a source tarball, `cargo install` from the registry) or without git,
//! the revision is "unknown". Cargo reruns this script when HEAD moves: when it names another
//! branch (`.git/HEAD`) or its branch gets a new commit (the branch's ref file, or
//! `packed-refs` once the ref is packed).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let revision = git(&manifest_dir, &["rev-parse", "--short", "HEAD"]);
    if let Some(git_dir) = git(&manifest_dir, &["rev-parse", "--absolute-git-dir"]) {
        watch_head(Path::new(&git_dir));
    }
    println!(
        "cargo:rustc-env=QUICTUN_GIT_REVISION={}",
        revision.as_deref().unwrap_or("unknown")
    );
}

/// Asks cargo to rerun this script when HEAD or the branch it names moves. Only files that
/// exist are named: cargo reruns a script on every build while a watched file is missing.
fn watch_head(git_dir: &Path) {
    let head = git_dir.join("HEAD");
    watch(&head);
    let Ok(text) = std::fs::read_to_string(&head) else {
        return;
    };
    if let Some(reference) = text.trim().strip_prefix("ref: ") {
        // The ref may live in a worktree's own directory or the shared one, loose or packed.
        for dir in [git_dir.to_path_buf(), common_dir(git_dir)] {
            watch(&dir.join(reference));
            watch(&dir.join("packed-refs"));
        }
    }
}

fn watch(file: &Path) {
    if file.is_file() {
        println!("cargo:rerun-if-changed={}", file.display());
    }
}

/// The repository's shared directory (differs from `git_dir` in a linked worktree).
fn common_dir(git_dir: &Path) -> PathBuf {
    match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(relative) => git_dir.join(relative.trim()),
        Err(_) => git_dir.to_path_buf(),
    }
}

/// Runs git in `dir`; its trimmed output, or `None` when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}
