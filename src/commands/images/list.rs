//! `nix-seed images`: one line per image seeded into the disk (when first and last seeded
//! and last seen, its closure and what it alone holds, its roots, where its registrations
//! came from), then the totals and the free space.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result};
use indicatif::HumanBytes;
use serde_json::json;

use super::{read, show_time, wait_for_db};
use crate::base::progress::{count, Log};

/// What `images` is asked to list.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: PathBuf,
    pub lock_timeout: std::time::Duration,
    pub output: crate::base::progress::Output,
}

/// `nix-seed images`; a database lock wait that ran out is a lock timeout (exit 3).
pub fn run(o: &Options, cx: &crate::commands::Ctx) -> Result<crate::commands::Done> {
    list_images(o, cx.log)
        .map(|()| crate::commands::Done::Success)
        .map_err(|e| crate::engines::nixdb::busy_as_timeout(e, &o.target, o.lock_timeout, "nothing was listed"))
}

fn list_images(o: &Options, log: &std::sync::Arc<Log>) -> Result<()> {
    wait_for_db(&o.target, o.lock_timeout, log);
    let disk = read(&o.target, log)?;
    let mut all = vec![false; disk.graph.paths.len()];
    for (k, img) in disk.images.iter().enumerate() {
        for &i in &img.closure {
            all[i] = true;
        }
        let (alone, alone_bytes) = disk.alone(k);
        let bytes = disk.bytes(&img.closure);
        let links = img.roots.as_ref().map_or(0, Vec::len);
        let roots = match (&img.roots, img.roots_complete, img.last_seen) {
            (_, true, _) => "roots complete".to_string(),
            (None, _, _) => "roots incomplete (no root directory)".to_string(),
            (_, _, None) => "roots incomplete (no marker: the next seed of it repairs)".to_string(),
            (Some(_), false, Some(_)) => {
                "roots incomplete (a root link is missing or does not resolve to a valid path: `nix-seed seed \
                 --recheck` of the image repairs)"
                    .to_string()
            }
        };
        let regs = img.record.as_ref().and_then(|r| r.registrations);
        let regs_text = regs.map_or(String::new(), |r| format!(", registrations: {}", r.text()));
        let label = crate::steps::state::label(disk.root.as_fd(), &img.id, img.record.as_ref());
        let text = format!(
            "{}{}: first seeded {}, last seeded {}, last seen {}, {} ({}), {} ({}) held by this image alone, \
             {roots}{regs_text}",
            img.id,
            label.text(),
            show_time(img.first_seeded()),
            show_time(img.last_seeded()),
            show_time(img.last_seen),
            count(img.closure.len() as u64, "store path", "store paths"),
            HumanBytes(bytes),
            count(alone as u64, "store path", "store paths"),
            HumanBytes(alone_bytes),
        );
        let t = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_seconds(t).to_string());
        log.out(
            "image",
            &text,
            json!({
                "image_id": img.id,
                "name": label.name,
                "source": label.source,
                "profile": label.profile,
                "first_seeded": t(img.first_seeded()),
                "last_seeded": t(img.last_seeded()),
                "last_seen": t(img.last_seen),
                "store_paths": img.closure.len(),
                "closure_bytes": bytes,
                "alone_store_paths": alone,
                "alone_bytes": alone_bytes,
                "marked": img.last_seen.is_some(),
                "root_links": links,
                "roots_complete": img.roots_complete,
                "registrations": regs,
            }),
        );
    }
    let in_images: Vec<usize> = (0..all.len()).filter(|&i| all[i]).collect();
    let vfs = nix::sys::statvfs::fstatvfs(disk.root.as_fd())
        .with_context(|| format!("cannot statfs {}", disk.path.display()))?;
    let free = vfs.blocks_available() as u64 * vfs.fragment_size() as u64;
    let size = vfs.blocks() as u64 * vfs.fragment_size() as u64;
    let registered: Vec<usize> = (0..disk.graph.paths.len()).collect();
    let db = if disk.has_db { "" } else { " (no Nix database)" };
    log.out(
        "images-total",
        &format!(
            "total: {}, {} ({}) in their closures, {} ({}) registered{db}; free space {} of {}",
            count(disk.images.len() as u64, "image", "images"),
            count(in_images.len() as u64, "store path", "store paths"),
            HumanBytes(disk.bytes(&in_images)),
            count(registered.len() as u64, "store path", "store paths"),
            HumanBytes(disk.bytes(&registered)),
            HumanBytes(free),
            HumanBytes(size),
        ),
        json!({
            "images": disk.images.len(),
            "store_paths": in_images.len(),
            "closure_bytes": disk.bytes(&in_images),
            "registered_store_paths": registered.len(),
            "registered_bytes": disk.bytes(&registered),
            "free_bytes": free,
            "size_bytes": size,
        }),
    );
    Ok(())
}
