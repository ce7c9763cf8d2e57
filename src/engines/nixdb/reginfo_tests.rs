//! Registration files: each narHash form Nix writes, Nix's base-32 against vectors from
//! real Nix, and every kind of malformed input refused with its line.

use std::path::Path;

use sha2::Digest;

use super::*;

/// sha256("nix-seed\n") in Nix's three forms, from real Nix 2.8 (Debian's nix-bin):
/// `nix-hash --type sha256 --to-base32 <hex>` and `nix hash to-sri --type sha256 <hex>`.
const HEX: &str = "1331a44b42fed008077d5809411fb674db6a9461fea4e999729175adc4c1231d";
const B32: &str = "0793q72asxcifacyk97yc6a6mnvlnqgl22aqgl3hil7y895s8c8k";
const SRI: &str = "sha256-EzGkS0L+0AgHfVgJQR+2dNtqlGH+pOmZcpF1rcTBIx0=";

const A: &str = "/nix/store/0793q72asxcifacyk97yc6a6mnvlnqgl-a";
const B: &str = "/nix/store/cx2j60ggrnmqjrs54c0yzkdbi5kla8q1-b-1.0";
const D: &str = "/nix/store/00000000000000000000000000000000-b-1.0.drv";

fn file(hash: &str) -> String {
    format!("{A}\n{hash}\n120\n\n2\n{A}\n{B}\n{B}\nsha256:{HEX}\n7\n{D}\n0\n")
}

fn err(text: &str) -> String {
    let e = parse(text, Path::new("/img/registration")).unwrap_err();
    assert!(e.downcast_ref::<Invalid>().is_some(), "exit 2: {e:#}");
    format!("{e:#}")
}

#[test]
fn nix_base32_matches_real_nix() {
    // `nix-hash --type sha256 --to-base32` (Nix 2.8) of 32 zero bytes, 32 0xff bytes,
    // and 01 followed by 31 zero bytes (the byte order is reversed).
    let cases: [(Vec<u8>, String); 3] = [
        (vec![0; 32], "0".repeat(52)),
        (vec![0xff; 32], format!("1{}", "z".repeat(51))),
        ([vec![1], vec![0; 31]].concat(), format!("{}1", "0".repeat(51))),
    ];
    for (bytes, want) in cases {
        assert_eq!(nix_base32_encode(&bytes), want);
        assert_eq!(nix_base32_decode(&want, 32).unwrap(), bytes);
    }
    let h: Vec<u8> = sha2::Sha256::digest(b"nix-seed\n").to_vec();
    assert_eq!(hex(&h), HEX);
    assert_eq!(nix_base32_encode(&h), B32);
    // A store path's hash part: 20 bytes (`nix-hash --type sha1 --to-base32`, Nix 2.8).
    let sha1: Vec<u8> = (0..20)
        .map(|i| [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef][i % 8])
        .collect();
    assert_eq!(hex(&sha1), "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(nix_base32_encode(&sha1), "cx2j60ggrnmqjrs54c0yzkdbi5kla8q1");
}

#[test]
fn nix_base32_round_trips_and_refuses_what_nix_refuses() {
    for n in [1usize, 16, 20, 32, 64] {
        let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
        let s = nix_base32_encode(&bytes);
        assert_eq!(s.len(), (n * 8).div_ceil(5));
        assert_eq!(nix_base32_decode(&s, n).unwrap(), bytes, "{n} bytes");
    }
    assert_eq!(nix_base32_decode(&B32[1..], 32), None, "too short");
    assert_eq!(
        nix_base32_decode(&B32.replace('0', "e"), 32),
        None,
        "e is not in the alphabet"
    );
    // 52 characters hold 260 bits: a first character above 1 sets bits beyond 256.
    assert_eq!(nix_base32_decode(&format!("2{}", "0".repeat(51)), 32), None);
}

#[test]
fn every_nar_hash_form_parses_to_base16() {
    let want = vec![
        Registration {
            path: A.into(),
            hash: format!("sha256:{HEX}"),
            nar_size: 120,
            deriver: None,
            references: vec![A.into(), B.into()],
        },
        Registration {
            path: B.into(),
            hash: format!("sha256:{HEX}"),
            nar_size: 7,
            deriver: Some(D.into()),
            references: vec![],
        },
    ];
    let upper = format!("sha256:{}", HEX.to_uppercase());
    for h in [
        format!("sha256:{HEX}"),
        upper,
        format!("sha256:{B32}"),
        SRI.to_string(),
        format!("sha256:{}", &SRI[7..]),
        HEX.to_string(),
        B32.to_string(),
    ] {
        assert_eq!(parse(&file(&h), Path::new("r")).unwrap(), want, "{h}");
    }
}

#[test]
fn the_last_line_may_lack_its_newline() {
    let text = file(&format!("sha256:{HEX}"));
    let trimmed = text.trim_end_matches('\n');
    let a = parse(trimmed, Path::new("r")).unwrap();
    assert_eq!(a, parse(&text, Path::new("r")).unwrap());
    assert_eq!(a.len(), 2);
    // And an entry whose last line is a reference.
    let one = format!("{A}\nsha256:{HEX}\n1\n\n1\n{B}");
    assert_eq!(parse(&one, Path::new("r")).unwrap()[0].references, vec![B.to_string()]);
    assert_eq!(parse(&format!("{one}\n\n\n"), Path::new("r")).unwrap().len(), 1);
    assert!(parse("", Path::new("r")).unwrap().is_empty());
}

#[test]
fn malformed_files_are_refused_naming_the_line() {
    let good = file(&format!("sha256:{HEX}"));
    let lines: Vec<&str> = good.lines().collect();
    let with = |i: usize, l: &str| {
        let mut v = lines.clone();
        v[i] = l;
        v.join("\n") + "\n"
    };
    let cases: Vec<(String, &str, &str)> = vec![
        // Truncated: in the middle of an entry, and in the references.
        (lines[..3].join("\n"), ":4:", "the deriver"),
        (lines[..6].join("\n") + "\n", ":7:", "a reference"),
        (with(2, "12x"), ":3:", "narSize '12x' is not a number"),
        (with(2, "-1"), ":3:", "not a number"),
        (with(2, "99999999999999999999999"), ":3:", "too large"),
        (with(4, "two"), ":5:", "number of references 'two'"),
        (with(0, "/nix/store"), ":1:", "not under /nix/store/"),
        (
            with(0, "/usr/store/0793q72asxcifacyk97yc6a6mnvlnqgl-a"),
            ":1:",
            "not under",
        ),
        (
            with(0, "/nix/store/0793q72asxcifacyk97yc6a6mnvlnqg-a"),
            ":1:",
            "is not a store path",
        ),
        (
            with(0, "/nix/store/0793q72asxcifacyk97yc6a6mnvlnqgl-"),
            ":1:",
            "is not a store path",
        ),
        (
            with(0, "/nix/store/0793q72asxcifacyk97yc6a6mnvlnqgl"),
            ":1:",
            "is not a store path",
        ),
        (
            with(0, "/nix/store/0793q72asxcifacyk97yc6a6mnvlnqel-a"),
            ":1:",
            "not Nix base-32",
        ),
        (
            with(0, "/nix/store/0793q72asxcifacyk97yc6a6mnvlnqgl-a/b"),
            ":1:",
            "not allowed",
        ),
        (with(3, "/nix/store/x.drv"), ":4:", "deriver '/nix/store/x.drv'"),
        (with(6, "/tmp/b"), ":7:", "reference '/tmp/b'"),
        (with(1, &format!("sha256:{}", &HEX[1..])), ":2:", "wrong length"),
        (with(1, &format!("sha256:{}g", &HEX[1..])), ":2:", "not a valid sha256"),
        (with(1, &format!("sha256:{}e", &B32[1..])), ":2:", "not a valid sha256"),
        (with(1, &format!("sha1:{HEX}")), ":2:", "type 'sha1'"),
        (with(1, "sha256-AAAA"), ":2:", "not a valid sha256"),
        (with(1, ""), ":2:", "wrong length"),
        (format!("\n{good}"), ":1:", "not under"),
        (format!("{good}\n{good}"), ":13:", "not under"),
        (format!("{good}{good}"), ":13:", "listed twice"),
    ];
    for (text, line, what) in cases {
        let e = err(&text);
        assert!(
            e.starts_with(&format!("/img/registration{line} ")) && e.contains(what),
            "{what}: {e}"
        );
        assert!(e.ends_with("; fix or regenerate the registration file (closureInfo's registration)"));
    }
}
