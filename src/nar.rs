//! NAR serialisation (Nix ARchive), streamed into SHA-256: the hash Nix records for every
//! valid path (`ValidPaths.hash` = `sha256:` + hex of the NAR, `narSize` its length).
//!
//! Format (Nix's `archive.cc`): every string is a little-endian u64 length, the bytes,
//! and zero padding to a multiple of 8. A node is `( type regular [executable ""]
//! contents <data> )`, `( type symlink target <t> )`, or `( type directory` followed by
//! `entry ( name <n> node <node> )` for each entry in byte order of names, then `)`.
//! A file is executable when its owner-execute bit is set.
//!
//! Reading goes through directory fds with O_NOFOLLOW, like everything that touches the
//! target.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};
use sha2::{Digest, Sha256};

use crate::dirfd::{file_type, list, open_dir};

/// What a NAR serialisation of a path gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// `sha256:` + 64 lowercase hex digits, as in `ValidPaths.hash`.
    pub hash: String,
    pub size: u64,
}

struct Sink {
    hasher: Sha256,
    size: u64,
}

impl Sink {
    fn bytes(&mut self, b: &[u8]) {
        self.hasher.update(b);
        self.size += b.len() as u64;
    }

    fn str(&mut self, s: &[u8]) {
        self.bytes(&(s.len() as u64).to_le_bytes());
        self.bytes(s);
        self.pad(s.len() as u64);
    }

    fn pad(&mut self, len: u64) {
        let rem = (len % 8) as usize;
        if rem != 0 {
            self.bytes(&[0u8; 8][..8 - rem]);
        }
    }
}

/// A path's metadata problem in Nix's canonical form, found while serialising.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Irregularity {
    pub rel: String,
    pub what: String,
}

/// Serialise `name` inside `dir` (a store path) and hash it. Non-canonical metadata
/// (mode other than 0444/0555 for files and 0555 for directories, mtime other than 1) is
/// collected into `irregular` when given.
pub fn hash_path(
    dir: BorrowedFd,
    name: &std::ffi::OsStr,
    mut irregular: Option<&mut Vec<Irregularity>>,
) -> io::Result<NarInfo> {
    let mut sink = Sink {
        hasher: Sha256::new(),
        size: 0,
    };
    let mut buf = vec![0u8; 128 * 1024];
    sink.str(b"nix-archive-1");
    let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    let mut rel = Vec::new();
    node(&mut sink, dir, name, &st, &mut buf, &mut rel, &mut irregular)?;
    let digest = sink.hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(NarInfo {
        hash: format!("sha256:{hex}"),
        size: sink.size,
    })
}

fn node(
    sink: &mut Sink,
    dir: BorrowedFd,
    name: &std::ffi::OsStr,
    st: &FileStat,
    buf: &mut [u8],
    rel: &mut Vec<u8>,
    irregular: &mut Option<&mut Vec<Irregularity>>,
) -> io::Result<()> {
    let mode = st.st_mode & 0o7777;
    let mut note = |what: String, rel: &[u8]| {
        if let Some(v) = irregular.as_deref_mut() {
            v.push(Irregularity {
                rel: String::from_utf8_lossy(rel).into_owned(),
                what,
            });
        }
    };
    let ft = file_type(st);
    // Nix canonicalises symlinks' times too (lutimes).
    if st.st_mtime != 1 {
        note(format!("mtime {} (Nix's is 1)", st.st_mtime), rel);
    }
    sink.str(b"(");
    match ft {
        SFlag::S_IFREG => {
            if mode != 0o444 && mode != 0o555 {
                note(format!("file mode {mode:04o} (Nix's are 0444 and 0555)"), rel);
            }
            sink.str(b"type");
            sink.str(b"regular");
            if st.st_mode & 0o100 != 0 {
                sink.str(b"executable");
                sink.str(b"");
            }
            sink.str(b"contents");
            let fd = openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            let mut f = File::from(fd);
            let size = u64::try_from(st.st_size).unwrap_or(0);
            sink.bytes(&size.to_le_bytes());
            let mut left = size;
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(buf.len()));
                let n = f.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while hashing",
                    ));
                }
                sink.bytes(&buf[..n]);
                left -= n as u64;
            }
            sink.pad(size);
        }
        SFlag::S_IFLNK => {
            sink.str(b"type");
            sink.str(b"symlink");
            sink.str(b"target");
            let t = readlinkat(dir, name)?;
            sink.str(t.as_bytes());
        }
        SFlag::S_IFDIR => {
            if mode != 0o555 {
                note(format!("directory mode {mode:04o} (Nix's is 0555)"), rel);
            }
            sink.str(b"type");
            sink.str(b"directory");
            let sub = open_dir(dir, name)?;
            let mut names: Vec<OsString> = list(sub.as_fd())?.into_iter().map(|e| e.name).collect();
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for n in names {
                let cst = fstatat(sub.as_fd(), n.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
                sink.str(b"entry");
                sink.str(b"(");
                sink.str(b"name");
                sink.str(n.as_bytes());
                sink.str(b"node");
                let len = rel.len();
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(n.as_bytes());
                node(sink, sub.as_fd(), &n, &cst, buf, rel, irregular)?;
                rel.truncate(len);
                sink.str(b")");
            }
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is a {}: not allowed in a Nix store",
                    String::from_utf8_lossy(rel),
                    crate::dirfd::kind_name(st)
                ),
            ))
        }
    }
    sink.str(b")");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn hash_of(p: &std::path::Path) -> NarInfo {
        let dir = crate::dirfd::open_root(p.parent().unwrap()).unwrap();
        hash_path(dir.as_fd(), p.file_name().unwrap(), None).unwrap()
    }

    #[test]
    fn known_nar_of_a_single_file() {
        // NAR of a non-executable file "hello\n", assembled by hand from the format.
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        let mut want = Vec::new();
        for s in [
            &b"nix-archive-1"[..],
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"hello\n",
            b")",
        ] {
            want.extend_from_slice(&(s.len() as u64).to_le_bytes());
            want.extend_from_slice(s);
            want.resize(want.len().div_ceil(8) * 8, 0);
        }
        let got = hash_of(&p);
        assert_eq!(got.size, want.len() as u64);
        let hex: String = Sha256::digest(&want).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got.hash, format!("sha256:{hex}"));
    }

    #[test]
    fn executable_bit_and_entry_order_change_the_hash() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("b"), b"1").unwrap();
        std::fs::write(d.join("a"), b"2").unwrap();
        let h1 = hash_of(&d);
        std::fs::set_permissions(d.join("a"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let h2 = hash_of(&d);
        assert_ne!(h1, h2);
        std::fs::set_permissions(d.join("a"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(h1, hash_of(&d));
    }
}
