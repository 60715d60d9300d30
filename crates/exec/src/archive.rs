//! The sync archive: the files of the user's repository packed as a gzipped
//! tar, ready to be unpacked into a lease's workspace.
//!
//! Which files: inside a git work tree, exactly what git would consider part
//! of the checkout — tracked files plus untracked files that are not ignored
//! (`git ls-files --cached --others --exclude-standard`), symlinks kept as
//! symlinks, deleted-but-tracked files and submodule directories skipped.
//! Outside git, ripgrep's walk of the directory (the `ignore` crate)
//! honouring `.gitignore` and `.ignore` files, skipping `.git` and following
//! no symlinks. In both cases `.crabboxignore` files (gitignore syntax) leave
//! out more, crabbox's own directories are never included, and the member's
//! `sync.exclude` patterns are applied on top (see [`build_skipping`]).
//!
//! The archive is reproducible: entries sorted by path, mtime 0, uid/gid 0,
//! no user or group names, mode 0644 or 0755 (only the executable bit is
//! kept), and a gzip header without a timestamp. Sizes are summed before
//! anything is written, so an oversized sync fails fast and says which files
//! to exclude.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{File, Metadata};
use std::io::{BufReader, BufWriter, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ignore::gitignore::Gitignore;

/// The ignore file crabbox reads besides `.gitignore` and `.ignore`.
pub const IGNORE_FILE: &str = ".crabboxignore";

/// How many of the biggest files a [`ArchiveError::TooLarge`] names.
const BIGGEST_SHOWN: usize = 5;

/// A built sync archive in a temporary file, deleted when this is dropped.
#[derive(Debug)]
pub struct SyncArchive {
    /// Where the `.tar.gz` is.
    pub path: PathBuf,
    /// How many entries (files and symlinks) it holds.
    pub files: usize,
    /// The total size of the files' contents (uncompressed), the number the
    /// size guardrail is checked against.
    pub bytes: u64,
    _tmp: tempfile::TempPath,
}

/// Why a sync archive could not be built or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The files add up to more than the guardrail allows.
    #[error(
        "sync archive would be {}, over the {} limit; biggest: {}; exclude them with `sync: {{ exclude: [...] }}` or raise `sync.max_mb`",
        human_size(*bytes),
        human_size(*limit),
        describe_biggest(biggest)
    )]
    TooLarge {
        /// Total size of the files.
        bytes: u64,
        /// The guardrail.
        limit: u64,
        /// The biggest files (relative path, size), biggest first.
        biggest: Vec<(String, u64)>,
    },
    /// Reading the files or writing/reading the archive failed (message names the path).
    #[error("sync archive: {0}")]
    Io(String),
    /// A `sync.exclude` pattern is not a glob.
    #[error("{0}")]
    Pattern(String),
    /// Listing the repository's files with git failed.
    #[error("sync archive: git: {0}")]
    Git(String),
}

/// One file to pack.
struct Item {
    /// Path relative to the root, `/`-separated.
    rel: PathBuf,
    /// Its lstat metadata.
    meta: Metadata,
}

/// Builds the sync archive of `root`, a directory that holds none of
/// crabbox's own directories: [`build_skipping`] with nothing to skip.
///
/// # Errors
/// As [`build_skipping`].
pub fn build(root: &Path, exclude: &[String], max_bytes: u64) -> Result<SyncArchive, ArchiveError> {
    build_skipping(root, &[], exclude, max_bytes)
}

/// Builds the sync archive of `root`.
///
/// `skip`: directories that are never synced, wherever they are under
/// `root` and whatever git or ignore files say — crabbox's own state
/// directory (which holds local leases' workspaces) and the pond's outputs
/// directory. Copying them would nest earlier workspaces into every new one
/// and walk directories other members are creating at that moment.
///
/// `exclude` patterns: one ending in `/` excludes every directory of that
/// name (or relative path) at any depth — `target/` excludes `target/x` and
/// `a/target/x`. Any other pattern is a glob matched against the file's
/// relative path and against its file name: `*` matches within one path
/// component, `**` across components, `?` one character, `[ab]` one of a
/// class, `{a,b}` either. A leading `/` anchors a pattern at the root.
///
/// # Errors
/// [`ArchiveError::TooLarge`] when the files add up to more than
/// `max_bytes`; [`ArchiveError::Git`] when git fails inside a work tree;
/// [`ArchiveError::Pattern`] for an exclude pattern that is not a glob;
/// [`ArchiveError::Io`] for anything else, with the path in the message.
pub fn build_skipping(
    root: &Path,
    skip: &[PathBuf],
    exclude: &[String],
    max_bytes: u64,
) -> Result<SyncArchive, ArchiveError> {
    let excludes = Excludes::new(exclude)?;
    let skipped = skipped_prefixes(root, skip)?;
    let candidates = match git_files(root)? {
        Some(paths) => without_crabbox_ignored(root, paths)?,
        None => walk(root, &skipped)?,
    };
    let mut items = Vec::new();
    for rel in candidates {
        if skipped.iter().any(|s| rel.starts_with(s)) || excludes.excludes(&rel) {
            continue;
        }
        let full = root.join(&rel);
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(m) => m,
            // Tracked but deleted in the work tree: not part of what the user has.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&full, &e)),
        };
        // Directories (submodules, for git) and special files are not synced.
        if meta.is_file() || meta.is_symlink() {
            items.push(Item { rel, meta });
        }
    }
    items.sort_by(|a, b| {
        a.rel
            .as_os_str()
            .as_bytes()
            .cmp(b.rel.as_os_str().as_bytes())
    });
    items.dedup_by(|a, b| a.rel == b.rel);

    let bytes: u64 = items.iter().map(|i| file_size(&i.meta)).sum();
    if bytes > max_bytes {
        let mut sizes: Vec<(String, u64)> = items
            .iter()
            .map(|i| (i.rel.to_string_lossy().into_owned(), file_size(&i.meta)))
            .collect();
        sizes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        sizes.truncate(BIGGEST_SHOWN);
        return Err(ArchiveError::TooLarge {
            bytes,
            limit: max_bytes,
            biggest: sizes,
        });
    }

    let tmp = tempfile::Builder::new()
        .prefix("crabbox-sync-")
        .suffix(".tar.gz")
        .tempfile()
        .map_err(|e| ArchiveError::Io(format!("creating a temporary file: {e}")))?;
    let (file, tmp_path) = tmp.into_parts();
    let path = tmp_path.to_path_buf();
    write_archive(root, &items, file)
        .map_err(|e| ArchiveError::Io(format!("writing {}: {e}", path.display())))?;
    Ok(SyncArchive {
        path,
        files: items.len(),
        bytes,
        _tmp: tmp_path,
    })
}

/// Unpacks a sync archive into `dest` (created if needed). Entries that would
/// land outside `dest` — absolute paths, `..`, or paths through a symlink
/// that leads out — are refused. Files get the current time as mtime (not the
/// archive's 0), so build tools see synced changes as new.
///
/// # Errors
/// [`ArchiveError::Io`] naming the archive, the destination or the entry.
pub fn unpack(archive: &Path, dest: &Path) -> Result<(), ArchiveError> {
    std::fs::create_dir_all(dest).map_err(|e| io_err(dest, &e))?;
    let dest = dest.canonicalize().map_err(|e| io_err(dest, &e))?;
    let file = File::open(archive).map_err(|e| io_err(archive, &e))?;
    let mut tar = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    tar.set_preserve_mtime(false);
    tar.set_overwrite(true);
    let entries = tar.entries().map_err(|e| io_err(archive, &e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| io_err(archive, &e))?;
        let name = entry.path().map_err(|e| io_err(archive, &e))?.into_owned();
        let escapes = name.is_absolute()
            || name
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)));
        if escapes {
            return Err(ArchiveError::Io(format!(
                "refusing archive entry `{}` in {}: it would be written outside {}",
                name.display(),
                archive.display(),
                dest.display()
            )));
        }
        match entry.unpack_in(&dest) {
            Ok(true) => {}
            Ok(false) => {
                return Err(ArchiveError::Io(format!(
                    "refusing archive entry `{}` in {}: it would be written outside {}",
                    name.display(),
                    archive.display(),
                    dest.display()
                )));
            }
            Err(e) => {
                return Err(ArchiveError::Io(format!(
                    "unpacking `{}` into {}: {e}",
                    name.display(),
                    dest.display()
                )));
            }
        }
    }
    Ok(())
}

/// The files git considers part of the work tree at `root`, relative to
/// `root`; `None` when `root` is not inside a git work tree (or there is no git).
fn git_files(root: &Path) -> Result<Option<Vec<PathBuf>>, ArchiveError> {
    let probe = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--is-inside-work-tree"])
        // Untranslated messages: "not a git repository" is matched below.
        .env("LC_ALL", "C")
        .env("LANGUAGE", "C")
        .output();
    match probe {
        Ok(out) if out.status.success() => {
            if out.stdout.trim_ascii() != b"true" {
                // Inside a `.git` directory or a bare repository.
                return Ok(None);
            }
        }
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("not a git repository") {
                return Ok(None);
            }
            // E.g. "detected dubious ownership": walking instead would sync
            // every ignored file, so say what git said.
            return Err(ArchiveError::Git(format!(
                "cannot tell whether {} is in a git work tree: {}",
                root.display(),
                stderr.trim()
            )));
        }
        // No git installed: nothing can be a work tree for us.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ArchiveError::Git(format!(
                "running git in {}: {e}",
                root.display()
            )));
        }
    }
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .map_err(|e| {
            ArchiveError::Git(format!("running git ls-files in {}: {e}", root.display()))
        })?;
    if !out.status.success() {
        return Err(ArchiveError::Git(format!(
            "git ls-files in {} failed ({}): {}",
            root.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(Some(
        out.stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(OsStr::from_bytes(p)))
            .collect(),
    ))
}

/// `files` (from git, relative to `root`) without what the `.crabboxignore`
/// files among them ignore: git knows nothing of those files, and they must
/// mean the same in a work tree as outside one. A deeper file's rules come
/// first, as with `.gitignore`.
fn without_crabbox_ignored(root: &Path, files: Vec<PathBuf>) -> Result<Vec<PathBuf>, ArchiveError> {
    let root = root.canonicalize().map_err(|e| io_err(root, &e))?;
    let mut matchers = Vec::new();
    for rel in files
        .iter()
        .filter(|p| p.file_name() == Some(OsStr::new(IGNORE_FILE)))
    {
        let path = root.join(rel);
        if !path.is_file() {
            continue; // tracked but deleted
        }
        let (matcher, err) = Gitignore::new(&path);
        if let Some(e) = err {
            return Err(ArchiveError::Io(format!("{}: {e}", path.display())));
        }
        matchers.push((
            rel.parent().map(Path::to_path_buf).unwrap_or_default(),
            matcher,
        ));
    }
    if matchers.is_empty() {
        return Ok(files);
    }
    matchers.sort_by_key(|(dir, _)| std::cmp::Reverse(dir.components().count()));
    Ok(files
        .into_iter()
        .filter(|rel| {
            matchers
                .iter()
                .filter(|(dir, _)| rel.starts_with(dir))
                .map(|(_, m)| m.matched_path_or_any_parents(root.join(rel), false))
                .find(|m| !m.is_none())
                .is_none_or(|m| !m.is_ignore())
        })
        .collect())
}

/// The `skip` directories that lie under `root`, relative to it (both sides
/// resolved, so a symlinked or relative spelling still matches).
fn skipped_prefixes(root: &Path, skip: &[PathBuf]) -> Result<Vec<PathBuf>, ArchiveError> {
    let root = root.canonicalize().map_err(|e| io_err(root, &e))?;
    Ok(skip
        .iter()
        // A directory that does not exist holds nothing to skip.
        .filter_map(|dir| dir.canonicalize().ok())
        .filter_map(|dir| dir.strip_prefix(&root).ok().map(Path::to_path_buf))
        .collect())
}

/// Every file and symlink under `root` outside a git work tree, relative to
/// it: ripgrep's walker honouring `.gitignore`, `.ignore` and
/// `.crabboxignore` files (in `root` and below), skipping `.git` and the
/// `skipped` directories, following no symlinks.
fn walk(root: &Path, skipped: &[PathBuf]) -> Result<Vec<PathBuf>, ArchiveError> {
    let skip_abs: Vec<PathBuf> = skipped.iter().map(|s| root.join(s)).collect();
    let mut builder = ignore::WalkBuilder::new(root);
    builder
        .hidden(false)
        .parents(false)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .filter_entry(move |e| e.file_name() != ".git" && !skip_abs.iter().any(|s| e.path() == s));
    let mut out = Vec::new();
    for entry in builder.build() {
        let entry = entry.map_err(|e| ArchiveError::Io(e.to_string()))?;
        if entry.file_type().is_some_and(|t| t.is_dir()) {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .map_err(|_| {
                ArchiveError::Io(format!(
                    "{} is not under {}",
                    entry.path().display(),
                    root.display()
                ))
            })?
            .to_path_buf();
        out.push(rel);
    }
    Ok(out)
}

/// Content size of a file; symlinks count as nothing.
fn file_size(meta: &Metadata) -> u64 {
    if meta.is_file() { meta.len() } else { 0 }
}

/// Writes the sorted items as a reproducible `.tar.gz` to `file`.
fn write_archive(root: &Path, items: &[Item], file: File) -> std::io::Result<()> {
    let gz = GzEncoder::new(BufWriter::new(file), Compression::default());
    let mut tar = tar::Builder::new(gz);
    for item in items {
        let full = root.join(&item.rel);
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if item.meta.is_symlink() {
            let target = std::fs::read_link(&full).map_err(|e| with_path(&full, &e))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            tar.append_link(&mut header, &item.rel, &target)
                .map_err(|e| with_path(&full, &e))?;
        } else {
            let f = File::open(&full).map_err(|e| with_path(&full, &e))?;
            let executable = item.meta.permissions().mode() & 0o111 != 0;
            let size = item.meta.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_size(size);
            let reader = ExactReader {
                inner: BufReader::new(f),
                remaining: size,
            };
            tar.append_data(&mut header, &item.rel, reader)
                .map_err(|e| with_path(&full, &e))?;
        }
    }
    let gz = tar.into_inner()?;
    let buf = gz.finish()?;
    let file = buf
        .into_inner()
        .map_err(std::io::IntoInnerError::into_error)?;
    file.sync_all()
}

/// Reads exactly `remaining` bytes: a file that shrank or grew since its size
/// was taken must not produce a corrupt tar entry.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shrank while it was being archived; run again",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// The `sync.exclude` patterns, compiled once: globs matched against a
/// file's relative path, and globs matched against its file name only.
/// `globset` compiles each glob to a regular expression (linear-time
/// matching), so no pattern can make matching backtrack.
struct Excludes {
    paths: GlobSet,
    names: GlobSet,
}

impl Excludes {
    /// Compiles the patterns as [`build`] documents them.
    fn new(patterns: &[String]) -> Result<Self, ArchiveError> {
        let mut paths = GlobSetBuilder::new();
        let mut names = GlobSetBuilder::new();
        for raw in patterns {
            let trimmed = raw.trim();
            let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
            let anchored = trimmed.starts_with('/');
            let body = trimmed.trim_start_matches('/');
            let dir = body.ends_with('/');
            let body = body.trim_end_matches('/');
            if body.is_empty() {
                continue;
            }
            let glob = |text: &str| {
                GlobBuilder::new(text)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| {
                        ArchiveError::Pattern(format!("sync.exclude pattern `{raw}`: {}", e.kind()))
                    })
            };
            match (dir, anchored) {
                // Everything below a directory of that name or relative path.
                (true, true) => {
                    paths.add(glob(&format!("{body}/**"))?);
                }
                (true, false) => {
                    paths.add(glob(&format!("**/{body}/**"))?);
                }
                (false, true) => {
                    paths.add(glob(body)?);
                }
                (false, false) => {
                    let g = glob(body)?;
                    paths.add(g.clone());
                    names.add(g);
                }
            }
        }
        let compile = |set: GlobSetBuilder| {
            set.build()
                .map_err(|e| ArchiveError::Pattern(format!("sync.exclude: {e}")))
        };
        Ok(Self {
            paths: compile(paths)?,
            names: compile(names)?,
        })
    }

    /// Whether the file at relative path `rel` is excluded.
    fn excludes(&self, rel: &Path) -> bool {
        self.paths.is_match(rel) || rel.file_name().is_some_and(|n| self.names.is_match(n))
    }
}

/// `812.4 MiB`, `512 MiB`, `3.0 KiB`, `12 B`.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    let mut scale: u64 = 1024;
    while unit + 1 < UNITS.len() && bytes >= scale * 1024 {
        unit += 1;
        scale *= 1024;
    }
    if bytes.is_multiple_of(scale) {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        // Tenths, rounded; exact for any size a repository can have.
        let tenths = (u128::from(bytes) * 10 + u128::from(scale) / 2) / u128::from(scale);
        format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
    }
}

fn describe_biggest(biggest: &[(String, u64)]) -> String {
    let mut out = String::new();
    for (i, (path, size)) in biggest.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{path} ({})", human_size(*size));
    }
    if out.is_empty() {
        out.push_str("(no files)");
    }
    out
}

fn io_err(path: &Path, e: &std::io::Error) -> ArchiveError {
    ArchiveError::Io(format!("{}: {e}", path.display()))
}

fn with_path(path: &Path, e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn write(dir: &Path, rel: &str, contents: &[u8]) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, contents).expect("write");
    }

    /// (path, mode, mtime, uid, gid, contents or link target) of every entry, in archive order.
    fn entries(archive: &Path) -> Vec<(String, u32, u64, u64, u64, Vec<u8>)> {
        let mut tar = tar::Archive::new(GzDecoder::new(File::open(archive).expect("open")));
        tar.entries()
            .expect("entries")
            .map(|e| {
                let mut e = e.expect("entry");
                let h = e.header().clone();
                let path = e.path().expect("path").to_string_lossy().into_owned();
                let mut data = Vec::new();
                if h.entry_type() == tar::EntryType::Symlink {
                    data = e.link_name_bytes().expect("link").into_owned();
                } else {
                    e.read_to_end(&mut data).expect("read");
                }
                (
                    path,
                    h.mode().expect("mode"),
                    h.mtime().expect("mtime"),
                    h.uid().expect("uid"),
                    h.gid().expect("gid"),
                    data,
                )
            })
            .collect()
    }

    fn names(archive: &Path) -> Vec<String> {
        entries(archive).into_iter().map(|e| e.0).collect()
    }

    #[test]
    fn git_repo_archives_tracked_and_untracked_but_not_ignored_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        git(root, &["init", "-q"]);
        write(root, ".gitignore", b"*.log\nbuild/\n");
        write(root, "src/main.rs", b"fn main() {}\n");
        write(root, "README.md", b"hello\n");
        write(root, "gone.txt", b"deleted later\n");
        git(root, &["add", "."]);
        git(root, &["commit", "-q", "-m", "init"]);
        std::fs::remove_file(root.join("gone.txt")).expect("rm");
        write(root, "debug.log", b"ignored\n");
        write(root, "build/out.bin", b"ignored too\n");
        write(root, "notes.txt", b"untracked, not ignored\n");
        std::os::unix::fs::symlink("README.md", root.join("link")).expect("symlink");

        let archive = build(root, &[], 1 << 20).expect("build");
        assert_eq!(
            names(&archive.path),
            [
                ".gitignore",
                "README.md",
                "link",
                "notes.txt",
                "src/main.rs"
            ]
        );
        assert_eq!(archive.files, 5);
        let expected_bytes: u64 = [".gitignore", "README.md", "notes.txt", "src/main.rs"]
            .iter()
            .map(|f| std::fs::metadata(root.join(f)).expect("meta").len())
            .sum();
        assert_eq!(archive.bytes, expected_bytes);
        let all = entries(&archive.path);
        let link = all.iter().find(|e| e.0 == "link").expect("link entry");
        assert_eq!(link.5, b"README.md", "symlinks stay symlinks");
        for (path, mode, mtime, uid, gid, _) in &all {
            assert_eq!((*mtime, *uid, *gid), (0, 0, 0), "{path} is normalized");
            if path != "link" {
                assert_eq!(*mode, 0o644, "{path}");
            }
        }
    }

    #[test]
    fn archive_from_a_subdirectory_of_a_repo_is_relative_to_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        git(root, &["init", "-q"]);
        write(root, "top.txt", b"top\n");
        write(root, "app/a.txt", b"a\n");
        let archive = build(&root.join("app"), &[], 1 << 20).expect("build");
        assert_eq!(names(&archive.path), ["a.txt"]);
    }

    #[test]
    fn archives_are_reproducible() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "b.txt", b"b\n");
        write(dir.path(), "a/c.txt", b"c\n");
        let one = build(dir.path(), &[], 1 << 20).expect("first");
        // Touch a file: the archive must not change.
        let f = File::options()
            .append(true)
            .open(dir.path().join("b.txt"))
            .expect("open");
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
            .expect("touch");
        let two = build(dir.path(), &[], 1 << 20).expect("second");
        assert_eq!(
            std::fs::read(&one.path).expect("one"),
            std::fs::read(&two.path).expect("two")
        );
        assert_ne!(one.path, two.path);
    }

    #[test]
    fn exclude_patterns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for f in [
            "target/debug/app",
            "crates/x/target/lib.rlib",
            "src/target.rs",
            "src/lib.rs",
            "data/big.bin",
            "data/keep.csv",
            "notes.tmp",
            "deep/er/notes.tmp",
            "docs/a.md",
            "docs/sub/b.md",
        ] {
            write(root, f, b"x");
        }
        let excluded = |patterns: &[&str]| -> Vec<String> {
            let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
            names(&build(root, &patterns, 1 << 20).expect("build").path)
        };
        assert_eq!(
            excluded(&["target/", "*.bin", "*.tmp"]),
            [
                "data/keep.csv",
                "docs/a.md",
                "docs/sub/b.md",
                "src/lib.rs",
                "src/target.rs"
            ]
        );
        assert_eq!(
            excluded(&["docs/*.md", "data/", "target/", "*.tmp", "src/"]),
            ["docs/sub/b.md"]
        );
        assert_eq!(
            excluded(&["docs/**", "data/", "target/", "*.tmp", "src/"]),
            Vec::<String>::new()
        );
        assert_eq!(
            excluded(&["/notes.tmp", "/target/"]),
            [
                "crates/x/target/lib.rlib",
                "data/big.bin",
                "data/keep.csv",
                "deep/er/notes.tmp",
                "docs/a.md",
                "docs/sub/b.md",
                "src/lib.rs",
                "src/target.rs"
            ]
        );
    }

    #[test]
    fn pathological_globs_finish() {
        // A backtracking matcher takes exponential time on this pair; a
        // compiled glob matches in time linear in the name.
        let dir = tempfile::tempdir().expect("tempdir");
        let name = "a".repeat(120);
        write(dir.path(), &name, b"x");
        write(dir.path(), &format!("{}b", "a".repeat(30)), b"x");
        let pattern = "a*a*a*a*a*a*a*a*a*a*a*a*b".to_owned();
        let archive = build(dir.path(), &[pattern], 1 << 20).expect("build");
        assert_eq!(names(&archive.path), [name]);
    }

    #[test]
    fn exclude_globs_keep_their_documented_meaning() {
        let ex = |p: &str| Excludes::new(&[p.to_owned()]).expect("compiles");
        let hit = |p: &str, rel: &str| ex(p).excludes(Path::new(rel));
        assert!(hit("*.rs", "main.rs"));
        assert!(hit("*.rs", "src/main.rs"), "matched against the file name");
        assert!(!hit("/*.rs", "src/main.rs"), "anchored: the path only");
        assert!(hit("src/*.rs", "src/main.rs"));
        assert!(
            !hit("src/*.rs", "src/a/main.rs"),
            "`*` stays in one component"
        );
        assert!(hit("**/*.rs", "a/b/main.rs"));
        assert!(hit("a?c", "abc"));
        assert!(!hit("a?c", "a/c"));
        assert!(hit("node_*/", "x/node_modules/y.js"));
        assert!(!hit("node_*/", "node_modules"), "a file is not a directory");
        assert!(!hit("x", "xy"));
        let err = Excludes::new(&["[z-a".to_owned()])
            .err()
            .expect("not a glob");
        assert!(
            err.to_string().contains("sync.exclude pattern `[z-a`"),
            "{err}"
        );
    }

    #[test]
    fn skipped_directories_are_never_synced_in_or_out_of_git() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "app.py", b"print()\n");
        write(
            root,
            "state/local/leases/cbx_1/workspace/app.py",
            b"old copy",
        );
        write(root, "home/.crabbox/pond/p/env", b"export X=1\n");
        let skip = [root.join("state"), root.join("home/.crabbox")];
        let walked = build_skipping(root, &skip, &[], 1 << 20).expect("walk");
        assert_eq!(names(&walked.path), ["app.py"]);
        git(root, &["init", "-q"]);
        let listed = build_skipping(root, &skip, &[], 1 << 20).expect("git");
        assert_eq!(names(&listed.path), ["app.py"]);
        // A relative spelling of a skipped directory is the same directory.
        let rel =
            build_skipping(root, &[root.join("./state/../state")], &[], 1 << 20).expect("relative");
        assert_eq!(names(&rel.path), ["app.py", "home/.crabbox/pond/p/env"]);
    }

    #[test]
    fn crabboxignore_applies_in_a_git_work_tree_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        git(root, &["init", "-q"]);
        write(root, ".crabboxignore", b"*.bin\n");
        write(root, "sub/.crabboxignore", b"!keep.bin\n");
        for f in ["a.bin", "sub/keep.bin", "sub/drop.bin", "src/main.rs"] {
            write(root, f, b"x");
        }
        git(root, &["add", "."]);
        let archive = build(root, &[], 1 << 20).expect("build");
        assert_eq!(
            names(&archive.path),
            [
                ".crabboxignore",
                "src/main.rs",
                "sub/.crabboxignore",
                "sub/keep.bin"
            ]
        );
    }

    #[test]
    fn outside_git_ignore_files_are_honoured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, ".gitignore", b"*.log\n");
        write(root, ".ignore", b"cache/\n");
        write(root, ".crabboxignore", b"secret.txt\n");
        write(root, "sub/.gitignore", b"local.bin\n");
        for f in [
            "a.log",
            "cache/x",
            "secret.txt",
            "sub/local.bin",
            "local.bin",
            "keep.txt",
        ] {
            write(root, f, b"x");
        }
        let archive = build(root, &[], 1 << 20).expect("build");
        assert_eq!(
            names(&archive.path),
            [
                ".crabboxignore",
                ".gitignore",
                ".ignore",
                "keep.txt",
                "local.bin",
                "sub/.gitignore"
            ]
        );
    }

    #[test]
    fn too_large_names_the_biggest_files_and_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "huge.bin", &vec![0u8; 3000]);
        write(dir.path(), "mid.bin", &vec![0u8; 2000]);
        for i in 0..6 {
            write(dir.path(), &format!("small{i}.txt"), &vec![b'x'; 100 + i]);
        }
        let err = build(dir.path(), &[], 4096).expect_err("too large");
        let ArchiveError::TooLarge {
            bytes,
            limit,
            biggest,
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*bytes, 3000 + 2000 + (100..106).sum::<u64>());
        assert_eq!(*limit, 4096);
        assert_eq!(biggest.len(), 5);
        assert_eq!(biggest[0], ("huge.bin".to_owned(), 3000));
        assert_eq!(biggest[1], ("mid.bin".to_owned(), 2000));
        assert_eq!(biggest[2], ("small5.txt".to_owned(), 105));
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "sync archive would be 5.5 KiB, over the 4 KiB limit; biggest: huge.bin (2.9 KiB)"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("sync: { exclude: [...] }") && msg.contains("sync.max_mb"),
            "{msg}"
        );
        // Excluding them fixes it.
        build(dir.path(), &["*.bin".to_owned()], 4096).expect("fits after exclude");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(12), "12 B");
        assert_eq!(human_size(512 * 1024 * 1024), "512 MiB");
        assert_eq!(human_size(851_862_323), "812.4 MiB");
        assert_eq!(human_size(1536), "1.5 KiB");
    }

    #[test]
    fn unpack_round_trip_keeps_content_and_executable_bit() {
        let src = tempfile::tempdir().expect("src");
        write(src.path(), "run.sh", b"#!/bin/sh\necho hi\n");
        std::fs::set_permissions(
            src.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o750),
        )
        .expect("chmod");
        write(src.path(), "deep/nested/data.txt", b"payload");
        std::os::unix::fs::symlink("deep/nested/data.txt", src.path().join("data"))
            .expect("symlink");
        let long = format!("{}/file.txt", "d".repeat(120));
        write(src.path(), &long, b"long path");
        let archive = build(src.path(), &[], 1 << 20).expect("build");

        let dest = tempfile::tempdir().expect("dest");
        let ws = dest.path().join("workspace");
        unpack(&archive.path, &ws).expect("unpack");
        assert_eq!(
            std::fs::read(ws.join("run.sh")).expect("run.sh"),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::metadata(ws.join("run.sh"))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::read(ws.join("deep/nested/data.txt")).expect("data"),
            b"payload"
        );
        assert_eq!(
            std::fs::metadata(ws.join("deep/nested/data.txt"))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777,
            0o644
        );
        assert_eq!(
            std::fs::read_link(ws.join("data")).expect("link"),
            Path::new("deep/nested/data.txt")
        );
        assert_eq!(std::fs::read(ws.join(&long)).expect("long"), b"long path");
        // Unpacked files are fresh, not from 1970.
        let mtime = std::fs::metadata(ws.join("run.sh"))
            .expect("meta")
            .modified()
            .expect("mtime");
        assert!(
            mtime
                > std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000)
        );
        // Unpacking again over the same workspace works (re-sync).
        unpack(&archive.path, &ws).expect("second unpack");
    }

    #[test]
    fn unpack_refuses_entries_outside_the_destination() {
        let dir = tempfile::tempdir().expect("tempdir");
        let evil = dir.path().join("evil.tar.gz");
        let mut tar = tar::Builder::new(GzEncoder::new(
            File::create(&evil).expect("create"),
            Compression::default(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_size(4);
        header.set_mode(0o644);
        header.as_old_mut().name[..9].copy_from_slice(b"../escape");
        header.set_cksum();
        tar.append(&header, &b"evil"[..]).expect("append");
        tar.into_inner().expect("tar").finish().expect("gz");

        let dest = dir.path().join("ws");
        let err = unpack(&evil, &dest).expect_err("refused");
        assert!(
            err.to_string()
                .contains("refusing archive entry `../escape`"),
            "{err}"
        );
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn non_git_directory_walk_skips_dot_git_and_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("outside");
        write(outside.path(), "secret.txt", b"outside");
        let root = dir.path().join("proj");
        write(&root, "a.txt", b"a");
        write(&root, "sub/b.txt", b"b");
        write(&root, ".git/config", b"not a real repo");
        write(&root, ".hidden", b"h");
        std::os::unix::fs::symlink(outside.path(), root.join("ext")).expect("symlink");
        let archive = build(&root, &[], 1 << 20).expect("build");
        assert_eq!(
            names(&archive.path),
            [".hidden", "a.txt", "ext", "sub/b.txt"]
        );
        assert_eq!(archive.files, 4);
        assert_eq!(archive.bytes, 3);
    }

    #[test]
    fn archive_file_is_deleted_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.txt", b"a");
        let archive = build(dir.path(), &[], 1 << 20).expect("build");
        let path = archive.path.clone();
        assert!(path.exists());
        drop(archive);
        assert!(!path.exists());
    }
}
