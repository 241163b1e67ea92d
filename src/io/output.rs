//! All the files of one command, written as one transaction: either every one of them is
//! in place with its new content, or none of the targets has changed.
//!
//! 1. Every file is written and synced to a temporary file with a short unique name
//!    (`.nsa??????.tmp`, tempfile) in its target's directory, so a long valid name still fits
//!    and no user file is ever taken for a temporary one. A failure here touches no target.
//! 2. Each target that already exists is kept as a hard link (`.nsa??????.bak`) beside it.
//! 3. The temporaries are renamed over their targets. If a rename fails, the targets renamed
//!    so far get their kept version back (or are removed, when they did not exist before).
//! 4. On success the kept versions are dropped.
//!
//! Two outputs naming one file, or an output naming an input, are refused before anything is
//! written ([`check_distinct`]).

use crate::error::{NsaError, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

fn io_err(path: &Path, source: std::io::Error) -> NsaError {
    NsaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory a relative or bare file name lives in.
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// What identifies a file for the same-file test: the canonical directory and name (the file
/// need not exist), and the device and inode when it does (hard links, symlinks).
#[derive(Debug, PartialEq, Eq)]
struct FileKey {
    place: Option<PathBuf>,
    #[cfg(unix)]
    inode: Option<(u64, u64)>,
}

impl FileKey {
    fn of(path: &Path) -> FileKey {
        let place = std::fs::canonicalize(path).ok().or_else(|| {
            let name = path.file_name()?;
            std::fs::canonicalize(dir_of(path))
                .ok()
                .map(|d| d.join(name))
        });
        #[cfg(unix)]
        let inode = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
        };
        FileKey {
            place,
            #[cfg(unix)]
            inode,
        }
    }

    fn same(&self, other: &FileKey) -> bool {
        #[cfg(unix)]
        if let (Some(a), Some(b)) = (self.inode, other.inode) {
            if a == b {
                return true;
            }
        }
        matches!((&self.place, &other.place), (Some(a), Some(b)) if a == b)
    }
}

/// A pair of paths that name one file: `(first, second)` as `(flag, path)`.
#[derive(Debug)]
pub struct SameFile {
    /// The earlier flag and its path.
    pub first: (String, PathBuf),
    /// The later flag and its path.
    pub second: (String, PathBuf),
}

impl std::fmt::Display for SameFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} and {} {} name the same file; give each output its own path, different from every input",
            self.first.0,
            self.first.1.display(),
            self.second.0,
            self.second.1.display()
        )
    }
}

/// Checks that no two `outputs` name the same file and that no output names one of
/// `inputs`; each entry is `(flag, path)`, the flag for the message.
pub fn check_distinct(
    outputs: &[(&str, &Path)],
    inputs: &[(&str, &Path)],
) -> std::result::Result<(), SameFile> {
    let outs: Vec<FileKey> = outputs.iter().map(|(_, p)| FileKey::of(p)).collect();
    let ins: Vec<FileKey> = inputs.iter().map(|(_, p)| FileKey::of(p)).collect();
    let pair = |a: &(&str, &Path), b: &(&str, &Path)| SameFile {
        first: (a.0.to_string(), a.1.to_path_buf()),
        second: (b.0.to_string(), b.1.to_path_buf()),
    };
    for (i, o) in outs.iter().enumerate() {
        if let Some(j) = ins.iter().position(|k| k.same(o)) {
            return Err(pair(&inputs[j], &outputs[i]));
        }
        if let Some(j) = outs[..i].iter().position(|k| k.same(o)) {
            return Err(pair(&outputs[j], &outputs[i]));
        }
    }
    Ok(())
}

/// The files of one command, written together by [`OutputSet::commit`].
#[derive(Default)]
pub struct OutputSet {
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl OutputSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file; refuses one that names the same file as an earlier one.
    pub fn add(&mut self, path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<()> {
        let path = path.into();
        let key = FileKey::of(&path);
        if let Some((earlier, _)) = self.files.iter().find(|(p, _)| FileKey::of(p).same(&key)) {
            return Err(NsaError::InvalidParameter {
                name: "output path",
                reason: format!(
                    "{} and {} name the same file",
                    earlier.display(),
                    path.display()
                ),
            });
        }
        self.files.push((path, bytes));
        Ok(())
    }

    /// The paths added so far.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    /// Writes every file, or none (module docs).
    pub fn commit(self) -> Result<()> {
        // 1. stage
        let mut staged = Vec::with_capacity(self.files.len());
        for (path, bytes) in &self.files {
            if path.file_name().is_none() {
                return Err(NsaError::InvalidParameter {
                    name: "output path",
                    reason: format!("{} names no file", path.display()),
                });
            }
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                return Err(io_err(
                    path,
                    std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"),
                ));
            }
            let mut tmp = temp_builder(".tmp")
                .tempfile_in(dir_of(path))
                .map_err(|e| io_err(path, e))?;
            tmp.write_all(bytes)
                .and_then(|()| tmp.as_file().sync_all())
                .map_err(|e| io_err(path, e))?;
            staged.push(tmp.into_temp_path());
        }
        // 2. keep what is there
        let mut kept: Vec<Option<tempfile::TempPath>> = Vec::with_capacity(staged.len());
        for (path, _) in &self.files {
            kept.push(keep_existing(path)?);
        }
        // 3. rename into place, undoing on failure
        let mut staged = staged.into_iter();
        for (i, (path, _)) in self.files.iter().enumerate() {
            let tmp = staged.next().expect("one staged file per output");
            let res = fault::before_rename(i).and_then(|()| tmp.persist(path).map_err(|e| e.error));
            if let Err(e) = res {
                for (j, (done, _)) in self.files[..i].iter().enumerate() {
                    match kept[j].take() {
                        Some(backup) => {
                            let _ = backup.persist(done);
                        }
                        None => {
                            let _ = std::fs::remove_file(done);
                        }
                    }
                }
                return Err(io_err(path, e));
            }
        }
        // 4. the kept versions are removed as `kept` drops
        Ok(())
    }
}

fn temp_builder(suffix: &'static str) -> tempfile::Builder<'static, 'static> {
    let mut b = tempfile::Builder::new();
    b.prefix(".nsa").suffix(suffix).rand_bytes(6);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // what File::create gives (before the umask), not tempfile's private 0600
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b
}

/// A hard link to the file at `path`, if there is one, to restore it from.
fn keep_existing(path: &Path) -> Result<Option<tempfile::TempPath>> {
    // link(2) fails with ENOENT when another process renames a file over `path` between its
    // lookup and the link (the old inode is gone by then): look again, a few times
    let mut tries = 0;
    loop {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path, e)),
            Ok(_) => {
                match temp_builder(".bak").make_in(dir_of(path), |p| std::fs::hard_link(path, p)) {
                    Ok(f) => return Ok(Some(f.into_temp_path())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 16 => tries += 1,
                    Err(e) => return Err(io_err(path, e)),
                }
            }
        }
    }
}

/// Writes one file atomically (an [`OutputSet`] of one).
pub fn write_atomic(path: &Path, bytes: Vec<u8>) -> Result<()> {
    let mut set = OutputSet::new();
    set.add(path, bytes)?;
    set.commit()
}

/// Fault injection for the rollback tests: fail the rename of output `n`.
mod fault {
    #[cfg(test)]
    thread_local!(pub static FAIL_AT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) });

    #[cfg(test)]
    pub fn before_rename(i: usize) -> std::io::Result<()> {
        if FAIL_AT.with(|f| f.get()) == Some(i) {
            return Err(std::io::Error::other("injected failure"));
        }
        Ok(())
    }

    #[cfg(not(test))]
    #[inline]
    pub fn before_rename(_: usize) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    #[test]
    fn a_failed_rename_restores_every_target() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, "old a").unwrap();
        std::fs::write(&c, "old c").unwrap();
        for fail in 0..3 {
            let mut set = OutputSet::new();
            set.add(&a, b"new a".to_vec()).unwrap();
            set.add(&b, b"new b".to_vec()).unwrap();
            set.add(&c, b"new c".to_vec()).unwrap();
            fault::FAIL_AT.with(|f| f.set(Some(fail)));
            assert!(set.commit().is_err());
            fault::FAIL_AT.with(|f| f.set(None));
            assert_eq!(std::fs::read_to_string(&a).unwrap(), "old a");
            assert!(!b.exists(), "b did not exist before");
            assert_eq!(std::fs::read_to_string(&c).unwrap(), "old c");
            assert!(hidden(dir.path()).is_empty(), "{:?}", hidden(dir.path()));
        }
        let mut set = OutputSet::new();
        set.add(&a, b"new a".to_vec()).unwrap();
        set.add(&b, b"new b".to_vec()).unwrap();
        set.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new a");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "new b");
        assert!(hidden(dir.path()).is_empty());
    }

    #[test]
    fn a_failed_stage_touches_nothing_and_names_are_short() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "old").unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let mut set = OutputSet::new();
        set.add(&a, b"new".to_vec()).unwrap();
        set.add(&sub, b"x".to_vec()).unwrap(); // a directory: refused
        assert!(set.commit().is_err());
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "old");
        let long = dir.path().join(format!("{}.npy", "a".repeat(251)));
        write_atomic(&long, b"ok".to_vec()).unwrap();
        assert_eq!(std::fs::read(&long).unwrap(), b"ok");
        // a user's file with the old fixed temporary name is not touched
        let user = dir.path().join("p.svg.tmp");
        std::fs::write(&user, "mine").unwrap();
        write_atomic(&dir.path().join("p.svg"), b"svg".to_vec()).unwrap();
        assert_eq!(std::fs::read_to_string(&user).unwrap(), "mine");
        assert!(hidden(dir.path()).is_empty());
    }

    #[test]
    fn same_files_are_found_by_any_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let y = dir.path().join("y.npy");
        std::fs::write(&y, "y").unwrap();
        let link = dir.path().join("hard.npy");
        std::fs::hard_link(&y, &link).unwrap();
        let dotted = dir.path().join(".").join("y.npy");
        for other in [&y, &link, &dotted] {
            assert!(check_distinct(&[("--out", other)], &[("--y0", &y)]).is_err());
        }
        let new = dir.path().join("new.csv");
        assert!(check_distinct(
            &[
                ("--out", &new),
                ("--trace", &dotted.with_file_name("new.csv"))
            ],
            &[]
        )
        .is_err());
        assert!(check_distinct(
            &[("--out", &new), ("--trace", &dir.path().join("t.csv"))],
            &[("--y0", &y)]
        )
        .is_ok());
        let mut set = OutputSet::new();
        set.add(&new, vec![]).unwrap();
        assert!(set.add(dir.path().join("./new.csv"), vec![]).is_err());
    }
}
