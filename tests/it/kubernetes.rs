//! The Dockerfile and the Kubernetes examples (examples/kubernetes/ and the README),
//! checked offline:
//!
//! - `hadolint Dockerfile` finds nothing, and the Dockerfile builds the way the project does;
//! - every manifest passes `kubernetes-validate --strict` against the oldest and the newest
//!   Kubernetes schema the pinned kubernetes-validate ships;
//! - every container that runs nix-seed uses only subcommands, flags and `NIX_SEED_*`
//!   variables that `nix-seed --help` / `nix-seed <sub> --help` list, has
//!   `terminationMessagePolicy: FallbackToLogsOnError`, the same resources as every other
//!   one, and (when it seeds) runs as root, names its node and seeds a mounted volume;
//! - node-oneshot.sh passes `bash -n` and shellcheck;
//! - the README, the pages in docs/ and the examples name only flags and `NIX_SEED_*`
//!   variables that exist, every relative link in README.md and docs/ reaches a file (and a
//!   heading, for an `#anchor` into a markdown page), and the README stays under 300 lines.
//!
//! The tools come from PyPI at pinned versions: `scripts/install-test-tools.sh`. Without
//! them the tests print SKIPPED, except under `CI`, where they fail.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support;
use serde_json::Value;

/// Oldest and newest schema versions that kubernetes-validate 1.37.0 ships.
const KUBERNETES_VERSIONS: &[&str] = &["1.25.0", "1.37.0"];

/// Examples that need a newer Kubernetes than the oldest above: the first schema version
/// that knows their fields (image volumes: `volumes[].image`, alpha in 1.31, beta in 1.33),
/// and the last one that does not, which must refuse them (so the check can fail).
const NEWER: &[(&str, &str, &str)] = &[("pod-image-volume.yaml", "1.31.0", "1.30.0")];

/// The files a user is told about in the README; none may go missing.
const EXPECTED_YAML: &[&str] = &[
    "cronjob-prune.yaml",
    "deployment-pvc.yaml",
    "job-oneshot.yaml",
    "nix-conf-configmap.yaml",
    "pod-handoff.yaml",
    "pod-hostpath.yaml",
    "pod-image-volume.yaml",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> PathBuf {
    root().join("examples/kubernetes")
}

fn yaml_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(examples())
        .expect("read examples/kubernetes")
        .map(|e| e.expect("dirent").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    v.sort();
    let names: BTreeSet<String> = v.iter().map(|p| name(p)).collect();
    for want in EXPECTED_YAML {
        assert!(names.contains(*want), "examples/kubernetes/{want} is missing");
    }
    v
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    eprintln!(
        "$ {cmd:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// All documents of a YAML file as JSON, read with PyYAML (installed with
/// kubernetes-validate, so present whenever the manifests can be validated at all).
fn load_yaml(path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
             json.dump(docs, sys.stdout)",
        )
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "cannot parse {} as YAML with python3 + PyYAML (scripts/install-test-tools.sh installs it): {}",
        path.display(),
        text(&out)
    );
    match serde_json::from_slice(&out.stdout).expect("python3 printed JSON") {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

/// Words of a help text, stripped of the punctuation around flags and `[env: NAME=]`.
fn words(help: &str) -> BTreeSet<String> {
    help.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `nix-seed [sub] --help`, which must succeed.
fn help(sub: Option<&str>) -> String {
    let mut cmd = Command::new(support::bin());
    cmd.args(sub).arg("--help");
    let out = cmd.output().expect("run nix-seed --help");
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The subcommands `nix-seed --help` lists under "Commands:".
fn subcommands() -> BTreeSet<String> {
    help(None)
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // A command line is indented by two spaces; wrapped help text by more.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect()
}

/// `sub` exists and every flag and `NIX_SEED_*` name in `used` is in `nix-seed sub --help`.
fn check_cli_use(where_: &str, sub: &str, flags: &[String], env: &[String]) -> Result<(), String> {
    let subs = subcommands();
    if !subs.contains(sub) {
        return Err(format!(
            "{where_}: `nix-seed {sub}` is not a subcommand of this nix-seed (it has: {subs:?})"
        ));
    }
    let known = words(&help(Some(sub)));
    for f in flags.iter().chain(env) {
        if !known.contains(f) {
            return Err(format!("{where_}: `{f}` is not in `nix-seed {sub} --help`"));
        }
    }
    Ok(())
}

#[test]
fn dockerfile_passes_hadolint() {
    if !support::require_tool("hadolint") {
        return;
    }
    let out = run(Command::new("hadolint")
        .arg("--no-color")
        .arg("Dockerfile")
        .current_dir(root()));
    assert!(out.status.success(), "hadolint Dockerfile: {}", text(&out));
    assert!(
        text(&out).trim().is_empty(),
        "hadolint printed findings: {}",
        text(&out)
    );
}

/// The image is built the way the project builds (`--release --locked`, static through
/// .cargo/config.toml), cross-compiled on the build machine for each platform: amd64 to the
/// target .cargo/config.toml sets, arm64 to aarch64, each linked by its own gcc, each with
/// its crt-static rustflags in .cargo/config.toml; no platform pinned; a scratch image with
/// only the binary as its entrypoint.
#[test]
fn dockerfile_builds_like_the_project() {
    let df = std::fs::read_to_string(root().join("Dockerfile")).expect("read Dockerfile");
    let cfg = std::fs::read_to_string(root().join(".cargo/config.toml")).expect("read .cargo/config.toml");
    let target = cfg
        .lines()
        .find_map(|l| l.trim().strip_prefix("target = "))
        .map(|t| t.trim_matches('"'))
        .expect("[build] target in .cargo/config.toml");
    let instructions: Vec<&str> = df.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let body = instructions.join("\n");
    for want in [
        "FROM --platform=$BUILDPLATFORM ",
        "ARG TARGETARCH",
        "rustup target add \"$target\"",
        "cargo build --release --locked --target \"$target\"",
        "cp \"target/$target/release/nix-seed\" /nix-seed",
        "COPY .cargo .cargo",
        "FROM scratch",
        "COPY --from=build /nix-seed /nix-seed",
        r#"ENTRYPOINT ["/nix-seed"]"#,
    ] {
        assert!(body.contains(want), "Dockerfile lacks `{want}`");
    }
    assert!(!body.contains("linux/amd64"), "the Dockerfile pins a platform");
    for (arch, rust_target, gnu) in [
        ("amd64", target, "x86_64-linux-gnu"),
        ("arm64", "aarch64-unknown-linux-gnu", "aarch64-linux-gnu"),
    ] {
        assert!(
            body.contains(&format!("{arch}) target={rust_target};")),
            "Dockerfile: {arch} must build {rust_target}"
        );
        let var = rust_target.to_uppercase().replace('-', "_");
        assert!(
            body.contains(&format!("CARGO_TARGET_{var}_LINKER={gnu}-gcc")),
            "Dockerfile: {rust_target} must link with {gnu}-gcc"
        );
        assert!(
            cfg.contains(&format!(
                "[target.{rust_target}]\nrustflags = [\"-C\", \"target-feature=+crt-static\"]"
            )),
            ".cargo/config.toml: {rust_target} must be linked with crt-static"
        );
    }
    assert!(
        !instructions.iter().any(|l| l.trim_start().starts_with("USER")),
        "the image must run as root by default (chown): no USER"
    );
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect("read .dockerignore");
    for want in ["target", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim().trim_end_matches('/') == want),
            ".dockerignore must exclude {want}"
        );
    }
}

#[test]
fn manifests_pass_kubernetes_validate() {
    if !support::require_tool("kubernetes-validate") {
        return;
    }
    let all = yaml_files();
    let newer = |f: &PathBuf| NEWER.iter().find(|(n, _, _)| name(f) == *n);
    let files: Vec<PathBuf> = all.iter().filter(|f| newer(f).is_none()).cloned().collect();
    let resources: usize = files.iter().map(|f| load_yaml(f).len()).sum();
    for (file, first, older) in NEWER {
        let f = examples().join(file);
        let n = load_yaml(&f).len();
        for version in [first, "1.37.0"] {
            let out = run(Command::new("kubernetes-validate")
                .args(["--strict", "--kubernetes-version", version])
                .arg(&f));
            let t = text(&out);
            assert!(out.status.success(), "kubernetes-validate {version} {file}: {t}");
            let passed = t.lines().filter(|l| l.contains(" passed for resource ")).count();
            assert_eq!(passed, n, "kubernetes-validate {version} {file}: {t}");
        }
        let out = run(Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", older])
            .arg(&f));
        assert!(
            !out.status.success(),
            "kubernetes-validate {older} accepted {file}, which needs {first}: the check checks nothing"
        );
    }
    for version in KUBERNETES_VERSIONS {
        let out = run(Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", version])
            .args(&files));
        let t = text(&out);
        assert!(out.status.success(), "kubernetes-validate {version}: {t}");
        // An unknown kind is only a warning (exit 0): treat it as a failure.
        let bad: Vec<&str> = t.lines().filter(|l| !l.starts_with("INFO")).collect();
        assert!(bad.is_empty(), "kubernetes-validate {version}: {bad:#?}");
        let passed = t.lines().filter(|l| l.contains(" passed for resource ")).count();
        assert_eq!(
            passed, resources,
            "kubernetes-validate {version}: not every resource was validated: {t}"
        );
    }
}

/// The pod spec of a workload document, if it has one.
fn pod_spec(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Pod" => Some(&doc["spec"]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some(&doc["spec"]["template"]["spec"]),
        "CronJob" => Some(&doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().expect("a string").to_owned()).collect())
        .unwrap_or_default()
}

fn is_nix_seed(argv: &[String]) -> bool {
    argv.first()
        .is_some_and(|c| Path::new(c).file_name().is_some_and(|n| n == "nix-seed"))
}

#[test]
fn manifests_use_the_cli_as_it_is() {
    if !support::require_tool("kubernetes-validate") {
        return;
    }
    let mut errors = Vec::new();
    let mut resources: Option<(String, Value)> = None;
    for file in yaml_files() {
        let fname = name(&file);
        let mut seeders_in_file = 0;
        for doc in load_yaml(&file) {
            let Some(spec) = pod_spec(&doc) else { continue };
            let volume_mounts = |c: &Value| -> Vec<(String, String)> {
                c["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        (
                            m["name"].as_str().unwrap().to_owned(),
                            m["mountPath"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            };
            let inits: Vec<&Value> = spec["initContainers"].as_array().into_iter().flatten().collect();
            let mains: Vec<&Value> = spec["containers"].as_array().into_iter().flatten().collect();
            for (is_init, c) in inits
                .iter()
                .map(|c| (true, *c))
                .chain(mains.iter().map(|c| (false, *c)))
            {
                let cname = c["name"].as_str().unwrap_or("?");
                let at = format!("{fname}: container {cname}");
                let argv: Vec<String> = strings(&c["command"]).into_iter().chain(strings(&c["args"])).collect();
                if !is_nix_seed(&argv) {
                    continue;
                }
                seeders_in_file += 1;
                if c["terminationMessagePolicy"] != "FallbackToLogsOnError" {
                    errors.push(format!("{at}: needs terminationMessagePolicy: FallbackToLogsOnError"));
                }
                match &resources {
                    None => resources = Some((at.clone(), c["resources"].clone())),
                    Some((first, r)) if *r != c["resources"] => errors.push(format!(
                        "{at}: resources {} differ from {first}'s {r} (keep every example the same)",
                        c["resources"]
                    )),
                    Some(_) => {}
                }
                let Some(sub) = argv.get(1) else {
                    errors.push(format!("{at}: runs nix-seed without a subcommand"));
                    continue;
                };
                let flags: Vec<String> = argv[2..]
                    .iter()
                    .filter(|a| a.starts_with('-'))
                    .map(|a| a.split('=').next().unwrap().to_owned())
                    .collect();
                let env: Vec<(String, &Value)> = c["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| (e["name"].as_str().unwrap().to_owned(), e))
                    .collect();
                let seed_env: Vec<String> = env
                    .iter()
                    .map(|(n, _)| n.clone())
                    .filter(|n| n.starts_with("NIX_SEED_"))
                    .collect();
                if let Err(e) = check_cli_use(&at, sub, &flags, &seed_env) {
                    errors.push(e);
                }
                if sub != "seed" {
                    continue;
                }
                // A seeding container: names its node in the lease, runs as root, and its
                // target is a mounted volume that the main containers mount at /nix.
                let node = env.iter().find(|(n, _)| n == "NODE_NAME");
                if node.is_none_or(|(_, e)| e["valueFrom"]["fieldRef"]["fieldPath"] != "spec.nodeName") {
                    errors.push(format!("{at}: needs NODE_NAME from the downward API (spec.nodeName)"));
                }
                if c["securityContext"]["runAsUser"] != 0 {
                    errors.push(format!("{at}: needs securityContext.runAsUser: 0 (chown)"));
                }
                let target = env
                    .iter()
                    .find(|(n, _)| n == "NIX_SEED_TARGET")
                    .and_then(|(_, e)| e["value"].as_str());
                let Some(target) = target else {
                    errors.push(format!("{at}: needs env NIX_SEED_TARGET"));
                    continue;
                };
                let Some((volume, _)) = volume_mounts(c).into_iter().find(|(_, p)| p == target) else {
                    errors.push(format!("{at}: NIX_SEED_TARGET {target} is not a volumeMount"));
                    continue;
                };
                if is_init
                    && !mains
                        .iter()
                        .any(|m| volume_mounts(m).iter().any(|(n, p)| *n == volume && p == "/nix"))
                {
                    errors.push(format!("{at}: no main container mounts volume {volume} at /nix"));
                }
            }
            if seeders_in_file == 0 {
                errors.push(format!("{fname}: a pod without a nix-seed container"));
            }
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
    eprintln!(
        "nix-seed containers' resources: {}",
        resources.expect("some nix-seed container").1
    );
}

/// `nix-seed <sub> --flags...` and `NIX_SEED_*` names written in prose, comments and
/// scripts: the flags after a `nix-seed seed|status|...` on the same line, and every
/// `NIX_SEED_*` name anywhere, must exist.
fn check_text(path: &Path) -> Vec<String> {
    let body = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let subs = subcommands();
    let all_help: BTreeSet<String> = subs.iter().flat_map(|s| words(&help(Some(s)))).collect();
    let mut errors = Vec::new();
    for (n, line) in body.replace("\\\n", " ").lines().enumerate() {
        let at = format!("{}:{}", path.strip_prefix(root()).unwrap_or(path).display(), n + 1);
        let toks: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == '`' || c == '"' || c == '\'')
            .filter(|t| !t.is_empty())
            .collect();
        for (i, t) in toks.iter().enumerate() {
            if !(t.ends_with("nix-seed") || *t == "$NIX_SEED") {
                continue;
            }
            let Some(sub) = toks.get(i + 1).filter(|s| subs.contains(**s) || **s == "install") else {
                continue;
            };
            let flags: Vec<String> = toks[i + 2..]
                .iter()
                .take_while(|a| !matches!(**a, "|" | "||" | "&&" | ";" | ")"))
                .filter(|a| a.starts_with("--") || (a.starts_with('-') && a.len() == 2))
                .map(|a| {
                    a.split('=')
                        .next()
                        .unwrap()
                        .trim_end_matches([',', '.', ':'])
                        .to_owned()
                })
                .collect();
            if let Err(e) = check_cli_use(&at, sub, &flags, &[]) {
                errors.push(e);
            }
        }
        for t in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            // `NIX_SEED_*` (the family, in prose) is not a name.
            if t.len() > "NIX_SEED_".len()
                && t.starts_with("NIX_SEED_")
                && !all_help.contains(t)
                && !NOT_FLAGS.iter().any(|(v, _)| *v == t)
            {
                errors.push(format!(
                    "{at}: {t} is not in any `nix-seed <sub> --help` (nor one of the test and script \
                     variables in NOT_FLAGS)"
                ));
            }
        }
    }
    errors
}

/// `NIX_SEED_*` variables that are not flags, which the docs may name: each is read by the
/// file given (checked, so that this list cannot outlive the variable).
const NOT_FLAGS: &[(&str, &str)] = &[
    ("NIX_SEED_FAILPOINT", "src/base/failpoint.rs"),
    ("NIX_SEED_STORM_ROUNDS", "tests/it/live_store.rs"),
    ("NIX_SEED_STORM_SEED", "tests/it/live_store.rs"),
    ("NIX_SEED_PROGRESS_INTERVAL", "src/base/progress.rs"),
    ("NIX_SEED_TERMINATION_LOG", "src/steps/report.rs"),
    ("NIX_SEED_TEST_DIR", "tests/it/support/mod.rs"),
    ("NIX_SEED_TRIXIE", "scripts/modern-nix.sh"),
    ("NIX_SEED_TRIXIE_MIRROR", "scripts/modern-nix.sh"),
    ("NIX_SEED_CROSS_TREE", "scripts/release.sh"),
    ("NIX_SEED_CROSS_SUITE", "scripts/release.sh"),
    ("NIX_SEED_APT_NO_VALID_UNTIL", "scripts/release.sh"),
    ("NIX_SEED_AARCH64_BIN", "tests/it/arm64.rs"),
    ("NIX_SEED_DEBIAN_MIRROR", "scripts/release.sh"),
    ("NIX_SEED_NETFS_BASE", "scripts/netfs.sh"),
    ("NIX_SEED_NETFS_GLUSTER_HOST", "scripts/netfs.sh"),
    ("NIX_SEED_NETFS_SSH_HOST", "scripts/netfs.sh"),
    ("NIX_SEED_NETFS_SSH_PORT", "scripts/netfs.sh"),
    ("NIX_SEED_WAL", "scripts/make-real-store.sh"),
    ("NIX_SEED_FORCE", "scripts/make-real-store.sh"),
    ("NIX_SEED_REUSE", "scripts/make-real-store.sh"),
];

/// README.md and every markdown page under docs/.
fn markdown_pages() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut dirs = vec![root().join("docs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let p = e.expect("dirent").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn prose_and_scripts_use_the_cli_as_it_is() {
    for (var, file) in NOT_FLAGS {
        let body = std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
        assert!(body.contains(var), "NOT_FLAGS: {file} does not read {var} (any more?)");
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples())
        .expect("read examples/kubernetes")
        .map(|e| e.expect("dirent").path())
        .collect();
    files.extend(markdown_pages());
    files.sort();
    let errors: Vec<String> = files.iter().flat_map(|f| check_text(f)).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

/// The lines of a markdown page outside fenced code blocks, with inline code removed.
fn prose_lines(body: &str) -> Vec<(usize, String)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (n, line) in body.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop `code` spans: a link written inside one is not a link.
        let mut kept = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                kept.push_str(part);
            }
        }
        out.push((n + 1, kept));
    }
    out
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped except `-` and `_`,
/// spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a markdown page has: its headings' slugs (a repeated heading gets `-1`,
/// `-2`, ... as on GitHub) and explicit `<a id="...">`/`<a name="...">`.
fn anchors(page: &Path) -> BTreeSet<String> {
    let body = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("read {}: {e}", page.display()));
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut fenced = false;
    for line in body.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if t.starts_with('#') {
            let text = t.trim_start_matches('#');
            if text.starts_with(' ') {
                let base = slug(text);
                let mut s = base.clone();
                let mut k = 0;
                while seen.contains(&s) {
                    k += 1;
                    s = format!("{base}-{k}");
                }
                seen.insert(s);
            }
        }
        for attr in ["<a id=\"", "<a name=\""] {
            let mut rest = line;
            while let Some(i) = rest.find(attr) {
                rest = &rest[i + attr.len()..];
                if let Some(j) = rest.find('"') {
                    seen.insert(rest[..j].to_owned());
                }
            }
        }
    }
    seen
}

/// The targets of the inline links `[text](target)` and reference definitions
/// `[ref]: target` of a markdown page, with their line numbers.
fn links(page: &Path) -> Vec<(usize, String)> {
    let body = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("read {}: {e}", page.display()));
    let mut out = Vec::new();
    for (n, line) in prose_lines(&body) {
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find([')', ' ']).unwrap_or(rest.len());
            out.push((n, rest[..end].to_owned()));
        }
        let t = line.trim_start();
        if t.starts_with('[') && !t.starts_with("[ ]") {
            if let Some(i) = t.find("]: ") {
                out.push((n, t[i + 3..].split_whitespace().next().unwrap_or("").to_owned()));
            }
        }
    }
    out
}

#[test]
fn docs_links_resolve_and_readme_is_short() {
    let mut errors = Vec::new();
    let mut count = 0;
    for page in markdown_pages() {
        let shown = page.strip_prefix(root()).unwrap().display().to_string();
        for (n, target) in links(&page) {
            let at = format!("{shown}:{n}: link `{target}`");
            if target.is_empty() {
                errors.push(format!("{at}: empty"));
                continue;
            }
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            count += 1;
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            if file.starts_with('/') {
                errors.push(format!("{at}: absolute; write it relative to {shown}"));
                continue;
            }
            let dest = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !dest.exists() {
                errors.push(format!("{at}: {} does not exist", dest.display()));
                continue;
            }
            if let Some(a) = anchor {
                if dest.extension().is_none_or(|x| x != "md") {
                    errors.push(format!("{at}: an anchor into a file that is not markdown"));
                } else if !anchors(&dest).contains(a) {
                    errors.push(format!(
                        "{at}: no heading or <a id> gives the anchor #{a} in {} (it has: {:?})",
                        dest.strip_prefix(root()).unwrap_or(&dest).display(),
                        anchors(&dest)
                    ));
                }
            }
        }
    }
    assert!(count > 0, "no relative links found: the link parser is broken");
    let readme = std::fs::read_to_string(root().join("README.md")).expect("read README.md");
    let lines = readme.lines().count();
    if lines >= 300 {
        errors.push(format!(
            "README.md has {lines} lines: keep it under 300 (details belong in docs/)"
        ));
    }
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug(" After a crash"), "after-a-crash");
    assert_eq!(slug(" `seed --recheck`: drift"), "seed---recheck-drift");
    assert_eq!(slug(" GC roots (`gcroots`)"), "gc-roots-gcroots");
    assert_eq!(slug(" Nix's locks, in order"), "nixs-locks-in-order");
    assert_eq!(slug(" snake_case and-dash"), "snake_case-and-dash");
}

#[test]
fn nix_conf_configmap_matches_nix_conf() {
    if !support::require_tool("kubernetes-validate") {
        return;
    }
    let conf = std::fs::read_to_string(examples().join("nix.conf")).expect("read nix.conf");
    for want in ["use-sqlite-wal = false", "auto-optimise-store = false", "min-free = 0"] {
        assert!(conf.lines().any(|l| l.trim() == want), "nix.conf lacks `{want}`");
    }
    let docs = load_yaml(&examples().join("nix-conf-configmap.yaml"));
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").expect("a ConfigMap");
    assert_eq!(
        cm["data"]["nix.conf"].as_str(),
        Some(conf.as_str()),
        "nix-conf-configmap.yaml's data.nix.conf must be nix.conf verbatim"
    );
}

#[test]
fn node_oneshot_script_is_valid() {
    let script = examples().join("node-oneshot.sh");
    let out = run(Command::new("bash").arg("-n").arg(&script));
    assert!(out.status.success(), "bash -n: {}", text(&out));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&script).unwrap().permissions());
    assert!(mode & 0o111 != 0, "node-oneshot.sh must be executable");
    if !support::require_tool("shellcheck") {
        return;
    }
    let out = run(Command::new("shellcheck").arg(&script));
    assert!(out.status.success(), "shellcheck: {}", text(&out));
}

/// `scripts/demo.sh` lets a user keep the page cache (`--no-drop-caches`): its usage says
/// so, and it accepts the flag (a bad flag stops it before it builds anything).
#[test]
fn the_demo_can_skip_dropping_the_page_cache() {
    let demo = root().join("scripts/demo.sh");
    let o = std::process::Command::new("bash")
        .arg(&demo)
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("[--no-drop-caches]"));
    let script = std::fs::read_to_string(&demo).unwrap();
    assert!(script.contains("--no-drop-caches) drop=0"), "the flag is parsed");
    assert!(
        script.contains("dropping the page cache of the whole machine"),
        "the demo says when it drops the cache"
    );
}
