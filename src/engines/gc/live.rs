//! Which registered paths live, and why: the closure of each kind of root, in order of
//! precedence, through references, and through derivers (`keep-derivations`) and a
//! derivation's outputs (`keep-outputs`), as Nix's `computeFSClosure` follows them. What no
//! closure reaches is dead, and is deleted referrers first, so that no registered path
//! ever refers to one that is gone.

use crate::engines::nixdb::Registrations;

/// Why a path lives: the first of these that reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    /// Reached from a root (gcroots, profiles, nix-seed's image roots).
    Rooted,
    /// Reached from a running Nix process's temporary root.
    TempRoot,
    /// Reached from a path registered within `--min-age`.
    Young,
    /// Reached from a path read within `--min-age`.
    RecentlyRead,
}

impl Why {
    pub const ALL: [Why; 4] = [Why::Rooted, Why::TempRoot, Why::Young, Why::RecentlyRead];

    pub fn words(self) -> &'static str {
        match self {
            Why::Rooted => "rooted",
            Why::TempRoot => "temporary root",
            Why::Young => "young",
            Why::RecentlyRead => "recently read",
        }
    }
}

/// Nix's `keep-derivations` and `keep-outputs`.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    pub derivations: bool,
    pub outputs: bool,
}

/// Mark the closure of `start` alive for `why`. A path already alive keeps its reason,
/// and its closure is already alive.
pub fn mark(
    regs: &Registrations,
    keep: Keep,
    alive: &mut [Option<Why>],
    start: impl IntoIterator<Item = usize>,
    why: Why,
) {
    let mut todo: Vec<usize> = start.into_iter().collect();
    while let Some(i) = todo.pop() {
        if alive[i].is_some() {
            continue;
        }
        alive[i] = Some(why);
        todo.extend(regs.references[i].iter().copied().filter(|&j| alive[j].is_none()));
        if keep.derivations {
            todo.extend(regs.deriver[i].filter(|&d| alive[d].is_none()));
        }
        if keep.outputs && regs.paths[i].ends_with(".drv") {
            todo.extend(regs.outputs[i].iter().copied().filter(|&o| alive[o].is_none()));
        }
    }
}

/// The dead paths, referrers before the paths they refer to; and those left out because
/// they are on a cycle of references (which Nix never registers; kept, not deleted).
pub fn deletion_order(regs: &Registrations, alive: &[Option<Why>]) -> (Vec<usize>, Vec<usize>) {
    let n = regs.paths.len();
    // Dead referrers of each dead path.
    let mut waiting = vec![0usize; n];
    for a in (0..n).filter(|&a| alive[a].is_none()) {
        for &b in &regs.references[a] {
            if alive[b].is_none() {
                waiting[b] += 1;
            }
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| alive[i].is_none() && waiting[i] == 0).collect();
    // Deterministic: by path, smallest first, among the ready ones.
    ready.sort_by(|a, b| regs.paths[*b].cmp(&regs.paths[*a]));
    let mut order = Vec::new();
    while let Some(a) = ready.pop() {
        order.push(a);
        for &b in &regs.references[a] {
            if alive[b].is_none() {
                waiting[b] -= 1;
                if waiting[b] == 0 {
                    ready.push(b);
                }
            }
        }
    }
    let cyclic = (0..n).filter(|&i| alive[i].is_none() && waiting[i] > 0).collect();
    (order, cyclic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(paths: &[&str], refs: &[(usize, usize)]) -> Registrations {
        let n = paths.len();
        let mut r = Registrations {
            paths: paths.iter().map(|p| p.to_string()).collect(),
            registered: vec![0; n],
            nar_size: vec![0; n],
            references: vec![Vec::new(); n],
            deriver: vec![None; n],
            outputs: vec![Vec::new(); n],
        };
        for &(a, b) in refs {
            r.references[a].push(b);
        }
        r
    }

    const KEEP: Keep = Keep {
        derivations: true,
        outputs: false,
    };

    #[test]
    fn closure_and_first_reason() {
        // 0 -> 1 -> 2, 3 -> 2, 4 alone.
        let r = regs(&["a", "b", "c", "d", "e"], &[(0, 1), (1, 2), (3, 2)]);
        let mut alive = vec![None; 5];
        mark(&r, KEEP, &mut alive, [1], Why::Rooted);
        mark(&r, KEEP, &mut alive, [3], Why::Young);
        assert_eq!(
            alive,
            vec![None, Some(Why::Rooted), Some(Why::Rooted), Some(Why::Young), None]
        );
        let (order, cyclic) = deletion_order(&r, &alive);
        assert_eq!(order, vec![0, 4]);
        assert!(cyclic.is_empty());
    }

    #[test]
    fn referrers_first() {
        // a -> b -> c, a -> c, d -> c: every referrer before what it refers to.
        let r = regs(&["c", "b", "a", "d"], &[(2, 1), (1, 0), (2, 0), (3, 0)]);
        let alive = vec![None; 4];
        let (order, _) = deletion_order(&r, &alive);
        let pos = |i| order.iter().position(|&x| x == i).unwrap();
        assert_eq!(order.len(), 4);
        assert!(pos(2) < pos(1) && pos(1) < pos(0) && pos(3) < pos(0));
    }

    #[test]
    fn derivers_and_outputs() {
        // out (0) has deriver drv (1); drv refers to src (2).
        let mut r = regs(&["out", "x.drv", "src"], &[(1, 2)]);
        r.deriver[0] = Some(1);
        r.outputs[1] = vec![0];
        let mut alive = vec![None; 3];
        mark(&r, KEEP, &mut alive, [0], Why::Rooted);
        assert_eq!(
            alive,
            vec![Some(Why::Rooted); 3],
            "keep-derivations keeps the deriver and its inputs"
        );
        let mut alive = vec![None; 3];
        let no = Keep {
            derivations: false,
            outputs: false,
        };
        mark(&r, no, &mut alive, [0], Why::Rooted);
        assert_eq!(alive, vec![Some(Why::Rooted), None, None]);
        let mut alive = vec![None; 3];
        let outputs = Keep {
            derivations: false,
            outputs: true,
        };
        mark(&r, outputs, &mut alive, [1], Why::Rooted);
        assert_eq!(
            alive,
            vec![Some(Why::Rooted); 3],
            "keep-outputs keeps a live derivation's outputs"
        );
    }

    #[test]
    fn cycles_are_kept() {
        let r = regs(&["a", "b", "c"], &[(0, 1), (1, 0), (2, 0)]);
        let alive = vec![None; 3];
        let (order, cyclic) = deletion_order(&r, &alive);
        assert_eq!(order, vec![2]);
        assert_eq!(cyclic, vec![0, 1]);
    }
}
