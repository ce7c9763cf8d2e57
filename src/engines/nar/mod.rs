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
//!
//! The same pass can scan the serialisation for references ([`hash_and_scan`], the
//! scanner in [`scan`]): an image without a Nix database still needs each path's
//! registration as Nix computes it after a build, hash, size and references, from one
//! read of the bytes.

mod check;
pub mod scan;

pub use check::{check, Expect};

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};
use sha2::{Digest, Sha256};

use crate::base::dirfd::{file_type, list, open_dir};
pub use scan::Candidates;
use scan::RefScan;

/// Size of the read buffer: files are streamed through it, never held whole.
const BUF: usize = 128 * 1024;

/// What a NAR serialisation of a path gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// `sha256:` + 64 lowercase hex digits, as in `ValidPaths.hash`.
    pub hash: String,
    pub size: u64,
}

/// What a path's serialisation and reference scan give: its registration as Nix computes
/// it after a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub nar: NarInfo,
    /// Names (not full paths) of the candidate store paths found, sorted; may include the
    /// path itself.
    pub references: Vec<String>,
}

/// Where the NAR bytes go, in one pass: SHA-256, the size, and the reference scanner when
/// there is one.
struct Sink<'c> {
    hasher: Sha256,
    size: u64,
    scan: Option<RefScan<'c>>,
}

impl<'c> Sink<'c> {
    fn new(scan: Option<RefScan<'c>>) -> Sink<'c> {
        Sink {
            hasher: Sha256::new(),
            size: 0,
            scan,
        }
    }

    fn bytes(&mut self, b: &[u8]) {
        self.hasher.update(b);
        self.size += b.len() as u64;
        if let Some(s) = &mut self.scan {
            s.feed(b);
        }
    }

    fn finish(self) -> (NarInfo, Option<RefScan<'c>>) {
        let hex: String = self.hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let nar = NarInfo {
            hash: format!("sha256:{hex}"),
            size: self.size,
        };
        (nar, self.scan)
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
pub fn hash_path(dir: BorrowedFd, name: &OsStr, mut irregular: Option<&mut Vec<Irregularity>>) -> io::Result<NarInfo> {
    let mut sink = Sink::new(None);
    serialise(&mut sink, dir, name, &mut vec![0u8; BUF], &mut irregular)?;
    Ok(sink.finish().0)
}

/// Serialise `name` inside `dir` (a store path) once, hashing it and scanning it for the
/// hash parts of `cands`, as Nix does when it registers a build's output.
pub fn hash_and_scan(dir: BorrowedFd, name: &OsStr, cands: &Candidates) -> io::Result<Scanned> {
    scan_with(dir, name, cands, &mut vec![0u8; BUF])
}

fn scan_with(dir: BorrowedFd, name: &OsStr, cands: &Candidates, buf: &mut [u8]) -> io::Result<Scanned> {
    let mut sink = Sink::new(Some(RefScan::new(cands)));
    serialise(&mut sink, dir, name, buf, &mut None)?;
    let (nar, scan) = sink.finish();
    let references = scan.map(|s| s.references()).unwrap_or_default();
    Ok(Scanned { nar, references })
}

/// [`hash_and_scan`] for each of `names` in the store directory `store`, on `jobs` threads
/// ([`crate::base::pool::run`]); results in the order of `names`. The first error (naming its
/// path) stops the queue; so does `stop()`, which is then an error too.
pub fn scan_all(
    store: BorrowedFd,
    names: &[OsString],
    cands: &Candidates,
    jobs: usize,
    stop: &(dyn Fn() -> bool + Sync),
) -> anyhow::Result<Vec<(OsString, Scanned)>> {
    let slots: Vec<std::sync::OnceLock<Scanned>> = names.iter().map(|_| std::sync::OnceLock::new()).collect();
    let items: Vec<usize> = (0..names.len()).collect();
    crate::base::pool::run(
        &items,
        jobs,
        stop,
        || vec![0u8; BUF],
        |buf, &i| {
            let s = scan_with(store, &names[i], cands, buf)
                .map_err(|e| anyhow::anyhow!("cannot hash and scan {}: {e}", crate::base::dirfd::show(&names[i])))?;
            let _ = slots[i].set(s);
            Ok(())
        },
        drop,
    )?;
    names
        .iter()
        .zip(slots)
        .map(|(n, s)| match s.into_inner() {
            Some(s) => Ok((n.clone(), s)),
            None => Err(anyhow::anyhow!(
                "stopped before {} was scanned",
                crate::base::dirfd::show(n)
            )),
        })
        .collect()
}

fn serialise(
    sink: &mut Sink,
    dir: BorrowedFd,
    name: &OsStr,
    buf: &mut [u8],
    irregular: &mut Option<&mut Vec<Irregularity>>,
) -> io::Result<()> {
    sink.str(b"nix-archive-1");
    let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    node(sink, dir, name, &st, buf, &mut Vec::new(), irregular)
}

fn node(
    sink: &mut Sink,
    dir: BorrowedFd,
    name: &OsStr,
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
            // Hashing is not a use: with O_NOATIME it leaves the access time that
            // `nix-seed gc` reads as "recently read" alone (refused, EPERM, for a file
            // neither ours nor root's: then opened plainly).
            let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let fd = match openat(dir, name, flags | OFlag::O_NOATIME, Mode::empty()) {
                Err(nix::errno::Errno::EPERM) => openat(dir, name, flags, Mode::empty())?,
                r => r?,
            };
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
                    crate::base::dirfd::kind_name(st)
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
        let dir = crate::base::dirfd::open_root(p.parent().unwrap()).unwrap();
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

    const LIBA: &str = "0123456789abcdfghijklmnpqrsvwxyz-liba";
    const LIBB: &str = "zyxwvsrqpnmlkjihgfdcba9876543210-libb";
    const APP: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-app";
    const OTHER: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-other";

    /// A store with `APP` holding what `fill` puts in it, scanned with candidates
    /// `LIBA`, `LIBB`, `APP` (not `OTHER`); checks the NAR part against `hash_path`.
    fn scan_app(fill: impl FnOnce(&std::path::Path)) -> Vec<String> {
        let t = tempfile::tempdir().unwrap();
        let app = t.path().join(APP);
        std::fs::create_dir(&app).unwrap();
        fill(&app);
        let store = crate::base::dirfd::open_root(t.path()).unwrap();
        let cands = Candidates::new([LIBA, LIBB, APP]);
        let s = hash_and_scan(store.as_fd(), OsStr::new(APP), &cands).unwrap();
        assert_eq!(s.nar, hash_path(store.as_fd(), OsStr::new(APP), None).unwrap());
        s.references
    }

    #[test]
    fn references_in_contents_names_and_symlink_targets() {
        let none: Vec<String> = Vec::new();
        assert_eq!(scan_app(|_| {}), none);
        assert_eq!(
            scan_app(|d| std::fs::write(d.join("empty"), b"").unwrap()),
            none,
            "an empty file"
        );
        assert_eq!(
            scan_app(|d| std::fs::write(d.join("f"), format!("#!/nix/store/{LIBA}/bin/sh\n")).unwrap()),
            [LIBA]
        );
        // A candidate only in a file name, only in a symlink target.
        assert_eq!(scan_app(|d| std::fs::write(d.join(&LIBB[..33]), b"x").unwrap()), [LIBB]);
        assert_eq!(
            scan_app(|d| std::os::unix::fs::symlink(format!("/nix/store/{LIBA}/lib"), d.join("l")).unwrap()),
            [LIBA]
        );
        // Itself, and a store path that is not a candidate.
        assert_eq!(
            scan_app(|d| std::fs::write(d.join("f"), format!("/nix/store/{APP}/x /nix/store/{OTHER}")).unwrap()),
            [APP]
        );
    }

    #[test]
    fn a_reference_across_read_buffers_in_a_big_file() {
        let refs = scan_app(|d| {
            let mut data = vec![b'z'; 3 * BUF + 7];
            // Straddling the first buffer boundary, and inside a long base-32 run.
            data[BUF - 10..BUF + 22].copy_from_slice(&LIBA.as_bytes()[..32]);
            data[2 * BUF + 100..2 * BUF + 132].copy_from_slice(&LIBB.as_bytes()[..32]);
            std::fs::write(d.join("big"), data).unwrap();
        });
        assert_eq!(refs, [LIBA, LIBB]);
    }

    #[test]
    fn scan_all_keeps_the_order_and_names_the_failing_path() {
        let t = tempfile::tempdir().unwrap();
        for (n, body) in [
            (LIBA, String::new()),
            (LIBB, LIBA.to_string()),
            (APP, format!("{LIBB} {APP}")),
        ] {
            std::fs::write(t.path().join(n), body).unwrap();
        }
        let store = crate::base::dirfd::open_root(t.path()).unwrap();
        let cands = Candidates::new([LIBA, LIBB, APP]);
        let names: Vec<OsString> = [APP, LIBA, LIBB].iter().map(OsString::from).collect();
        let all = scan_all(store.as_fd(), &names, &cands, 2, &|| false).unwrap();
        let got: Vec<(&OsStr, Vec<String>)> = all.iter().map(|(n, s)| (n.as_os_str(), s.references.clone())).collect();
        let want: Vec<(&OsStr, Vec<String>)> = vec![
            (OsStr::new(APP), vec![APP.to_string(), LIBB.to_string()]),
            (OsStr::new(LIBA), vec![]),
            (OsStr::new(LIBB), vec![LIBA.to_string()]),
        ];
        assert_eq!(got, want);
        for (n, s) in &all {
            assert_eq!(s.nar, hash_path(store.as_fd(), n, None).unwrap());
        }

        let missing = [OsString::from(LIBA), OsString::from(OTHER)];
        let e = scan_all(store.as_fd(), &missing, &cands, 2, &|| false).unwrap_err();
        assert!(e.to_string().contains(OTHER), "{e}");
        let e = scan_all(store.as_fd(), &names, &cands, 2, &|| true).unwrap_err();
        assert!(e.to_string().contains("stopped"), "{e}");
    }
}
