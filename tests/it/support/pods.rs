//! Pods on one shared Nix store, as Kubernetes runs them on one node: each pod is a mount
//! namespace AND a PID namespace (`unshare -m -p -f --mount-proc`), with the shared disk
//! bind-mounted at /nix and, if asked, a pod-private directory bind-mounted over a path
//! that every other pod (and the test itself) sees as an empty directory.
//!
//! A pod's script runs with `sh -c` as PID 1 of its namespace; a script that ends in
//! `exec nix-build ...` makes that Nix process PID 1, so two pods' Nix processes have the
//! same PID, as in two real pods.
//!
//! ```ignore
//! let disk = Disk::new(&t.path().join("disk"));   // disk.nix(): store/ and var/, at /nix in pods
//! let a = disk.pod("a").private(&home_a, &private).start("exec nix-build x.nix --out-link /p/result");
//! let o = disk.pod("b").run("exec nix-store --gc");  // to completion
//! let oa = a.wait();
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::cmd::text;

/// `NIX_CONFIG` of the pods: no substituters, no build users (root builds), the rollback
/// journal a shared disk needs, the sandbox off (builders use the host's /bin/sh).
pub fn pod_config() -> String {
    "substituters =\nbuild-users-group =\nexperimental-features = nix-command\nuse-sqlite-wal = false\nsandbox = false\n"
        .to_string()
}

/// The same with the sandbox on (root builds in a chroot under the store, `<drv>.chroot`):
/// /bin /usr /lib /lib64 of the host in it, and `gates` (where [`GatedBuild`]s keep their
/// gates and markers).
pub fn pod_config_sandbox(gates: &Path) -> String {
    format!(
        "substituters =\nbuild-users-group =\nexperimental-features = nix-command\nuse-sqlite-wal = false\nsandbox = true\nsandbox-paths = /bin /usr /lib /lib64 {}\n",
        gates.display()
    )
}

/// The shared disk: a directory holding `store/` and `var/` (made by the pods' Nix on first
/// use), bind-mounted at /nix in every pod.
#[derive(Clone, Debug)]
pub struct Disk {
    nix: PathBuf,
    config: String,
    logs: PathBuf,
}

impl Disk {
    /// A new, empty disk at `dir/nix`; pods' logs go to `dir/logs`.
    pub fn new(dir: &Path) -> Disk {
        let nix = dir.join("nix");
        std::fs::create_dir_all(&nix).unwrap();
        Disk::at(&nix, &dir.join("logs"))
    }

    /// An existing Nix root `nix` (store/ and var/); pods' logs go to `logs`.
    pub fn at(nix: &Path, logs: &Path) -> Disk {
        std::fs::create_dir_all(logs).unwrap();
        Disk {
            nix: nix.to_path_buf(),
            config: pod_config(),
            logs: logs.to_path_buf(),
        }
    }

    /// The disk's root (what is mounted at /nix): `--target` of nix-seed.
    pub fn nix(&self) -> &Path {
        &self.nix
    }

    /// This disk with another `NIX_CONFIG` for its pods.
    pub fn with_config(mut self, config: &str) -> Disk {
        self.config = config.to_string();
        self
    }

    pub fn pod(&self, name: &str) -> PodBuilder {
        PodBuilder {
            disk: self.clone(),
            name: name.to_string(),
            binds: Vec::new(),
        }
    }

    /// A store path's location on the disk as the host sees it (`/nix/store/x` → `<disk>/store/x`).
    pub fn host(&self, store_path: &str) -> PathBuf {
        self.nix.join(store_path.strip_prefix("/nix/").expect("a /nix/ path"))
    }
}

pub struct PodBuilder {
    disk: Disk,
    name: String,
    binds: Vec<(PathBuf, PathBuf)>,
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

impl PodBuilder {
    /// Bind-mount the host directory `from` over `at` in this pod only (`at` must exist:
    /// an empty directory everyone else sees). A pod-private home, emptyDir or workspace.
    pub fn private(mut self, from: &Path, at: &Path) -> PodBuilder {
        std::fs::create_dir_all(from).unwrap();
        std::fs::create_dir_all(at).unwrap();
        self.binds.push((from.to_path_buf(), at.to_path_buf()));
        self
    }

    fn command(&self, script: &str, out: &Path, err: &Path) -> Command {
        let mut setup = format!("set -e; mkdir -p /nix; mount --bind {} /nix; ", q(&self.disk.nix));
        for (from, at) in &self.binds {
            setup.push_str(&format!("mount --bind {} {}; ", q(from), q(at)));
        }
        setup.push_str("set +e\n");
        setup.push_str(script);
        let mut c = Command::new("unshare");
        c.args([
            "-m",
            "-p",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(setup)
        .env("NIX_CONFIG", &self.disk.config)
        .env_remove("NIX_REMOTE")
        .env_remove("NIX_STORE_DIR")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(err).unwrap());
        c
    }

    /// Start the pod in the background running `script` (sh); `exec` its last command to
    /// make that process PID 1 of the pod.
    pub fn start(self, script: &str) -> Pod {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self.disk.logs.join(format!("{}-{n}.out", self.name));
        let err = self.disk.logs.join(format!("{}-{n}.err", self.name));
        let child = self.command(script, &out, &err).spawn().expect("spawn unshare");
        Pod {
            name: self.name,
            script: script.to_string(),
            child: Some(child),
            out,
            err,
        }
    }

    /// Run `script` in the pod to completion.
    pub fn run(self, script: &str) -> Output {
        self.start(script).wait()
    }

    /// Run `script` in the pod, assert exit 0, return stdout.
    #[track_caller]
    pub fn ok(self, script: &str) -> String {
        let name = self.name.clone();
        let o = self.run(script);
        assert!(o.status.success(), "pod {name}: `{script}` failed:\n{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A pod running in the background (killed, with everything in its PID namespace, when
/// dropped unfinished).
pub struct Pod {
    pub name: String,
    script: String,
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Pod {
    /// Whether the pod has exited.
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_some()
    }

    /// Wait for the pod (at most 5 minutes: a hung pod fails the test).
    pub fn wait(mut self) -> Output {
        let mut child = self.child.take().unwrap();
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(300) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "pod {} hung for 5 minutes running `{}`; stderr:\n{}",
                    self.name,
                    self.script,
                    std::fs::read_to_string(&self.err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output {
            status,
            stdout: std::fs::read(&self.out).unwrap_or_default(),
            stderr: std::fs::read(&self.err).unwrap_or_default(),
        }
    }

    /// Wait and assert exit 0; returns stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        let (name, script) = (self.name.clone(), self.script.clone());
        let o = self.wait();
        assert!(o.status.success(), "pod {name}: `{script}` failed:\n{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGKILL to the pod's PID 1 (the child of unshare): the kernel kills and reaps
            // everything else in its PID namespace before PID 1 is gone, and unshare exits
            // once it has reaped PID 1. So when `wait` returns, no process of the pod holds
            // a file or a lock any more. (Killing unshare first would leave PID 1 to die
            // asynchronously of --kill-child's parent-death signal.)
            let pid = c.id();
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            for k in children.split_whitespace().filter_map(|k| k.parse::<i32>().ok()) {
                // SAFETY: kill(2) of the pod's PID 1, a child of our own child.
                unsafe { libc::kill(k, libc::SIGKILL) };
            }
            if children.trim().is_empty() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// A file the test creates to let a waiting builder go on (see [`GatedBuild`]).
pub struct Gate {
    pub path: PathBuf,
}

impl Gate {
    pub fn new(dir: &Path, name: &str) -> Gate {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        Gate { path }
    }

    pub fn open(&self) {
        std::fs::write(&self.path, b"go\n").unwrap();
    }
}

/// A Nix expression (builder /bin/sh, no sandbox needed) of two derivations: `<tag>-dep`,
/// whose output holds `data`, and `<tag>-result`, whose builder touches `started`, waits
/// for the gate, then reads the dep's `data` into its output (which refers to the dep).
pub struct GatedBuild {
    pub expr: PathBuf,
    pub started: PathBuf,
    pub gate: Gate,
}

impl GatedBuild {
    /// Write the expression into `dir` (the gate and the marker live there too; `dir` must
    /// be visible in the pods: not a pod-private directory).
    pub fn new(dir: &Path, tag: &str) -> GatedBuild {
        std::fs::create_dir_all(dir).unwrap();
        let started = dir.join(format!("{tag}.started"));
        let _ = std::fs::remove_file(&started);
        let gate = Gate::new(dir, &format!("{tag}.gate"));
        let expr = dir.join(format!("{tag}.nix"));
        std::fs::write(
            &expr,
            format!(
                r#"let
  mk = {{ name, script, ... }}@a: derivation (removeAttrs a [ "script" ] // {{
    system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
    args = [ "-c" script ];
  }});
  dep = mk {{ name = "{tag}-dep"; script = "mkdir $out; echo dep-data-{tag} > $out/data"; }};
in mk {{
  name = "{tag}-result"; inherit dep; started = "{started}"; gate = "{gate}";
  script = "touch $started; while [ ! -e $gate ]; do sleep 0.05; done; mkdir $out; cat $dep/data > $out/data; echo $dep > $out/dep";
}}
"#,
                started = started.display(),
                gate = gate.path.display(),
            ),
        )
        .unwrap();
        GatedBuild { expr, started, gate }
    }

    /// The pod script: `exec nix-build` (PID 1) with the result link at `out_link`.
    pub fn script(&self, out_link: &Path) -> String {
        format!("exec nix-build {} --out-link {}", q(&self.expr), q(out_link))
    }

    /// Wait (up to 120 s) until the result's builder runs, waiting at its gate.
    pub fn wait_started(&self) {
        let started = self.started.clone();
        super::wait_for(120, "the gated builder to start", move || started.exists());
    }
}
