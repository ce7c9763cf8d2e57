//! Nix's `nix.conf`, read as Nix reads it, for what nix-seed must know of the pods'
//! settings: whether the collector keeps derivers (`keep-derivations`) and outputs
//! (`keep-outputs`), and whether the pods' Nix would start its own collector on the shared
//! store (`min-free`).
//!
//! The syntax is Nix's (`AbstractConfig::applyConfig`, checked against Nix 2.8): a `#`
//! starts a comment anywhere on a line; what is left is split on blanks; a line is
//! `name = value...` (the `=` a word of its own: `a=b` is malformed, as in Nix; the value
//! is the remaining words joined by one space, possibly empty), `include FILE` or
//! `!include FILE` (relative to the including file's directory; a missing `!include` is
//! skipped, a missing `include` is an error). A malformed line is an error naming file and
//! line, as Nix refuses to start on one. Unknown names are kept and not judged (Nix only
//! warns). The settings nix-seed interprets are checked as Nix checks them: booleans are
//! `true`/`yes`/`1` or `false`/`no`/`0`; `min-free` is bytes, with an optional `K`, `M`,
//! `G` or `T` (powers of 1024; Nix 2.8 itself takes plain bytes only, later versions take
//! the suffixes).
//!
//! [`NixConf::locate`] finds the file Nix would read: `$NIX_CONF_DIR/nix.conf` when
//! `NIX_CONF_DIR` is set (Nix then does not read `/etc/nix`), else `/etc/nix/nix.conf`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::base::error::Invalid;

/// Includes nested deeper than this are refused (a file that includes itself, directly or
/// not, would otherwise never end; Nix itself has no limit and overflows its stack).
pub const MAX_INCLUDE_DEPTH: usize = 16;

/// Nix's names for the settings nix-seed interprets, with their aliases (Nix accepts
/// both; the last assignment to either wins).
const KEEP_DERIVATIONS: [&str; 2] = ["keep-derivations", "gc-keep-derivations"];
const KEEP_OUTPUTS: [&str; 2] = ["keep-outputs", "gc-keep-outputs"];
const MIN_FREE: &str = "min-free";

/// The settings of one `nix.conf` and the files it includes, in the order Nix applies
/// them. [`NixConf::default`] is a file that sets nothing: Nix's defaults.
#[derive(Debug, Clone, Default)]
pub struct NixConf {
    assignments: Vec<Assignment>,
}

#[derive(Debug, Clone)]
struct Assignment {
    name: String,
    value: String,
    /// `FILE:LINE`, for messages.
    origin: String,
}

impl NixConf {
    /// Reads `path` and what it includes. A missing or unreadable file, a malformed line
    /// or an invalid value of a setting nix-seed interprets is an error naming the file
    /// (and the line): exit 2 for bad input.
    pub fn read(path: &Path) -> Result<NixConf> {
        let mut conf = NixConf::default();
        conf.read_file(path, None, 0)?;
        Ok(conf)
    }

    /// The value last assigned to `name`, if any is.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.last(&[name]).map(|a| a.value.as_str())
    }

    /// Whether the collector keeps the derivers of live paths (Nix's default: true).
    pub fn keep_derivations(&self) -> bool {
        self.last(&KEEP_DERIVATIONS)
            .is_none_or(|a| parse_bool(&a.value) != Some(false))
    }

    /// Whether the collector keeps the outputs of live derivations (Nix's default: false).
    pub fn keep_outputs(&self) -> bool {
        self.last(&KEEP_OUTPUTS)
            .is_some_and(|a| parse_bool(&a.value) == Some(true))
    }

    /// Why the pods' Nix would collect garbage on its own, if it would: `min-free` set above
    /// 0 makes every Nix process that builds or substitutes start Nix's collector when free
    /// space falls below it. None when `min-free` is unset or 0.
    pub fn auto_gc(&self) -> Option<String> {
        let a = self.last(&[MIN_FREE])?;
        match parse_size(&a.value) {
            Some(0) => None,
            Some(n) => Some(format!(
                "min-free = {} ({n} bytes, {}) enables Nix's automatic garbage collection: a Nix \
                 process that builds or substitutes runs Nix's collector when free space falls below it",
                a.value, a.origin
            )),
            // Refused by read(); a NixConf is only made by read() and default().
            None => None,
        }
    }

    /// The `nix.conf` to read: `explicit` if given (whether it exists or not: the caller
    /// reports a missing one); else `$NIX_CONF_DIR/nix.conf` when `NIX_CONF_DIR` is set and
    /// non-empty, else `/etc/nix/nix.conf`, in both cases only if it exists (None: Nix's
    /// defaults).
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_path_buf());
        }
        let dir = match std::env::var_os("NIX_CONF_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => PathBuf::from("/etc/nix"),
        };
        let file = dir.join("nix.conf");
        file.exists().then_some(file)
    }

    fn last(&self, names: &[&str]) -> Option<&Assignment> {
        self.assignments.iter().rev().find(|a| names.contains(&a.name.as_str()))
    }

    /// Applies `path`; `from` is the `FILE:LINE` that included it.
    fn read_file(&mut self, path: &Path, from: Option<&str>, depth: usize) -> Result<()> {
        if depth > MAX_INCLUDE_DEPTH {
            return Err(Invalid(format!(
                "{}: includes nested deeper than {MAX_INCLUDE_DEPTH} (does a file include itself?)",
                from.unwrap_or("?")
            ))
            .into());
        }
        let text = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Invalid(match from {
                    Some(from) => format!("{}: included file {} does not exist", from, path.display()),
                    None => format!("nix.conf {} does not exist", path.display()),
                })
                .into())
            }
            Err(e) => return Err(e).with_context(|| format!("reading nix.conf {}", path.display())),
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        for (i, line) in text.split('\n').enumerate() {
            let origin = format!("{}:{}", path.display(), i + 1);
            let line = line.split('#').next().unwrap_or("");
            let words: Vec<&str> = line.split([' ', '\t', '\r']).filter(|w| !w.is_empty()).collect();
            let malformed = || Invalid(format!("{origin}: illegal configuration line '{}'", line.trim()));
            match words.as_slice() {
                [] => continue,
                [incl, _, ..] if *incl == "include" || *incl == "!include" => {
                    let [_, file] = words.as_slice() else {
                        return Err(malformed().into());
                    };
                    let target = dir.join(file);
                    if *incl == "!include" && !target.exists() {
                        continue;
                    }
                    self.read_file(&target, Some(&origin), depth + 1)?;
                }
                [name, "=", value @ ..] => {
                    let value = value.join(" ");
                    check(name, &value, &origin)?;
                    self.assignments.push(Assignment {
                        name: name.to_string(),
                        value,
                        origin,
                    });
                }
                _ => return Err(malformed().into()),
            }
        }
        Ok(())
    }
}

/// Refuses an invalid value of a setting nix-seed interprets, as Nix refuses to start on one.
fn check(name: &str, value: &str, origin: &str) -> Result<()> {
    if KEEP_DERIVATIONS.contains(&name) || KEEP_OUTPUTS.contains(&name) {
        if parse_bool(value).is_none() {
            return Err(Invalid(format!(
                "{origin}: boolean setting '{name}' has invalid value '{value}' (true or false)"
            ))
            .into());
        }
    } else if name == MIN_FREE && parse_size(value).is_none() {
        return Err(Invalid(format!(
            "{origin}: setting '{name}' has invalid value '{value}' (bytes, optionally with K, M, G or T)"
        ))
        .into());
    }
    Ok(())
}

/// A boolean as Nix parses one.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// A size as Nix's `string2IntWithUnitPrefix` parses one: decimal digits, then optionally
/// one of K, M, G, T (either case; powers of 1024). None when invalid or above 2^64 - 1.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()?.to_ascii_uppercase() {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        b'T' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::error::{exit_code, USAGE};

    fn conf(text: &str) -> Result<NixConf> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nix.conf");
        std::fs::write(&path, text).unwrap();
        NixConf::read(&path)
    }

    fn err(text: &str) -> String {
        let e = conf(text).unwrap_err();
        assert_eq!(exit_code(&e, None), USAGE, "{e:#}");
        format!("{e:#}")
    }

    #[test]
    fn nothing_set_is_nix_defaults() {
        for c in [
            NixConf::default(),
            conf("").unwrap(),
            conf("# only a comment\n\n   \n").unwrap(),
        ] {
            assert!(c.keep_derivations());
            assert!(!c.keep_outputs());
            assert_eq!(c.auto_gc(), None);
            assert_eq!(c.get("keep-outputs"), None);
        }
    }

    #[test]
    fn assignments_comments_blanks_and_last_wins() {
        let c = conf(
            "# the pods' nix.conf\n\
             keep-outputs = true   # for developers\n\
             \tsubstituters =  https://a   https://b \n\
             keep-derivations\t=\tfalse\r\n\
             keep-outputs = false\n\
             empty =\n\
             some-future-setting = whatever it is\n",
        )
        .unwrap();
        assert!(!c.keep_outputs(), "the last assignment wins");
        assert!(!c.keep_derivations());
        assert_eq!(c.get("substituters"), Some("https://a https://b"));
        assert_eq!(c.get("empty"), Some(""));
        assert_eq!(c.get("some-future-setting"), Some("whatever it is"));
        assert_eq!(c.get("keep-outputs"), Some("false"));
        assert_eq!(c.get("nothing"), None);
    }

    #[test]
    fn booleans_as_nix_parses_them() {
        for (v, want) in [
            ("true", true),
            ("yes", true),
            ("1", true),
            ("false", false),
            ("no", false),
            ("0", false),
        ] {
            let c = conf(&format!("keep-outputs = {v}\nkeep-derivations = {v}\n")).unwrap();
            assert_eq!(c.keep_outputs(), want, "{v}");
            assert_eq!(c.keep_derivations(), want, "{v}");
        }
        for v in ["True", "on", "", "true false"] {
            let e = err(&format!("x = 1\nkeep-outputs = {v}\n"));
            assert!(e.contains("nix.conf:2:") && e.contains("keep-outputs"), "{e}");
        }
    }

    #[test]
    fn aliases_count_and_the_last_of_either_wins() {
        assert!(conf("gc-keep-outputs = true\n").unwrap().keep_outputs());
        assert!(!conf("gc-keep-derivations = false\n").unwrap().keep_derivations());
        assert!(!conf("gc-keep-outputs = true\nkeep-outputs = false\n")
            .unwrap()
            .keep_outputs());
        assert!(conf("keep-outputs = false\ngc-keep-outputs = true\n")
            .unwrap()
            .keep_outputs());
    }

    #[test]
    fn malformed_lines_are_errors_naming_file_and_line() {
        for (text, line) in [
            ("keep-outputs=true\n", 1),
            ("a = 1\nkeep-outputs\n", 2),
            ("a = 1\n\nfoo bar\n", 3),
            ("include a b\n", 1),
            ("include = x\n", 1),
        ] {
            let e = err(text);
            assert!(
                e.contains(&format!("nix.conf:{line}: illegal configuration line")),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn min_free_sizes() {
        for (v, bytes) in [
            ("1", 1u64),
            ("1024", 1024),
            ("1K", 1 << 10),
            ("500M", 500 << 20),
            ("1G", 1 << 30),
            ("2t", 2 << 40),
        ] {
            let why = conf(&format!("min-free = {v}\n")).unwrap().auto_gc().expect(v);
            assert!(
                why.contains(&format!("({bytes} bytes")) && why.contains("nix.conf:1"),
                "{why}"
            );
        }
        for v in ["0", "0G"] {
            assert_eq!(conf(&format!("min-free = {v}\n")).unwrap().auto_gc(), None, "{v}");
        }
        assert_eq!(
            conf("min-free = 1G\nmin-free = 0\n").unwrap().auto_gc(),
            None,
            "the last wins"
        );
        for v in ["-1", "1.5G", "abc", "G", "1X", "", "99999999999T"] {
            let e = err(&format!("min-free = {v}\n"));
            assert!(e.contains("nix.conf:1:") && e.contains("min-free"), "{v}: {e}");
        }
    }

    #[test]
    fn includes_are_relative_to_the_including_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("nix.conf"),
            "keep-outputs = false\ninclude sub/a.conf\nb = 2\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sub/a.conf"),
            "keep-outputs = true\n!include gone.conf\ninclude b.conf\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("sub/b.conf"), "b = 1\nmin-free = 1G\n").unwrap();
        let c = NixConf::read(&dir.path().join("nix.conf")).unwrap();
        assert!(c.keep_outputs(), "set in sub/a.conf, after the main file's false");
        assert_eq!(c.get("b"), Some("2"), "the main file's line after the include wins");
        assert!(c.auto_gc().unwrap().contains("sub/b.conf:2"));

        // A missing `include` is an error; an absolute one is taken as is.
        std::fs::write(dir.path().join("nix.conf"), "include missing.conf\n").unwrap();
        let e = NixConf::read(&dir.path().join("nix.conf")).unwrap_err();
        assert_eq!(exit_code(&e, None), USAGE);
        assert!(format!("{e:#}").contains("nix.conf:1: included file") && format!("{e:#}").contains("missing.conf"));
        let abs = dir.path().join("sub/b.conf");
        std::fs::write(dir.path().join("nix.conf"), format!("include {}\n", abs.display())).unwrap();
        assert_eq!(NixConf::read(&dir.path().join("nix.conf")).unwrap().get("b"), Some("1"));
    }

    #[test]
    fn include_loops_stop() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nix.conf"), "include other.conf\n").unwrap();
        std::fs::write(dir.path().join("other.conf"), "!include nix.conf\n").unwrap();
        let e = NixConf::read(&dir.path().join("nix.conf")).unwrap_err();
        assert_eq!(exit_code(&e, None), USAGE);
        assert!(format!("{e:#}").contains("nested deeper than"), "{e:#}");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = NixConf::read(&dir.path().join("nix.conf")).unwrap_err();
        assert_eq!(exit_code(&e, None), USAGE);
        assert!(format!("{e:#}").contains("does not exist"));
    }

    #[test]
    fn the_shipped_nix_conf_parses_and_keeps_automatic_gc_off() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes/nix.conf");
        let c = NixConf::read(&path).unwrap();
        assert_eq!(c.get("min-free"), Some("0"), "set explicitly, overriding anything else");
        assert_eq!(c.auto_gc(), None);
        assert_eq!(c.get("use-sqlite-wal"), Some("false"));
        assert!(
            c.keep_derivations() && !c.keep_outputs(),
            "Nix's defaults unless the team changes them"
        );
    }

    #[test]
    fn locate_explicit_then_nix_conf_dir() {
        // The only test in this binary that touches NIX_CONF_DIR.
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.conf");
        assert_eq!(
            NixConf::locate(Some(&missing)),
            Some(missing.clone()),
            "explicit: the caller reports it"
        );

        std::env::set_var("NIX_CONF_DIR", dir.path());
        assert_eq!(
            NixConf::locate(None),
            None,
            "NIX_CONF_DIR without nix.conf: Nix's defaults, not /etc/nix"
        );
        std::fs::write(dir.path().join("nix.conf"), "").unwrap();
        assert_eq!(NixConf::locate(None), Some(dir.path().join("nix.conf")));
        assert_eq!(NixConf::locate(Some(&missing)), Some(missing), "explicit wins");
        std::env::remove_var("NIX_CONF_DIR");
        let etc = Path::new("/etc/nix/nix.conf");
        assert_eq!(NixConf::locate(None), etc.exists().then(|| etc.to_path_buf()));
    }
}
