//! Nix's garbage collector's socket, `var/nix/gc-socket/socket`, served while the
//! collection holds `gc.lock` exclusively: the protocol every Nix client follows.
//!
//! A Nix process that adds a temporary root while it cannot take `gc.lock` shared (a
//! collection runs) connects to this socket, writes the store path and a newline, and
//! waits for `1`. Without a server a client on this node gets "connection refused" (and
//! retries until `gc.lock` is free) or, with no socket file at all, fails outright. So
//! nix-seed serves it exactly as Nix's collector does: each path received becomes a
//! temporary root of this collection; if it is being deleted at that moment, the answer
//! waits until the deletion is over, so the client then sees it invalid and fetches or
//! builds it again. A client on another node (another kernel) cannot connect to a socket
//! bound here, gets "connection refused", and retries until the collection ends: it waits.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::stat::{Mode, SFlag};

use super::roots::store_name_of;
use super::temproots::hash_part;
use crate::base::dirfd::{file_type, lstat_at, mkdir_open};
use crate::base::progress::Log;

/// The temporary roots of the collection (hash parts), the ones found at its start and the
/// ones clients send meanwhile, and the paths being deleted right now.
#[derive(Default)]
pub struct Claims {
    state: Mutex<ClaimState>,
    wakeup: Condvar,
}

#[derive(Default)]
struct ClaimState {
    roots: HashSet<String>,
    pending: HashSet<String>,
}

impl Claims {
    pub fn new(roots: HashSet<String>) -> Arc<Claims> {
        Arc::new(Claims {
            state: Mutex::new(ClaimState {
                roots,
                pending: HashSet::new(),
            }),
            wakeup: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClaimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_root(&self, hash: &str) -> bool {
        self.lock().roots.contains(hash)
    }

    /// A root a client sent: kept from now on; returns once it is not being deleted.
    pub fn add(&self, hash: &str) {
        let mut s = self.lock();
        s.roots.insert(hash.to_string());
        while s.pending.contains(hash) {
            s = self.wakeup.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Right before deleting the paths with hash parts `hashes`: the indexes of those that
    /// became roots meanwhile (not to be deleted); the others are pending until
    /// [`Claims::release`], and a client sending one of them waits until then.
    pub fn claim(&self, hashes: &[&str]) -> Vec<usize> {
        let mut s = self.lock();
        let mut rooted = Vec::new();
        for (i, h) in hashes.iter().enumerate() {
            if s.roots.contains(*h) {
                rooted.push(i);
            } else {
                s.pending.insert(h.to_string());
            }
        }
        rooted
    }

    /// The pending deletions are over (the paths are gone from the database and from their
    /// names): wake the clients waiting for them.
    pub fn release(&self) {
        self.lock().pending.clear();
        self.wakeup.notify_all();
    }
}

/// The running server; stopped (and every connection closed) when dropped.
pub struct Server {
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

/// Bind `gc-socket/socket` in `var_nix` (shown as `shown`): the directory is made if
/// missing, opened without following a symlink, and an old socket there (a collection's
/// before) replaced, as Nix does; anything else by that name is refused.
fn bind(var_nix: BorrowedFd, shown: &Path) -> Result<UnixListener> {
    let dir_shown = shown.join("gc-socket");
    let (dir, _) = mkdir_open(var_nix, "gc-socket", Mode::from_bits_truncate(0o755)).map_err(|e| {
        let why = match e {
            crate::base::dirfd::MkdirOpen::Create(e) => format!("cannot create it: {e}"),
            crate::base::dirfd::MkdirOpen::Open { err, .. } => {
                format!("{err}: it must be a directory, not a symlink; remove it")
            }
        };
        crate::base::error::Invalid(format!("{}: {why}", dir_shown.display()))
    })?;
    if let Some(st) = lstat_at(dir.as_fd(), "socket")? {
        if file_type(&st) != SFlag::S_IFSOCK {
            return Err(crate::base::error::Invalid(format!(
                "{}/socket is not a socket: remove it (Nix's garbage collector binds its socket there)",
                dir_shown.display()
            ))
            .into());
        }
        match nix::unistd::unlinkat(dir.as_fd(), "socket", nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}/socket", dir_shown.display())),
        }
    }
    // Through the directory's descriptor: no symlink on the way is followed, and the
    // address stays short whatever the target's path.
    // Without /proc (never in a pod), by its path, if that fits in a socket address.
    let mut at = std::path::PathBuf::from(format!("/proc/self/fd/{}/socket", dir.as_raw_fd()));
    if !Path::new("/proc/self/fd").exists() {
        at = dir_shown.join("socket");
    }
    let listener = UnixListener::bind(&at).with_context(|| format!("cannot bind {}/socket", dir_shown.display()))?;
    // Every Nix user connects to it, as to Nix's own.
    std::fs::set_permissions(&at, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .with_context(|| format!("cannot make {}/socket usable by every user", dir_shown.display()))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl Server {
    pub fn start(var_nix: BorrowedFd, shown: &Path, claims: Arc<Claims>, log: Arc<Log>) -> Result<Server> {
        let listener = bind(var_nix, shown)?;
        let (stop_r, stop_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let thread = std::thread::Builder::new()
            .name("gc-socket".into())
            .spawn(move || serve(listener, stop_r, claims, log))
            .context("cannot start the gc socket's server")?;
        Ok(Server {
            stop: Some(stop_w),
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: UnixListener, stop: OwnedFd, claims: Arc<Claims>, log: Arc<Log>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut clients: Vec<(UnixStream, JoinHandle<()>)> = Vec::new();
    loop {
        let mut fds = [
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            break;
        }
        let Ok((stream, _)) = listener.accept() else { continue };
        let _ = stream.set_nonblocking(false);
        let Ok(mine) = stream.try_clone() else { continue };
        let claims = claims.clone();
        let log = log.clone();
        if let Ok(h) = std::thread::Builder::new()
            .name("gc-socket-client".into())
            .spawn(move || client(stream, &claims, &log))
        {
            clients.push((mine, h));
        }
        clients.retain(|(_, h)| !h.is_finished());
    }
    for (s, h) in clients {
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = h.join();
    }
}

/// One client: a store path per line, each answered `1` once it is a root.
fn client(stream: UnixStream, claims: &Claims, log: &Log) {
    let Ok(mut out) = stream.try_clone() else { return };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        match store_name_of(line.trim_end()) {
            Some(name) => {
                claims.add(hash_part(name));
                log.detail(
                    "temp-root",
                    &format!("a Nix client added the temporary root {line}"),
                    serde_json::json!({"path": line}),
                );
            }
            None => log.warn(&format!(
                "the gc socket received something that is not a store path: {line:?}"
            )),
        }
        if out.write_all(b"1").is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::{Duration, Instant};

    const PATH: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello";

    /// What a Nix client does: one path and a newline, then wait for `1`.
    fn send(socket: &Path, line: &str) -> u8 {
        let mut s = UnixStream::connect(socket).unwrap();
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut c = [0u8];
        s.read_exact(&mut c).unwrap();
        c[0]
    }

    #[test]
    fn a_client_root_is_kept_and_waits_for_a_deletion_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let var_nix = crate::base::dirfd::open_root(dir.path()).unwrap();
        let log = Arc::new(Log::new(&crate::base::progress::Output {
            progress: crate::base::progress::ProgressMode::None,
            log_format: crate::base::progress::LogFormat::Text,
            quiet: true,
            verbose: false,
        }));
        let claims = Claims::new(HashSet::new());
        let server = Server::start(var_nix.as_fd(), dir.path(), claims.clone(), log).unwrap();
        let socket = dir.path().join("gc-socket/socket");
        assert_eq!(send(&socket, PATH), b'1');
        assert!(claims.is_root("0123456789abcdfghijklmnpqrsvwxyz"));

        // A path being deleted: the client's answer waits for the deletion to be over.
        let other = "/nix/store/1123456789abcdfghijklmnpqrsvwxyz-other";
        assert!(claims.claim(&["1123456789abcdfghijklmnpqrsvwxyz"]).is_empty());
        let t0 = Instant::now();
        let s2 = socket.clone();
        let client = std::thread::spawn(move || (send(&s2, other), Instant::now()));
        std::thread::sleep(Duration::from_millis(300));
        let released = Instant::now();
        claims.release();
        let (answer, answered) = client.join().unwrap();
        assert_eq!(answer, b'1');
        assert!(answered >= released && answered - t0 >= Duration::from_millis(300));
        // And from then on it is a root: a later claim keeps it.
        assert_eq!(claims.claim(&["1123456789abcdfghijklmnpqrsvwxyz"]), vec![0]);
        claims.release();
        drop(server);
        // Stopped: nobody answers any more.
        assert!(UnixStream::connect(&socket).is_err());
    }

    #[test]
    fn a_planted_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("gc-socket")).unwrap();
        std::fs::write(dir.path().join("gc-socket/socket"), "x").unwrap();
        let var_nix = crate::base::dirfd::open_root(dir.path()).unwrap();
        let e = bind(var_nix.as_fd(), dir.path()).unwrap_err();
        assert!(e.downcast_ref::<crate::base::error::Invalid>().is_some(), "{e:#}");
        assert_eq!(std::fs::read(dir.path().join("gc-socket/socket")).unwrap(), b"x");
    }
}
