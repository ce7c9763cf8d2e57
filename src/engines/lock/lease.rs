//! The lease: who holds the lock, written by the holder and rewritten at every heartbeat;
//! read by waiters as untrusted input (at most 4 KiB, values reduced to printable ASCII of
//! bounded length, anything unparsable shown as an unknown holder).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

pub(super) const LEASE_MAGIC: &str = "nix-seed lease v1";
const MAX_LEASE: usize = 4096;
/// The lease field with the holder's heartbeat period in milliseconds.
pub(super) const HEARTBEAT_FIELD: &str = "heartbeat_every_ms";

/// Who holds the lock, as far as the (untrusted) lease says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    pub host: Option<String>,
    pub pod: Option<String>,
    pub node: Option<String>,
    pub pid: Option<String>,
    pub started: Option<String>,
    pub heartbeat: Option<String>,
    /// The holder's heartbeat period, if its lease says (versions before it did not).
    pub heartbeat_every: Option<Duration>,
}

impl Lease {
    pub fn parse(raw: &[u8]) -> Option<Lease> {
        let raw = &raw[..raw.len().min(MAX_LEASE)];
        let text = String::from_utf8_lossy(raw);
        let mut lines = text.lines();
        if lines.next()?.trim() != LEASE_MAGIC {
            return None;
        }
        let mut l = Lease::default();
        for line in lines {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = Some(sanitize(v));
            match k.trim() {
                "host" => l.host = v,
                "pod" => l.pod = v,
                "node" => l.node = v,
                "pid" => l.pid = v,
                "started" => l.started = v,
                "heartbeat" => l.heartbeat = v,
                HEARTBEAT_FIELD => l.heartbeat_every = v.and_then(|v| v.parse().ok()).map(Duration::from_millis),
                _ => {}
            }
        }
        Some(l)
    }

    /// Who holds the lock (none: no lease, or an unparsable one), without the heartbeat
    /// counter: changes when the holder does, not at each of its heartbeats.
    pub(super) fn holder(raw: &[u8]) -> Option<Lease> {
        Lease::parse(raw).map(|l| Lease { heartbeat: None, ..l })
    }

    /// Nothing written yet (a holder that has just taken the lock).
    pub(super) fn is_blank(raw: &[u8]) -> bool {
        raw.iter().all(|b| b.is_ascii_whitespace())
    }

    pub fn describe(raw: &[u8]) -> String {
        if Lease::is_blank(raw) {
            return "an unknown holder (no lease written yet)".into();
        }
        let Some(l) = Lease::parse(raw) else {
            return "an unknown holder (the lock file does not hold a nix-seed lease)".into();
        };
        let q = |o: &Option<String>| o.clone().unwrap_or_else(|| "?".into());
        let mut s = format!("pod {} (host {}, pid {}", q(&l.pod), q(&l.host), q(&l.pid));
        if let Some(n) = &l.node {
            s.push_str(&format!(", node {n}"));
        }
        if let Some(t) = l.started.as_deref().and_then(|t| t.parse::<u64>().ok()) {
            let when = UNIX_EPOCH + Duration::from_secs(t);
            s.push_str(&format!(", since {}", humantime::format_rfc3339_seconds(when)));
        }
        s.push(')');
        s
    }

    pub(super) fn fields(raw: &[u8]) -> serde_json::Value {
        match Lease::parse(raw) {
            Some(l) => json!({"holder_pod": l.pod, "holder_host": l.host, "holder_pid": l.pid,
                              "holder_node": l.node, "holder_started": l.started}),
            None => json!({"holder": null}),
        }
    }
}

/// Printable ASCII only, at most 100 characters: a lease may contain anything.
fn sanitize(v: &str) -> String {
    v.trim()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(100)
        .collect()
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(super) struct Me {
    host: String,
    pod: String,
    node: Option<String>,
    pid: u32,
    started: u64,
    every: Duration,
}

impl Me {
    pub(super) fn new(every: Duration) -> Me {
        let host = nix::unistd::gethostname().map_or_else(|_| "?".into(), |h| h.to_string_lossy().into_owned());
        Me {
            pod: std::env::var("HOSTNAME").unwrap_or_else(|_| host.clone()),
            host,
            node: std::env::var("NODE_NAME").ok().filter(|s| !s.is_empty()),
            pid: std::process::id(),
            started: now_unix(),
            every,
        }
    }

    pub(super) fn lease(&self, beat: u64) -> String {
        let mut s = format!(
            "{LEASE_MAGIC}\nhost={}\npod={}\npid={}\nstarted={}\nheartbeat={} {}\n{HEARTBEAT_FIELD}={}\nversion={}\n",
            sanitize(&self.host),
            sanitize(&self.pod),
            self.pid,
            self.started,
            beat,
            now_unix(),
            self.every.as_millis(),
            env!("CARGO_PKG_VERSION")
        );
        if let Some(n) = &self.node {
            s.push_str(&format!("node={}\n", sanitize(n)));
        }
        s
    }
}

pub(super) fn write_lease(f: &File, text: &str) -> std::io::Result<()> {
    f.write_all_at(text.as_bytes(), 0)?;
    f.set_len(text.len() as u64)
}

pub(super) fn read_lease(f: &File) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_LEASE];
    let n = f.read_at(&mut buf, 0).unwrap_or(0);
    buf.truncate(n);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_roundtrip_and_garbage() {
        let me = Me {
            host: "node-1".into(),
            pod: "ide-abc".into(),
            node: Some("n1".into()),
            pid: 42,
            started: 0,
            every: Duration::from_millis(1500),
        };
        let l = Lease::parse(me.lease(3).as_bytes()).unwrap();
        assert_eq!(l.pod.as_deref(), Some("ide-abc"));
        assert_eq!(l.pid.as_deref(), Some("42"));
        assert_eq!(l.heartbeat_every, Some(Duration::from_millis(1500)));
        assert!(Lease::describe(me.lease(3).as_bytes()).contains("pod ide-abc (host node-1, pid 42, node n1"));
        assert!(Lease::describe(b"").contains("no lease"));
        assert!(Lease::describe(b"\x00\xff garbage").contains("unknown holder"));
        let huge = vec![b'x'; 10 << 20];
        assert!(Lease::describe(&huge).contains("unknown holder"));
        let evil = format!("{LEASE_MAGIC}\npod=\x1b[31mred\x1b[0m{}\n", "y".repeat(5000));
        let d = Lease::describe(evil.as_bytes());
        assert!(!d.contains('\x1b'));
        assert!(d.len() < 300, "{d}");
    }
}
