//! Store path names, as Nix's `StorePath` checks them, and the id nix-seed gives an image
//! (a digest of its set of store path names).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use sha2::{Digest, Sha256};

/// The nix-base32 alphabet (Nix's `base32Chars`: no `e`, `o`, `u`, `t`).
pub const NIX_BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A store path name as Nix's `StorePath` accepts one: 32 nix-base32 characters (the hash
/// part), `-`, then a name of at most 211 characters from `[A-Za-z0-9+-._?=]` that does
/// not start with `.`. Everything else in a store directory is not a store path and is
/// neither copied nor counted: `.links` (Nix's optimiser index), nix-seed's temporary
/// entries, a filesystem's `lost+found`, stray files.
pub fn is_store_path_name(name: &[u8]) -> bool {
    name.len() > 33
        && name.len() <= 32 + 1 + 211
        && name[..32].iter().all(|b| NIX_BASE32.contains(b))
        && name[32] == b'-'
        && name[33] != b'.'
        && name[33..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(b))
}

/// The name of a store path (`/nix/store/<name>` → `<name>`).
pub fn store_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// SHA-256 of the sorted store path names, first 32 hex digits.
pub fn image_id(sorted: &[OsString]) -> String {
    let mut h = Sha256::new();
    for n in sorted {
        h.update(n.as_bytes());
        h.update(b"\n");
    }
    let d = h.finalize();
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_path_names() {
        assert!(is_store_path_name(b"0123456789abcdfghijklmnpqrsvwxyz-hello-2.12"));
        assert!(is_store_path_name(b"0123456789abcdfghijklmnpqrsvwxyz-a+b_c?d=e.drv"));
        assert!(!is_store_path_name(b".links"));
        assert!(!is_store_path_name(b".nix-seed-tmp-1-2-foo"));
        assert!(!is_store_path_name(b""));
        assert!(!is_store_path_name(b"lost+found"));
        // e, o, u and t are not nix-base32; the hash part is exactly 32 characters.
        assert!(!is_store_path_name(b"0123456789abcdfghijklmnpqrsvwxye-hello"));
        assert!(!is_store_path_name(b"0123456789abcdfghijklmnpqrsvwxyz0-hello"));
        assert!(!is_store_path_name(b"0123456789abcdfghijklmnpqrsvwxyz-"));
        assert!(!is_store_path_name(b"0123456789abcdfghijklmnpqrsvwxyz-.hidden"));
        assert!(!is_store_path_name(b"0123456789abcdfghijklmnpqrsvwxyz-a b"));
        assert!(!is_store_path_name(b"0123456789abcdfghijklmnpqrsvwxyz_hello"));
    }

    #[test]
    fn image_id_depends_on_the_set() {
        let a = image_id(&[OsString::from("a"), OsString::from("b")]);
        let b = image_id(&[OsString::from("a"), OsString::from("c")]);
        let ab = image_id(&[OsString::from("ab")]);
        assert_ne!(a, b);
        assert_ne!(a, ab);
        assert_eq!(a.len(), 32);
    }
}
