//! Registering in the target's database: one `BEGIN IMMEDIATE` transaction, as Nix's
//! `registerValidPaths` does it, in named steps: choose what gets a row, insert the
//! `ValidPaths` rows, then their `Refs` and `DerivationOutputs`, then commit.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rusqlite::{OptionalExtension, ToSql, Transaction};

use super::schema::{ident, is_wal, SourceDb};
use super::target::{Registered, TargetDb};
use super::DB_FILE;

impl TargetDb {
    /// Register `names` (store path names of the image, present and complete on disk) in
    /// one transaction: their `ValidPaths` rows (the columns beyond schema 10 that both
    /// databases have copied too), their `Refs` and, for a `.drv`, its
    /// `DerivationOutputs`. Nothing outside `names` gets a row. A path whose reference is
    /// neither valid in the target nor registered in this transaction is left out, and so
    /// is every path referring to one left out: returned in `skipped`. `abort` is checked
    /// just before committing.
    pub fn register(&mut self, src: &SourceDb, names: &HashSet<&str>, abort: &dyn Fn() -> bool) -> Result<Registered> {
        let path = self.path.clone();
        let wal = self.wal;
        let common: Vec<Vec<String>> = (0..3)
            .map(|k| {
                src.extra[k]
                    .cols
                    .iter()
                    .filter(|c| self.extra[k].contains(c))
                    .cloned()
                    .collect()
            })
            .collect();
        let dir = self.dir.try_clone()?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .with_context(|| format!("cannot lock the target's database {}", path.display()))?;
        // The dotfile lock is ours now: say so in the window's record, so that if this
        // process dies holding it the next seeder knows it may remove it.
        super::lock::note_held(dir.as_fd());
        // Checked again with the lock held: a rollback-mode connection (dotfile lock) on a
        // database a default-configured pod has just converted to WAL must not write.
        if is_wal(dir.as_fd(), DB_FILE, &path)? != wal {
            bail!(
                "{}: its journal mode changed since it was opened (a pod's Nix converted it)",
                path.display()
            );
        }
        let chosen = Chosen::select(&tx, &path, src, names)?;
        let ids = insert_paths(&tx, &path, src, &chosen, &common[0])?;
        insert_refs(&tx, src, &chosen, &ids, &common[1])?;
        insert_outputs(&tx, src, &ids, &common[2])?;
        crate::base::failpoint::hit("registering");
        if abort() {
            bail!("stopped before registering: nothing was registered");
        }
        tx.commit()
            .with_context(|| format!("cannot commit to the target's database {}", path.display()))?;
        Ok(Registered {
            count: ids.len(),
            skipped: chosen.skipped(),
        })
    }
}

/// What one transaction registers: the image's paths present in the target and not yet
/// registered (`new`), less those left out (`out`, each with the reference that is
/// neither valid nor added).
struct Chosen<'s> {
    /// The target's id of every store path looked up (`None`: not registered).
    in_target: HashMap<&'s str, Option<i64>>,
    new: HashSet<&'s str>,
    out: HashMap<&'s str, &'s str>,
}

impl<'s> Chosen<'s> {
    fn select(tx: &Transaction, path: &Path, src: &'s SourceDb, names: &HashSet<&str>) -> Result<Chosen<'s>> {
        let mut exists = tx.prepare("SELECT id FROM ValidPaths WHERE path = ?1")?;
        let mut id_of = |p: &str| -> Result<Option<i64>> {
            exists
                .query_row([p], |r| r.get::<_, i64>(0))
                .optional()
                .with_context(|| format!("cannot read the target's database {}", path.display()))
        };
        // What this transaction adds: present, not yet registered.
        let mut chosen = Chosen {
            in_target: HashMap::new(),
            new: HashSet::new(),
            out: HashMap::new(),
        };
        for p in src.paths.iter().filter(|p| names.contains(p.name())) {
            let id = id_of(&p.path)?;
            chosen.in_target.insert(&p.path, id);
            if id.is_none() {
                chosen.new.insert(&p.path);
            }
        }
        chosen.leave_out(src, &mut id_of)?;
        Ok(chosen)
    }

    /// Left out: a path with a reference neither valid nor added, until none is.
    fn leave_out(&mut self, src: &'s SourceDb, id_of: &mut dyn FnMut(&str) -> Result<Option<i64>>) -> Result<()> {
        loop {
            let mut changed = false;
            for (a, b) in &src.refs {
                if a == b || !self.new.contains(a.as_str()) || self.out.contains_key(a.as_str()) {
                    continue;
                }
                let ok = if self.new.contains(b.as_str()) {
                    !self.out.contains_key(b.as_str())
                } else {
                    let id = match self.in_target.get(b.as_str()) {
                        Some(id) => *id,
                        None => {
                            let id = id_of(b)?;
                            self.in_target.insert(b, id);
                            id
                        }
                    };
                    id.is_some()
                };
                if !ok {
                    self.out.insert(a, b);
                    changed = true;
                }
            }
            if !changed {
                return Ok(());
            }
        }
    }

    /// The paths left out, each with its missing reference, sorted.
    fn skipped(&self) -> Vec<(String, String)> {
        let mut skipped: Vec<(String, String)> = self.out.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        skipped.sort();
        skipped
    }
}

/// The column list and the `?1, ?2...` placeholders for the fixed columns `fixed` and the
/// extra ones.
fn cols(fixed: &str, extra: &[String]) -> (String, String) {
    let n = fixed.split(',').count() + extra.len();
    let names = std::iter::once(fixed.to_string())
        .chain(extra.iter().map(|c| ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let marks = (1..=n).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
    (names, marks)
}

/// The `ValidPaths` rows of the chosen paths; returns their new ids.
fn insert_paths<'s>(
    tx: &Transaction,
    path: &Path,
    src: &'s SourceDb,
    chosen: &Chosen,
    common: &[String],
) -> Result<HashMap<&'s str, i64>> {
    let mut ids: HashMap<&str, i64> = HashMap::new();
    let (c, m) = cols(
        "path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca",
        common,
    );
    let mut insert = tx.prepare(&format!("INSERT INTO ValidPaths ({c}) VALUES ({m})"))?;
    for (i, p) in src.paths.iter().enumerate() {
        if !chosen.new.contains(p.path.as_str())
            || chosen.out.contains_key(p.path.as_str())
            || ids.contains_key(p.path.as_str())
        {
            continue;
        }
        let extra = src.extra[0].values(i, common);
        let mut v: Vec<&dyn ToSql> = vec![
            &p.path,
            &p.hash,
            &p.registration_time,
            &p.deriver,
            &p.nar_size,
            &p.ultimate,
            &p.sigs,
            &p.ca,
        ];
        v.extend(extra.iter().map(|x| x as &dyn ToSql));
        insert
            .execute(&*v)
            .with_context(|| format!("cannot register {} in {}", p.path, path.display()))?;
        ids.insert(p.path.as_str(), tx.last_insert_rowid());
    }
    Ok(ids)
}

/// The `Refs` rows of the paths just registered.
fn insert_refs(
    tx: &Transaction,
    src: &SourceDb,
    chosen: &Chosen,
    ids: &HashMap<&str, i64>,
    common: &[String],
) -> Result<()> {
    let (c, m) = cols("referrer, reference", common);
    let mut ref_insert = tx.prepare(&format!("INSERT OR IGNORE INTO Refs ({c}) VALUES ({m})"))?;
    for (i, (a, b)) in src.refs.iter().enumerate() {
        let Some(&ida) = ids.get(a.as_str()) else { continue };
        let idb = match ids.get(b.as_str()) {
            Some(&i) => i,
            None => chosen.in_target.get(b.as_str()).copied().flatten().with_context(|| {
                format!("cannot register {a}: its reference {b} is not valid in the target; nothing was registered")
            })?,
        };
        let extra = src.extra[1].values(i, common);
        let mut v: Vec<&dyn ToSql> = vec![&ida, &idb];
        v.extend(extra.iter().map(|x| x as &dyn ToSql));
        ref_insert.execute(&*v)?;
    }
    Ok(())
}

/// The `DerivationOutputs` rows of the derivations just registered.
fn insert_outputs(tx: &Transaction, src: &SourceDb, ids: &HashMap<&str, i64>, common: &[String]) -> Result<()> {
    let (c, m) = cols("drv, id, path", common);
    let mut out_insert = tx.prepare(&format!("INSERT OR REPLACE INTO DerivationOutputs ({c}) VALUES ({m})"))?;
    for (i, (drv, id, out)) in src.outputs.iter().enumerate() {
        if let Some(drv_id) = ids.get(drv.as_str()) {
            let extra = src.extra[2].values(i, common);
            let mut v: Vec<&dyn ToSql> = vec![drv_id, id, out];
            v.extend(extra.iter().map(|x| x as &dyn ToSql));
            out_insert.execute(&*v)?;
        }
    }
    Ok(())
}
