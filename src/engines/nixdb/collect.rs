//! What a garbage collection reads from the target's database and the one thing it
//! writes there: every registered path with what decides whether it lives (registration
//! time, references, deriver, a derivation's outputs), read in one read transaction; and
//! invalidation, Nix's `invalidatePath` for a batch of paths in one transaction.

use std::collections::HashMap;
use std::os::fd::AsFd;

use anyhow::{Context, Result};
use rusqlite::TransactionBehavior;

use super::TargetDb;

/// The registered paths and the edges a collection follows: path `i` is `paths[i]`.
#[derive(Debug, Default)]
pub struct Registrations {
    pub paths: Vec<String>,
    /// `registrationTime`, seconds since the epoch.
    pub registered: Vec<i64>,
    pub nar_size: Vec<u64>,
    /// The paths `i` refers to (itself left out).
    pub references: Vec<Vec<usize>>,
    /// Its deriver, when that is registered too.
    pub deriver: Vec<Option<usize>>,
    /// For a derivation, its registered outputs (`DerivationOutputs`).
    pub outputs: Vec<Vec<usize>>,
}

impl Registrations {
    pub fn index(&self) -> HashMap<&str, usize> {
        self.paths.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect()
    }
}

impl TargetDb {
    /// Every registration a collection needs, in one read transaction (a consistent view).
    pub fn registrations(&self) -> Result<Registrations> {
        let ctx = || format!("cannot read the target's database {}", self.path.display());
        let tx = self.conn.unchecked_transaction().with_context(ctx)?;
        let mut r = Registrations::default();
        let mut by_id = HashMap::new();
        let mut derivers = Vec::new();
        {
            let mut st = tx
                .prepare("SELECT id, path, registrationTime, narSize, deriver FROM ValidPaths")
                .with_context(ctx)?;
            let rows = st.query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Option<i64>>(3)?,
                    row.get::<_, Option<String>>(4)?,
                ))
            });
            for row in rows.with_context(ctx)? {
                let (id, path, time, size, deriver) = row.with_context(ctx)?;
                by_id.insert(id, r.paths.len());
                r.paths.push(path);
                r.registered.push(time);
                r.nar_size.push(size.and_then(|n| u64::try_from(n).ok()).unwrap_or(0));
                derivers.push(deriver);
            }
        }
        let n = r.paths.len();
        r.references = vec![Vec::new(); n];
        r.outputs = vec![Vec::new(); n];
        {
            let mut st = tx.prepare("SELECT referrer, reference FROM Refs").with_context(ctx)?;
            let rows = st.query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)));
            for row in rows.with_context(ctx)? {
                let (a, b) = row.with_context(ctx)?;
                if let (Some(&a), Some(&b)) = (by_id.get(&a), by_id.get(&b)) {
                    if a != b {
                        r.references[a].push(b);
                    }
                }
            }
        }
        let index: HashMap<String, usize> = r.paths.iter().enumerate().map(|(i, p)| (p.clone(), i)).collect();
        r.deriver = derivers
            .into_iter()
            .map(|d| d.and_then(|d| index.get(&d).copied()))
            .collect();
        {
            let mut st = tx
                .prepare("SELECT drv, path FROM DerivationOutputs")
                .with_context(ctx)?;
            let rows = st.query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)));
            for row in rows.with_context(ctx)? {
                let (drv, out) = row.with_context(ctx)?;
                if let (Some(&d), Some(&o)) = (by_id.get(&drv), index.get(&out)) {
                    r.outputs[d].push(o);
                }
            }
        }
        tx.finish().with_context(ctx)?;
        Ok(r)
    }

    /// Make `paths` invalid, in one `BEGIN IMMEDIATE` transaction, as Nix's
    /// `invalidatePath` does: their `ValidPaths` rows go, and with them (`ON DELETE
    /// CASCADE`) their own `Refs` and `DerivationOutputs`. A path some registered path
    /// still refers to cannot go (`ON DELETE RESTRICT`): the whole batch is then refused and
    /// nothing changes. `abort` is asked before committing.
    pub fn invalidate(&mut self, paths: &[&str]) -> Result<()> {
        let ctx = || format!("cannot unregister paths in {}", self.path.display());
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .with_context(ctx)?;
        super::lock::note_held(self.dir.as_fd());
        crate::base::failpoint::hit("gc-invalidating");
        {
            let mut st = tx.prepare("DELETE FROM ValidPaths WHERE path = ?1").with_context(ctx)?;
            for p in paths {
                st.execute([p]).with_context(|| format!("cannot unregister {p}"))?;
            }
        }
        tx.commit().with_context(ctx)
    }
}
