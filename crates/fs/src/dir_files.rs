//! Reading many small files of one directory.
//!
//! Discovering a pond of 10,000 members reads a claim and an endpoint
//! record per lease. Opened by full path, each file cost the kernel a walk
//! of every component of that path (most of the open's time); opened
//! relative to the directory, opened once, the walk is one or two
//! components. Each read also skips the size query `std::fs::read` makes
//! first, and reuses the caller's buffer.

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// A directory held open, whose files are read by names relative to it.
#[derive(Debug)]
pub struct DirFiles {
    dir: File,
    path: PathBuf,
}

impl DirFiles {
    /// Opens `path` (which must be a directory) for reading files in it.
    ///
    /// # Errors
    /// The directory cannot be opened (`NotFound` when it does not exist).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            dir: File::from(fd),
            path: path.to_owned(),
        })
    }

    /// The directory's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces `buf`'s contents with those of the file `name` (relative to
    /// the directory; it may name a file in a subdirectory).
    ///
    /// # Errors
    /// The file cannot be opened or read (`NotFound` when it does not exist).
    pub fn read_into(&self, name: &Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
        let fd = rustix::fs::openat(
            &self.dir,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )?;
        buf.clear();
        // `Read::read_to_end` of a `File` asks the file's size first; a
        // plain reader reads until end of file into the buffer's capacity.
        let mut reader = Plain(File::from(fd));
        reader.read_to_end(buf)?;
        Ok(())
    }
}

/// A file read with nothing but `read` calls.
struct Plain(File);

impl std::io::Read for Plain {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_and_files_of_subdirectories_relative_to_the_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("sub")).expect("sub");
        std::fs::write(root.path().join("a.json"), "{\"a\":1}").expect("a");
        let long = "x".repeat(100_000);
        std::fs::write(root.path().join("sub").join("b"), &long).expect("b");
        let dir = DirFiles::open(root.path()).expect("open");
        assert_eq!(dir.path(), root.path());
        let mut buf = Vec::with_capacity(16);
        dir.read_into(Path::new("a.json"), &mut buf).expect("a");
        assert_eq!(buf, b"{\"a\":1}");
        dir.read_into(Path::new("sub/b"), &mut buf).expect("b");
        assert_eq!(buf, long.as_bytes(), "a file larger than the buffer, whole");
        dir.read_into(Path::new("a.json"), &mut buf)
            .expect("a again");
        assert_eq!(buf, b"{\"a\":1}", "the buffer's earlier contents are gone");
        let missing = dir
            .read_into(Path::new("none"), &mut buf)
            .expect_err("missing");
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        let no_dir = DirFiles::open(&root.path().join("nowhere")).expect_err("no dir");
        assert_eq!(no_dir.kind(), std::io::ErrorKind::NotFound);
    }
}
