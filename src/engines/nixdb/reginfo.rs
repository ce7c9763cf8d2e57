//! Registration files: closureInfo's `registration`, the text `nix-store --load-db` and
//! `nix-store --register-validity --hash-given` read (Nix's `decodeValidPathInfo`).
//!
//! An image built with Nix often has no database, or one short of its store, but it may
//! carry this file: with it nix-seed registers the image's paths with the NAR hashes and
//! references Nix computed, instead of recomputing them. Per store path, one item a line:
//! the path, its narHash, narSize, deriver (empty for none), the number of references, then
//! the references. Malformed input is refused (exit 2) naming the file and the line: a
//! wrong registration makes a path valid with a wrong hash or an incomplete closure.

use std::collections::HashSet;
use std::path::Path;

use base64::Engine as _;

use crate::base::error::Invalid;

/// One store path's registration, as Nix stores it in `ValidPaths` and `Refs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub path: String,
    /// Always `sha256:<64 lowercase hex>`, as Nix stores `ValidPaths.hash`.
    pub hash: String,
    pub nar_size: u64,
    pub deriver: Option<String>,
    pub references: Vec<String>,
}

/// Nix's base-32 alphabet (`base32Chars` in Nix's `hash.cc`: no e, o, u, t).
const BASE32_CHARS: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
const SHA256_LEN: usize = 32;
const STORE_DIR: &str = "/nix/store/";
/// Length of a store path's hash part (`StorePath::HashLen`).
const HASH_PART_LEN: usize = 32;

/// Nix's base-32 (`printHash32`): the bytes read from the end, 5 bits a character.
pub fn nix_base32_encode(bytes: &[u8]) -> String {
    let len = (bytes.len() * 8).div_ceil(5);
    (0..len)
        .rev()
        .map(|n| {
            let b = n * 5;
            let (i, j) = (b / 8, b % 8);
            let lo = bytes[i] >> j;
            let hi = if i + 1 >= bytes.len() {
                0
            } else {
                // Widened: a shift by 8 (j = 0) is 0, as in Nix's int arithmetic.
                ((u16::from(bytes[i + 1]) << (8 - j)) & 0xff) as u8
            };
            BASE32_CHARS[usize::from((lo | hi) & 0x1f)] as char
        })
        .collect()
}

/// The inverse of [`nix_base32_encode`] for `size` bytes (Nix's `Hash::Hash` base-32
/// branch): `None` if `s` has the wrong length, a character outside the alphabet, or bits
/// beyond `size` bytes set.
pub fn nix_base32_decode(s: &str, size: usize) -> Option<Vec<u8>> {
    if size == 0 || s.len() != (size * 8).div_ceil(5) {
        return None;
    }
    let mut out = vec![0u8; size];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = BASE32_CHARS.iter().position(|&x| x == c)? as u16;
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        out[i] |= ((digit << j) & 0xff) as u8;
        let carry = digit >> (8 - j);
        if i + 1 < size {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return None;
        }
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A narHash the way Nix's `Hash::parseAny(s, htSHA256)` takes it: `sha256:` or none,
/// then base-16 (64), Nix base-32 (52) or base-64 (44); or SRI `sha256-<base64>`.
/// Returned as Nix stores it: `sha256:<base16>`.
fn parse_nar_hash(s: &str) -> Result<String, String> {
    let (ty, rest, sri) = match (s.split_once(':'), s.split_once('-')) {
        (Some((t, r)), _) => (Some(t), r, false),
        (None, Some((t, r))) => (Some(t), r, true),
        (None, None) => (None, s, false),
    };
    if let Some(t) = ty.filter(|t| *t != "sha256") {
        return Err(format!("narHash '{s}' has the type '{t}', not sha256"));
    }
    let bytes = if !sri && rest.len() == 2 * SHA256_LEN {
        rest.bytes()
            .all(|c| c.is_ascii_hexdigit())
            .then(|| (0..SHA256_LEN).map(|i| u8::from_str_radix(&rest[2 * i..2 * i + 2], 16)))
            .and_then(|v| v.collect::<Result<Vec<u8>, _>>().ok())
    } else if !sri && rest.len() == (SHA256_LEN * 8).div_ceil(5) {
        nix_base32_decode(rest, SHA256_LEN)
    } else if sri || rest.len() == SHA256_LEN.div_ceil(3) * 4 {
        base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .filter(|d| d.len() == SHA256_LEN)
    } else {
        return Err(format!("narHash '{s}' has the wrong length for a sha256 hash"));
    };
    match bytes {
        Some(b) => Ok(format!("sha256:{}", hex(&b))),
        None => Err(format!("narHash '{s}' is not a valid sha256 hash")),
    }
}

/// A store path as Nix's `parseStorePath` accepts it under `/nix/store`: a 32-character
/// Nix base-32 hash part, `-`, and a name of 1 to 211 characters of `[0-9a-zA-Z+-._?=]`.
fn check_store_path(what: &str, p: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{what} '{p}' {why}"));
    let Some(base) = p.strip_prefix(STORE_DIR) else {
        return bad("is not under /nix/store/");
    };
    let (hash, name) = (base.get(..HASH_PART_LEN), base.get(HASH_PART_LEN + 1..));
    match (hash, base.as_bytes().get(HASH_PART_LEN), name) {
        (Some(h), Some(b'-'), Some(name)) if !name.is_empty() => {
            if !h.bytes().all(|c| BASE32_CHARS.contains(&c)) {
                return bad("has a hash part that is not Nix base-32");
            }
            if name.len() > 211 {
                return bad("has a name longer than 211 characters");
            }
            if !name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c))
            {
                return bad("has a character not allowed in a store path name");
            }
            Ok(())
        }
        _ => bad("is not a store path (<32 Nix base-32 characters>-<name>)"),
    }
}

/// The lines of a registration file, numbered from 1.
struct Lines<'a> {
    it: std::iter::Enumerate<std::str::Lines<'a>>,
    last: usize,
}

impl<'a> Lines<'a> {
    /// The next line and its number, or what was expected when the file ends.
    fn next(&mut self, expected: &str) -> Result<(usize, &'a str), (usize, String)> {
        match self.it.next() {
            Some((i, l)) => {
                self.last = i + 1;
                Ok((i + 1, l))
            }
            None => Err((self.last + 1, format!("the file ends where {expected} was expected"))),
        }
    }

    /// Whether only empty lines are left.
    fn at_end(&self) -> bool {
        self.it.clone().all(|(_, l)| l.is_empty())
    }
}

fn number<T: std::str::FromStr>(l: &str, what: &str) -> Result<T, String> {
    if l.is_empty() || !l.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("{what} '{l}' is not a number"));
    }
    l.parse().map_err(|_| format!("{what} '{l}' is too large"))
}

/// One path's entry; errors carry their line number.
fn entry(lines: &mut Lines) -> Result<Registration, (usize, String)> {
    let at = |n: usize| move |e: String| (n, e);
    let (n, path) = lines.next("a store path")?;
    check_store_path("store path", path).map_err(at(n))?;
    let (n, h) = lines.next("the narHash")?;
    let hash = parse_nar_hash(h).map_err(at(n))?;
    let (n, s) = lines.next("the narSize")?;
    let nar_size = number::<u64>(s, "narSize").map_err(at(n))?;
    let (n, d) = lines.next("the deriver (or an empty line)")?;
    let deriver = if d.is_empty() {
        None
    } else {
        check_store_path("deriver", d).map_err(at(n))?;
        Some(d.to_string())
    };
    let (n, c) = lines.next("the number of references")?;
    let count = number::<usize>(c, "number of references").map_err(at(n))?;
    let mut references = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let (n, r) = lines.next("a reference")?;
        check_store_path("reference", r).map_err(at(n))?;
        references.push(r.to_string());
    }
    Ok(Registration {
        path: path.to_string(),
        hash,
        nar_size,
        deriver,
        references,
    })
}

/// Parse a registration file's `text` (shown as `shown` in errors). The last line may lack
/// its newline (Nix 2.8's `--load-db` refuses that file with "missing input"; nothing is
/// ambiguous about it) and empty lines may follow the last entry. A path listed twice is
/// refused: which registration would hold is not clear.
pub fn parse(text: &str, shown: &Path) -> anyhow::Result<Vec<Registration>> {
    let fail = |(line, msg): (usize, String)| -> anyhow::Error {
        Invalid(format!(
            "{}:{line}: {msg}; fix or regenerate the registration file (closureInfo's registration)",
            shown.display()
        ))
        .into()
    };
    let mut lines = Lines {
        it: text.lines().enumerate(),
        last: 0,
    };
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    while !lines.at_end() {
        let first = lines.last + 1;
        let r = entry(&mut lines).map_err(fail)?;
        if !seen.insert(r.path.clone()) {
            return Err(fail((first, format!("store path '{}' is listed twice", r.path))));
        }
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "reginfo_tests.rs"]
mod tests;
