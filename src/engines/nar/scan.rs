//! Reference scanning exactly as Nix does it after a build (`RefScanSink` and `search` in
//! Nix's references.cc): the NAR serialisation of a path is searched for the hash parts
//! (first 32 characters of the name) of candidate store paths, and every candidate found
//! is a reference. Nix registers what its scanner found, so nix-seed must find the same:
//! an image without a database is registered from this scan.
//!
//! Nix's `search` looks at every 32-byte window that is all nix-base32 characters (it
//! skips past the last non-base32 byte of a window it rejects), and its sink keeps the
//! last 32 bytes of the stream so that a hash split between two writes, or spread over
//! many short ones, is still found. So a candidate is a reference exactly when its hash
//! part occurs anywhere in the NAR bytes (framing, names, symlink targets, contents).
//! This copy keeps the algorithm, without allocating per write: the tail lives in a
//! fixed array, candidates in a hash table keyed by `[u8; 32]`.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// Length of a hash part, in characters (Nix's `refLength`).
pub(crate) const REF_LEN: usize = 32;

/// Nix's base-32 alphabet (no e, o, u, t).
const BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// `IS_BASE32[c]`: whether byte `c` is in [`BASE32`] (Nix's `isBase32`).
static IS_BASE32: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < BASE32.len() {
        t[BASE32[i] as usize] = true;
        i += 1;
    }
    t
};

/// Hash parts are random base-32: folding their bytes (FxHash's mix) spreads them well
/// and costs a few multiplications per window, where SipHash would dominate the scan of
/// a long base-32 run. Candidates come from the image being seeded, not from a stranger.
#[derive(Default)]
struct Fold(u64);

impl Hasher for Fold {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Bits of the prefilter: 2^18 bits, 32 KiB, stays in cache.
const FILTER_BITS: u32 = 18;

/// The prefilter's bit for a window: its first 8 bytes, mixed.
fn filter_bit(w: &[u8; REF_LEN]) -> usize {
    let x = u64::from_le_bytes(w[..8].try_into().expect("8 bytes"));
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FILTER_BITS)) as usize
}

/// The store paths a scan looks for: hash part → index into `names`. In a long base-32
/// run every window is looked up: a bitmap of the candidates' first bytes turns most of
/// those away before the hash table.
#[derive(Debug)]
pub struct Candidates {
    by_hash: HashMap<[u8; REF_LEN], u32, BuildHasherDefault<Fold>>,
    filter: Vec<u64>,
    names: Vec<String>,
}

impl Default for Candidates {
    fn default() -> Candidates {
        Candidates {
            by_hash: HashMap::default(),
            filter: vec![0; 1 << (FILTER_BITS - 6)],
            names: Vec::new(),
        }
    }
}

/// The hash part of a store path name `<32 nix-base32>-<name>`, if it is one.
pub(crate) fn hash_part(name: &str) -> Option<[u8; REF_LEN]> {
    let b = name.as_bytes();
    if b.len() <= REF_LEN + 1 || b[REF_LEN] != b'-' || !b[..REF_LEN].iter().all(|&c| IS_BASE32[c as usize]) {
        return None;
    }
    b[..REF_LEN].try_into().ok()
}

impl Candidates {
    /// Candidates from store path names (not full paths). Names that are not
    /// `<32 nix-base32 chars>-<name>` (`.links`, temporaries) are ignored; of two names
    /// with the same hash part (not a valid store), the first is kept.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Candidates {
        let mut c = Candidates::default();
        for name in names {
            let Some(h) = hash_part(name) else { continue };
            let next = u32::try_from(c.names.len()).expect("fewer than 2^32 store paths");
            if let std::collections::hash_map::Entry::Vacant(e) = c.by_hash.entry(h) {
                e.insert(next);
                let b = filter_bit(&h);
                c.filter[b / 64] |= 1 << (b % 64);
                c.names.push(name.to_string());
            }
        }
        c
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub(crate) fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }

    fn get(&self, w: &[u8; REF_LEN]) -> Option<u32> {
        let b = filter_bit(w);
        if self.filter[b / 64] & (1 << (b % 64)) == 0 {
            return None;
        }
        self.by_hash.get(w).copied()
    }
}

/// Nix's `RefScanSink`: fed the NAR stream in writes of any size, collects the
/// candidates whose hash part occurs in it.
pub(crate) struct RefScan<'c> {
    cands: &'c Candidates,
    /// The last (up to) 32 bytes of the stream so far: `tail[..tail_len]`.
    tail: [u8; REF_LEN],
    tail_len: usize,
    found: BTreeSet<u32>,
}

impl<'c> RefScan<'c> {
    pub(crate) fn new(cands: &'c Candidates) -> RefScan<'c> {
        RefScan {
            cands,
            tail: [0; REF_LEN],
            tail_len: 0,
            found: BTreeSet::new(),
        }
    }

    /// Nix's `RefScanSink::operator()`: search the old tail joined to the first 32 bytes
    /// of `data` (a hash spanning the boundary), then `data`, then keep the new tail.
    pub(crate) fn feed(&mut self, data: &[u8]) {
        let head = data.len().min(REF_LEN);
        let mut joined = [0u8; 2 * REF_LEN];
        joined[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        joined[self.tail_len..self.tail_len + head].copy_from_slice(&data[..head]);
        self.search(&joined[..self.tail_len + head]);
        self.search(data);
        // The new tail: the last 32 bytes of old tail + data.
        let keep = (REF_LEN - head).min(self.tail_len);
        self.tail.copy_within(self.tail_len - keep..self.tail_len, 0);
        self.tail[keep..keep + head].copy_from_slice(&data[data.len() - head..]);
        self.tail_len = keep + head;
    }

    /// Nix's `search`: every window of 32 base-32 bytes is looked up; a window with a
    /// non-base-32 byte at `j` (the last one, checking from the end) moves on to `j + 1`.
    /// Unlike Nix, the bytes already known to be base-32 (`good`, from the previous
    /// window) are not checked again: the same windows are looked up, in linear time.
    fn search(&mut self, s: &[u8]) {
        let mut i = 0;
        let mut good = 0; // s[i..good] is known base-32
        while i + REF_LEN <= s.len() {
            let mut j = i + REF_LEN;
            let lo = good.max(i);
            let mut bad = None;
            while j > lo {
                j -= 1;
                if !IS_BASE32[s[j] as usize] {
                    bad = Some(j);
                    break;
                }
            }
            if let Some(b) = bad {
                i = b + 1;
                good = i;
                continue;
            }
            good = i + REF_LEN;
            let w: &[u8; REF_LEN] = s[i..i + REF_LEN].try_into().expect("32 bytes");
            if let Some(k) = self.cands.get(w) {
                self.found.insert(k);
            }
            i += 1;
        }
    }

    /// Names of the candidates found, sorted.
    pub(crate) fn references(&self) -> Vec<String> {
        let mut v: Vec<String> = self.found.iter().map(|&k| self.cands.name(k).to_string()).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    const B: &str = "zyxwvsrqpnmlkjihgfdcba9876543210";

    fn cands() -> Candidates {
        Candidates::new([
            format!("{A}-liba").as_str(),
            format!("{B}-libb-1.0").as_str(),
            "not-a-store-path",
            ".links",
        ])
    }

    /// Scan `stream` cut into writes of `chunk` bytes.
    fn scan(stream: &[u8], chunk: usize, c: &Candidates) -> Vec<String> {
        let mut s = RefScan::new(c);
        for part in stream.chunks(chunk) {
            s.feed(part);
        }
        s.references()
    }

    fn all_chunkings(stream: &[u8], c: &Candidates) -> Vec<String> {
        let whole = scan(stream, stream.len().max(1), c);
        for chunk in [1, 2, 3, 7, 31, 32, 33, 64] {
            assert_eq!(scan(stream, chunk, c), whole, "chunk {chunk} of {stream:?}");
        }
        whole
    }

    #[test]
    fn only_store_path_names_are_candidates() {
        let c = cands();
        assert_eq!(c.len(), 2);
        assert!(
            hash_part("0123456789abcdfghijklmnpqrsvwxye-x").is_none(),
            "e is not base-32"
        );
        assert!(hash_part(&format!("{A}-")).is_none(), "no name");
        assert!(hash_part(&format!("{A}x")).is_none(), "no dash");
        assert!(Candidates::new([]).is_empty());
    }

    #[test]
    fn finds_a_hash_part_anywhere_in_the_stream() {
        let c = cands();
        let liba = vec![format!("{A}-liba")];
        assert_eq!(all_chunkings(format!("/nix/store/{A}-liba/lib").as_bytes(), &c), liba);
        // Exactly 32 bytes, a write shorter than 32, and a bare hash.
        assert_eq!(all_chunkings(A.as_bytes(), &c), liba);
        // Inside a longer base-32 run: the window is found at any offset.
        assert_eq!(all_chunkings(format!("x{A}y").as_bytes(), &c), liba);
        assert_eq!(all_chunkings(format!("0123{A}zz9").as_bytes(), &c), liba);
        // Two, back to back in one base-32 run.
        assert_eq!(
            all_chunkings(format!("{B}{A}").as_bytes(), &c),
            vec![format!("{A}-liba"), format!("{B}-libb-1.0")]
        );
    }

    #[test]
    fn not_found_when_absent_or_broken() {
        let c = cands();
        assert!(all_chunkings(b"", &c).is_empty());
        assert!(all_chunkings(&A.as_bytes()[..31], &c).is_empty());
        let mut broken = A.as_bytes().to_vec();
        broken[16] = b'e';
        assert!(all_chunkings(&broken, &c).is_empty());
        // A hash part of a store path that is not a candidate.
        assert!(all_chunkings(b"/nix/store/00000000000000000000000000000000-x", &c).is_empty());
        // A non-base-32 byte right after a mismatching full window.
        assert!(all_chunkings(format!("{}T{}", &A[1..], &A[..31]).as_bytes(), &c).is_empty());
    }

    #[test]
    fn a_hash_split_between_writes_is_found() {
        let c = cands();
        let s = format!("....{A}....");
        for cut in 0..=s.len() {
            let mut sc = RefScan::new(&c);
            sc.feed(&s.as_bytes()[..cut]);
            sc.feed(&s.as_bytes()[cut..]);
            assert_eq!(sc.references(), vec![format!("{A}-liba")], "cut at {cut}");
        }
        // Spread over many 1-byte writes, and over empty writes in between.
        let mut sc = RefScan::new(&c);
        for b in s.as_bytes() {
            sc.feed(&[]);
            sc.feed(std::slice::from_ref(b));
        }
        assert_eq!(sc.references(), vec![format!("{A}-liba")]);
    }

    /// The scanner against a literal reading of Nix's `search` and `RefScanSink` (with
    /// `std::string` tails), on pseudo-random streams dense in base-32 runs and hashes.
    #[test]
    fn same_as_nix_literal_algorithm_on_random_streams() {
        fn nix_search(s: &[u8], hashes: &mut BTreeSet<Vec<u8>>, seen: &mut BTreeSet<Vec<u8>>) {
            let mut i = 0usize;
            while i + REF_LEN <= s.len() {
                let mut matched = true;
                for j in (0..REF_LEN).rev() {
                    if !IS_BASE32[s[i + j] as usize] {
                        i += j + 1;
                        matched = false;
                        break;
                    }
                }
                if !matched {
                    continue;
                }
                let r = s[i..i + REF_LEN].to_vec();
                if hashes.remove(&r) {
                    seen.insert(r);
                }
                i += 1;
            }
        }
        let c = cands();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..300 {
            let mut stream = Vec::new();
            let len = (rnd() % 300) as usize;
            while stream.len() < len {
                match rnd() % 40 {
                    0 => stream.extend_from_slice(A.as_bytes()),
                    1 => stream.extend_from_slice(B.as_bytes()),
                    2..=5 => stream.extend_from_slice(&B.as_bytes()[..(rnd() % 33) as usize]),
                    6..=7 => stream.push(b"-eTou/\0"[(rnd() % 7) as usize]),
                    _ => stream.push(BASE32[(rnd() % 32) as usize]),
                }
            }
            let (mut hashes, mut seen) = (BTreeSet::new(), BTreeSet::new());
            hashes.insert(A.as_bytes().to_vec());
            hashes.insert(B.as_bytes().to_vec());
            let mut tail: Vec<u8> = Vec::new();
            let mut ours = RefScan::new(&c);
            let mut at = 0;
            while at < stream.len() {
                let n = ((rnd() % 40) as usize).min(stream.len() - at);
                let data = &stream[at..at + n];
                at += n;
                ours.feed(data);
                let mut s = tail.clone();
                let tail_len = n.min(REF_LEN);
                s.extend_from_slice(&data[..tail_len]);
                nix_search(&s, &mut hashes, &mut seen);
                nix_search(data, &mut hashes, &mut seen);
                let rest = REF_LEN - tail_len;
                if rest < tail.len() {
                    tail.drain(..tail.len() - rest);
                }
                tail.extend_from_slice(&data[n - tail_len..]);
            }
            let want: Vec<String> = seen
                .iter()
                .map(|h| c.name(c.by_hash[&<[u8; 32]>::try_from(&h[..]).unwrap()]).to_string())
                .collect();
            assert_eq!(ours.references(), want, "round {round}");
        }
    }
}
