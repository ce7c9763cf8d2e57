//! `nix-seed install DEST`: the hand-off of the static binary through an emptyDir.

use std::os::unix::fs::PermissionsExt;

use crate::support;
use crate::support::cmd::{assert_code, assert_ok, run, stderr};

#[test]
fn installs_a_runnable_copy_and_replaces_it_on_rerun() {
    let tmp = support::scratch();
    let dir = tmp.path().join("opt");
    std::fs::create_dir(&dir).unwrap();
    assert_ok(&run(["install".as_ref(), dir.as_os_str()]));
    let bin = dir.join("nix-seed");
    assert_eq!(std::fs::metadata(&bin).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(support::bin()).unwrap());
    let o = std::process::Command::new(&bin).arg("--version").output().unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("nix-seed "));
    // An init container restarted: the file is replaced whole, no temporary left.
    assert_ok(&run(["install".as_ref(), bin.as_os_str()]));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn a_missing_directory_is_a_usage_error_and_nothing_is_written() {
    let tmp = support::scratch();
    let dest = tmp.path().join("no/such/dir/nix-seed");
    let o = run(["install".as_ref(), dest.as_os_str()]);
    assert_code(&o, 2);
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// DEST whose parent is a file (or below one): the error says so, not "does not exist".
#[test]
fn a_parent_that_is_a_file_is_named_as_a_file() {
    let tmp = support::scratch();
    let file = tmp.path().join("opt");
    std::fs::write(&file, b"x").unwrap();
    for dest in [file.join("nix-seed"), file.join("bin/nix-seed")] {
        let o = run(["install".as_ref(), dest.as_os_str()]);
        assert_code(&o, 2);
        let err = stderr(&o);
        assert!(
            err.contains(&file.display().to_string()) && err.contains("file, not a directory"),
            "{err}"
        );
        assert!(!err.contains("does not exist"), "{err}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

/// `install` speaks `--log-format json` like every other subcommand: its error is one
/// JSON object.
#[test]
fn install_honours_the_json_log_format() {
    let tmp = support::scratch();
    let dest = tmp.path().join("no/such/dir/nix-seed");
    let o = run([
        "install".as_ref(),
        dest.as_os_str(),
        "--log-format".as_ref(),
        "json".as_ref(),
    ]);
    assert_code(&o, 2);
    let err = stderr(&o);
    let v: serde_json::Value = serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {err}"));
    assert_eq!(v["level"], "error", "{err}");
    assert!(v["msg"].as_str().unwrap().contains("does not exist"), "{err}");
}
