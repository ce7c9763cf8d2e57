//! Container images as a seed's source: an OCI image layout directory, an archive file
//! (docker-archive, legacy or Docker ≥ 25's; OCI archive; either one gzip- or
//! zstd-compressed as a whole) or standard input. The image's layers are applied, in order
//! and with their whiteouts, to a stage directory that stands for the image's `/nix`
//! ([`apply`]); the seed then treats the stage as its source directory.
//!
//! Formats are recognised by content, never by file name. Manifests and configurations are
//! parsed with `oci-spec` (OCI) and `serde_json` (docker-archive's `manifest.json`); tar
//! with `tar`; layers are uncompressed, gzip (`flate2`) or zstd (`ruzstd`), told apart by
//! their first bytes. Every blob's SHA-256 is computed while it is read and compared with
//! the manifest (layers, configuration, manifests) or the configuration's `diff_ids`.
//!
//! Memory stays bounded by the image's metadata, not its data: blobs are streamed, never
//! held; JSON documents (manifests, configurations) are kept whole, up to [`MAX_JSON`]
//! each; the stage's directories (their metadata is set last) and the current layer's
//! entries (for its opaque markers) are kept by name.

pub mod apply;
mod digest;
mod scan;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;

pub use apply::Stats;
use digest::Hashing;
pub use scan::Footprint;

use crate::base::error::Invalid;

/// The largest JSON document (manifest, index, configuration) read whole.
pub const MAX_JSON: u64 = 16 << 20;

/// What `--source` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A Nix root directory (`store/`, `var/`), as always.
    Directory(PathBuf),
    Image(Spec),
}

/// An image to read: where, and which of the images it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// `None`: standard input.
    pub path: Option<PathBuf>,
    /// The reference (`oci:PATH:REF`, `docker-archive:PATH:REF`): a tag, or a name.
    pub reference: Option<String>,
}

impl Spec {
    pub fn shown(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "standard input".to_owned(), |p| p.display().to_string())
    }
}

/// What `--source` is, by its transport prefix or, without one, by content: a directory
/// with `oci-layout` and `index.json` is an OCI layout, any other directory a Nix root, a
/// file an archive, `-` standard input.
pub fn classify(arg: &Path) -> Source {
    let s = arg.as_os_str().to_string_lossy();
    if s == "-" {
        return Source::Image(Spec {
            path: None,
            reference: None,
        });
    }
    for prefix in ["oci:", "oci-archive:", "docker-archive:"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            let (path, reference) = match rest.rsplit_once(':') {
                Some((p, r)) if !Path::new(rest).exists() && !r.contains('/') => (p, Some(r.to_owned())),
                _ => (rest, None),
            };
            return Source::Image(Spec {
                path: Some(PathBuf::from(path)),
                reference,
            });
        }
    }
    match std::fs::metadata(arg) {
        Ok(m) if m.is_dir() && !(arg.join("oci-layout").is_file() && arg.join("index.json").is_file()) => {
            Source::Directory(arg.to_owned())
        }
        Ok(_) => Source::Image(Spec {
            path: Some(arg.to_owned()),
            reference: None,
        }),
        Err(_) => Source::Directory(arg.to_owned()),
    }
}

/// The running machine's architecture, as OCI names it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// What was read.
pub struct Unpacked {
    /// The image's store path names, sorted.
    pub names: Vec<OsString>,
    pub stats: Stats,
    /// `REF@sha256:MANIFEST` (OCI), or `REPO:TAG (config sha256:…)` (docker-archive).
    pub label: String,
    pub layers: usize,
}

fn invalid(spec: &Spec, why: impl std::fmt::Display) -> anyhow::Error {
    Invalid(format!("image {}: {why}", spec.shown())).into()
}

/// Read the image `spec` into the stage `top` (the image's `/`; its `nix/` is `root`, which
/// holds an empty `store/`), skipping the store paths `skip` names; `target_store` serves
/// hardlinks into those.
pub fn unpack(
    spec: &Spec,
    platform: Option<&str>,
    (top, root): (BorrowedFd, BorrowedFd),
    skip: &dyn Fn(&[u8]) -> bool,
    target_store: Option<BorrowedFd>,
) -> Result<Unpacked> {
    let mut ap = apply::Applier::new(top, root, skip, target_store);
    let (label, layers) = read(spec, platform, &mut ap)?;
    let (names, stats) = ap.finish()?;
    Ok(Unpacked {
        names: names.into_iter().map(OsString::from_vec).collect(),
        stats,
        label,
        layers,
    })
}

/// Which store paths the image holds, and its name, read (digests checked) without
/// writing anything: for `status` and `--dry-run`. With what each store path would take on
/// a filesystem of `block`-sized blocks, by name (an upper bound: [`scan`]).
pub fn scan(spec: &Spec, platform: Option<&str>, block: u64) -> Result<(Unpacked, Footprints)> {
    let mut sc = scan::NameScan::new(block);
    let (label, layers) = read(spec, platform, &mut sc)?;
    let (names, footprints) = sc.finish();
    Ok((
        Unpacked {
            names,
            stats: Stats::default(),
            label,
            layers,
        },
        footprints,
    ))
}

/// The image's store path names, and what each takes on a filesystem of `block`-sized
/// blocks ([`scan`]), by its layers' headers alone, seeking past their data: for the
/// lock-free "nothing to do" of a seed and its check for room, which use nothing else of
/// the image. Only where every layer is an uncompressed file (an uncompressed archive
/// file, an OCI layout with uncompressed layers): `None` otherwise, or when the headers do
/// not read (the seed then reads the image and says what is wrong). Digests are not
/// checked: names that a corrupt image misstates give another image id, not a complete one.
pub fn by_headers(spec: &Spec, platform: Option<&str>, block: u64) -> Option<(Vec<OsString>, Footprints)> {
    let try_it = || -> Result<Option<(Vec<OsString>, Footprints)>> {
        let Some(p) = &spec.path else { return Ok(None) };
        let mut blobs: Box<dyn Blobs> = if p.is_dir() {
            Box::new(DirBlobs(p.clone()))
        } else {
            let mut f = File::open(p)?;
            let mut head = [0u8; 4];
            let n = read_up_to(&mut f, &mut head)?;
            if compression(&head[..n]).is_some() {
                return Ok(None);
            }
            f.seek(SeekFrom::Start(0))?;
            Box::new(TarBlobs::index(f)?)
        };
        let r = resolve(blobs.as_mut(), spec, platform)?;
        let mut sc = scan::NameScan::new(block);
        for l in &r.layers {
            let Some(mut w) = blobs.window(&l.name)? else {
                return Ok(None);
            };
            let mut head = [0u8; 4];
            let n = read_up_to(&mut w, &mut head)?;
            if compression(&head[..n]).is_some() {
                return Ok(None);
            }
            w.seek(SeekFrom::Start(0))?;
            sc.layer_headers(&l.name, &mut w)?;
        }
        Ok(Some(sc.finish()))
    };
    try_it().ok().flatten()
}

/// What each store path of an image takes, by name.
pub type Footprints = HashMap<OsString, Footprint>;

/// What the layers are applied to: the stage ([`apply::Applier`]), or only the list of
/// store paths ([`scan::NameScan`]).
pub trait Sink {
    /// Apply one layer, an uncompressed tar stream named `name` in messages.
    fn layer(&mut self, name: &str, tar: &mut dyn Read) -> Result<()>;
    /// Apply one layer of a seekable file without reading its data, if every entry allows
    /// it (see [`apply::Applier::layer_read_past`]); false: nothing applied.
    fn layer_read_past(&mut self, _name: &str, _tar: &mut Window) -> Result<bool> {
        Ok(false)
    }
    /// Forget every layer applied.
    fn reset(&mut self) -> Result<()>;
}

impl Sink for apply::Applier<'_> {
    fn layer(&mut self, name: &str, tar: &mut dyn Read) -> Result<()> {
        apply::Applier::layer(self, name, tar)
    }
    fn layer_read_past(&mut self, name: &str, tar: &mut Window) -> Result<bool> {
        apply::Applier::layer_read_past(self, name, tar)
    }
    fn reset(&mut self) -> Result<()> {
        apply::Applier::reset(self)
    }
}

/// The image's layers, found and checked, applied in order to `ap`: its label and number
/// of layers.
fn read(spec: &Spec, platform: Option<&str>, ap: &mut dyn Sink) -> Result<(String, usize)> {
    Ok(match &spec.path {
        Some(p) if p.is_dir() => {
            let mut blobs = DirBlobs(p.clone());
            let r = resolve(&mut blobs, spec, platform)?;
            apply_in_order(&mut blobs, &r, spec, ap)?;
            (r.label, r.layers.len())
        }
        Some(p) => {
            let mut f = File::open(p).with_context(|| format!("cannot open image {}", p.display()))?;
            let mut head = [0u8; 4];
            let n = read_up_to(&mut f, &mut head)?;
            f.seek(SeekFrom::Start(0))?;
            if compression(&head[..n]).is_some() {
                match stream(decompress(Box::new(BufReader::new(f)))?, spec, platform, ap)? {
                    Streamed::Done(label, n) => (label, n),
                    Streamed::OutOfOrder(r, _) => {
                        ap.reset()?;
                        passes(p, &r, spec, ap)?;
                        (r.label, r.layers.len())
                    }
                }
            } else {
                let mut blobs =
                    TarBlobs::index(f).map_err(|e| invalid(spec, format!("not a readable archive: {e}")))?;
                let r = resolve(&mut blobs, spec, platform)?;
                apply_in_order(&mut blobs, &r, spec, ap)?;
                (r.label, r.layers.len())
            }
        }
        None => match stream(
            decompress(Box::new(BufReader::with_capacity(1 << 20, io::stdin().lock())))?,
            spec,
            platform,
            ap,
        )? {
            Streamed::Done(label, n) => (label, n),
            Streamed::OutOfOrder(_, what) => {
                return Err(invalid(
                    spec,
                    format!(
                        "on standard input, the layers must come in the image's order and no others ({what}); \
                         pass the archive as a file"
                    ),
                ))
            }
        },
    })
}

fn read_up_to(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Gzip,
    Zstd,
}

fn compression(head: &[u8]) -> Option<Compression> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Compression::Zstd)
    } else {
        None
    }
}

/// `r`, decompressed if its first bytes say gzip or zstd.
fn decompress<'r>(mut r: Box<dyn Read + 'r>) -> io::Result<Box<dyn Read + 'r>> {
    let mut head = [0u8; 4];
    let n = read_up_to(&mut r, &mut head)?;
    let whole: Box<dyn Read + 'r> = Box::new(Cursor::new(head[..n].to_vec()).chain(r));
    Ok(match compression(&head[..n]) {
        Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            256 << 10,
            whole,
        ))),
        Some(Compression::Zstd) => Box::new(
            ruzstd::decoding::StreamingDecoder::new(whole)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?,
        ),
        None => whole,
    })
}

/// One layer to apply: its blob's name in the image, and what its digests must be.
#[derive(Debug, Clone)]
struct LayerRef {
    name: String,
    /// The blob's digest (OCI manifests; docker-archive blobs named by digest).
    digest: Option<String>,
    /// The uncompressed tar's digest (the configuration's `rootfs.diff_ids`).
    diff_id: Option<String>,
}

struct Resolved {
    label: String,
    layers: Vec<LayerRef>,
}

/// Random access to an image's files by name (`index.json`, `blobs/sha256/…`).
trait Blobs {
    fn open(&mut self, name: &str) -> io::Result<Option<Box<dyn Read + '_>>>;

    /// The file `name` as a seekable window, where the image is a file or a directory.
    fn window(&mut self, _name: &str) -> io::Result<Option<Window>> {
        Ok(None)
    }

    fn json(&mut self, name: &str, spec: &Spec) -> Result<Option<Vec<u8>>> {
        let Some(r) = self.open(name)? else { return Ok(None) };
        let mut v = Vec::new();
        r.take(MAX_JSON + 1).read_to_end(&mut v)?;
        if v.len() as u64 > MAX_JSON {
            return Err(invalid(spec, format!("{name} is larger than {MAX_JSON} bytes")));
        }
        Ok(Some(v))
    }
}

struct DirBlobs(PathBuf);

impl DirBlobs {
    fn file(&self, name: &str) -> io::Result<Option<File>> {
        if name.split('/').any(|c| c == ".." || c.is_empty()) {
            return Ok(None);
        }
        match File::open(self.0.join(name)) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Blobs for DirBlobs {
    fn open(&mut self, name: &str) -> io::Result<Option<Box<dyn Read + '_>>> {
        Ok(self
            .file(name)?
            .map(|f| Box::new(BufReader::with_capacity(256 << 10, f)) as Box<dyn Read>))
    }

    fn window(&mut self, name: &str) -> io::Result<Option<Window>> {
        let Some(f) = self.file(name)? else { return Ok(None) };
        let len = f.metadata()?.len();
        Ok(Some(Window::new(f, 0, len)))
    }
}

/// A part of a file (`len` bytes from `start`), read and sought within on its own: a layer
/// inside an archive, or a blob file.
pub struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Window {
    fn new(file: File, start: u64, len: u64) -> Window {
        Window {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let left = self.len.saturating_sub(self.pos);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let at = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = at.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// An uncompressed archive file: its members found by one pass over the headers (seeking
/// past the data), then read by seeking to them.
struct TarBlobs {
    file: File,
    members: HashMap<String, (u64, u64)>,
}

fn member_name(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    s.trim_start_matches("./").trim_start_matches('/').to_owned()
}

impl TarBlobs {
    fn index(file: File) -> io::Result<TarBlobs> {
        let mut members = HashMap::new();
        {
            let mut ar = tar::Archive::new(&file);
            for e in ar.entries_with_seek()? {
                let e = e?;
                if e.header().entry_type().is_file() {
                    members.insert(member_name(&e.path_bytes()), (e.raw_file_position(), e.size()));
                }
            }
        }
        Ok(TarBlobs { file, members })
    }
}

impl Blobs for TarBlobs {
    fn open(&mut self, name: &str) -> io::Result<Option<Box<dyn Read + '_>>> {
        let Some(&(at, size)) = self.members.get(name) else {
            return Ok(None);
        };
        self.file.seek(SeekFrom::Start(at))?;
        Ok(Some(Box::new(BufReader::with_capacity(
            256 << 10,
            (&self.file).take(size),
        ))))
    }

    fn window(&mut self, name: &str) -> io::Result<Option<Window>> {
        let Some(&(at, size)) = self.members.get(name) else {
            return Ok(None);
        };
        Ok(Some(Window::new(self.file.try_clone()?, at, size)))
    }
}

/// JSON documents kept from a stream, by name.
struct MemBlobs(HashMap<String, Vec<u8>>);

impl Blobs for MemBlobs {
    fn open(&mut self, name: &str) -> io::Result<Option<Box<dyn Read + '_>>> {
        Ok(self
            .0
            .get(name)
            .map(|v| Box::new(Cursor::new(v.as_slice())) as Box<dyn Read>))
    }
}

/// docker-archive's `manifest.json`: one entry per image.
#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// `blobs/sha256/HEX` or `HEX.json` (legacy docker-archive configurations): the digest the
/// name promises.
fn digest_of_name(name: &str) -> Option<String> {
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json").filter(|h| !h.contains('/')))?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256:{hex}"))
}

fn blob_name(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

fn check_digest(spec: &Spec, what: &str, want: &str, bytes: &[u8]) -> Result<()> {
    let got = digest::of(bytes);
    if got != want {
        return Err(invalid(
            spec,
            format!("{what}: digest {got} does not match {want}: the image is corrupt"),
        ));
    }
    Ok(())
}

/// Which image, and its layers: an OCI index (`index.json`, also in Docker ≥ 25's
/// archives) first, else docker-archive's `manifest.json`.
fn resolve(b: &mut dyn Blobs, spec: &Spec, platform: Option<&str>) -> Result<Resolved> {
    if let Some(index) = b.json("index.json", spec)? {
        return resolve_oci(b, &index, spec, platform);
    }
    let Some(m) = b.json("manifest.json", spec)? else {
        return Err(invalid(
            spec,
            "neither an OCI image (no index.json) nor a docker-archive (no manifest.json), nor a Nix root directory",
        ));
    };
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&m).map_err(|e| invalid(spec, format!("manifest.json: {e}")))?;
    let mut chosen = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(r) = &spec.reference {
            let tags = e.repo_tags.clone().unwrap_or_default();
            if !tags
                .iter()
                .any(|t| t == r || t.rsplit_once(':').is_some_and(|(_, tag)| tag == r))
            {
                continue;
            }
        }
        let Some(cfg) = b.json(&e.config, spec)? else {
            return Err(invalid(
                spec,
                format!("manifest.json names {} which the archive lacks", e.config),
            ));
        };
        if let Some(want) = digest_of_name(&e.config) {
            check_digest(spec, &e.config, &want, &cfg)?;
        }
        let config = ImageConfiguration::from_reader(cfg.as_slice())
            .map_err(|err| invalid(spec, format!("{}: {err}", e.config)))?;
        let plat = format!("{}/{}", config.os(), config.architecture());
        chosen.push((i, plat, config, digest::of(&cfg)));
    }
    let pick = pick(
        spec,
        platform,
        chosen.iter().map(|(i, p, _, _)| (*i, p.clone())).collect(),
    )?;
    let (i, _, config, cfg_digest) = chosen.into_iter().find(|(i, ..)| *i == pick).expect("picked");
    let e = &entries[i];
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != e.layers.len() {
        return Err(invalid(
            spec,
            format!(
                "{} lists {} layers, its configuration {}",
                "manifest.json",
                e.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let layers = e
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(n, d)| LayerRef {
            name: n.clone(),
            digest: digest_of_name(n),
            diff_id: Some(d.clone()),
        })
        .collect();
    let tag = e
        .repo_tags
        .as_ref()
        .and_then(|t| t.first())
        .cloned()
        .unwrap_or_else(|| "<untagged>".into());
    Ok(Resolved {
        label: format!("{tag} (config {cfg_digest})"),
        layers,
    })
}

/// Among candidates (index, "os/arch[/variant]"), the one the reference (already
/// filtered) and the platform choose.
fn pick(spec: &Spec, platform: Option<&str>, cands: Vec<(usize, String)>) -> Result<usize> {
    let listed = || cands.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>().join(", ");
    if cands.is_empty() {
        return Err(invalid(
            spec,
            match &spec.reference {
                Some(r) => format!("holds no image named {r}"),
                None => "holds no image".to_owned(),
            },
        ));
    }
    if cands.len() == 1 && platform.is_none() {
        return Ok(cands[0].0);
    }
    let want = platform.map_or_else(|| format!("linux/{}", host_arch()), str::to_owned);
    let m: Vec<&(usize, String)> = cands
        .iter()
        .filter(|(_, p)| *p == want || p.starts_with(&format!("{want}/")))
        .collect();
    match m.as_slice() {
        [one] => Ok(one.0),
        [] => Err(invalid(
            spec,
            format!(
                "holds no image for platform {want} (it has: {}); pass --platform",
                listed()
            ),
        )),
        _ => Err(invalid(
            spec,
            format!(
                "holds several images for platform {want} ({}); name one by reference (oci:PATH:REF, \
                 docker-archive:PATH:REF)",
                listed()
            ),
        )),
    }
}

fn resolve_oci(b: &mut dyn Blobs, index: &[u8], spec: &Spec, platform: Option<&str>) -> Result<Resolved> {
    let index = ImageIndex::from_reader(index).map_err(|e| invalid(spec, format!("index.json: {e}")))?;
    // (descriptor, its reference name) of every image manifest, nested indexes followed.
    let mut found = Vec::new();
    let mut todo: Vec<(oci_spec::image::Descriptor, Option<String>)> =
        index.manifests().iter().map(|d| (d.clone(), ref_name(d))).collect();
    while let Some((d, name)) = todo.pop() {
        let is_index = matches!(d.media_type(), MediaType::ImageIndex)
            || d.media_type().to_string() == "application/vnd.docker.distribution.manifest.list.v2+json";
        if is_index {
            let bytes = b
                .json(&blob_name(d.digest().as_ref()), spec)?
                .ok_or_else(|| invalid(spec, format!("index {} is missing", d.digest())))?;
            check_digest(spec, "an index", d.digest().as_ref(), &bytes)?;
            let sub =
                ImageIndex::from_reader(bytes.as_slice()).map_err(|e| invalid(spec, format!("{}: {e}", d.digest())))?;
            todo.extend(
                sub.manifests()
                    .iter()
                    .map(|s| (s.clone(), ref_name(s).or_else(|| name.clone()))),
            );
        } else {
            found.push((d, name));
        }
    }
    if let Some(r) = &spec.reference {
        found.retain(|(_, n)| {
            n.as_deref()
                .is_some_and(|n| n == r || n.rsplit_once(':').is_some_and(|(_, t)| t == r))
        });
    }
    let cands: Vec<(usize, String)> = found
        .iter()
        .enumerate()
        .map(|(i, (d, _))| {
            let p = d.platform().as_ref().map_or_else(
                || "unknown".to_owned(),
                |p| {
                    let mut s = format!("{}/{}", p.os(), p.architecture());
                    if let Some(v) = p.variant() {
                        s = format!("{s}/{v}");
                    }
                    s
                },
            );
            (i, p)
        })
        .collect();
    let i = pick(spec, platform, cands)?;
    let (d, name) = &found[i];
    let digest = d.digest().to_string();
    let bytes = b
        .json(&blob_name(&digest), spec)?
        .ok_or_else(|| invalid(spec, format!("manifest {digest} is missing")))?;
    check_digest(spec, "the manifest", &digest, &bytes)?;
    let m =
        ImageManifest::from_reader(bytes.as_slice()).map_err(|e| invalid(spec, format!("manifest {digest}: {e}")))?;
    let cd = m.config().digest().to_string();
    let cfg = b
        .json(&blob_name(&cd), spec)?
        .ok_or_else(|| invalid(spec, format!("configuration {cd} is missing")))?;
    check_digest(spec, "the configuration", &cd, &cfg)?;
    let config =
        ImageConfiguration::from_reader(cfg.as_slice()).map_err(|e| invalid(spec, format!("configuration: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != m.layers().len() {
        return Err(invalid(
            spec,
            format!(
                "the manifest lists {} layers, the configuration {}",
                m.layers().len(),
                diff_ids.len()
            ),
        ));
    }
    let layers = m
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(l, diff)| LayerRef {
            name: blob_name(l.digest().as_ref()),
            digest: Some(l.digest().to_string()),
            diff_id: Some(diff.clone()),
        })
        .collect();
    Ok(Resolved {
        label: format!("{}@{digest}", name.clone().unwrap_or_else(|| "<unnamed>".into())),
        layers,
    })
}

fn ref_name(d: &oci_spec::image::Descriptor) -> Option<String> {
    let a = d.annotations().as_ref()?;
    a.get("io.containerd.image.name")
        .or_else(|| a.get("org.opencontainers.image.ref.name"))
        .cloned()
}

/// Apply one layer blob read from `r`; returns its (blob, uncompressed) digests.
fn apply_layer(r: &mut dyn Read, name: &str, ap: &mut dyn Sink) -> Result<(String, String)> {
    // The first bytes say the compression; a read may give fewer than asked (a stream's
    // first read can be 1 byte), so read until there are 4.
    let mut head = [0u8; 4];
    let n = read_up_to(r, &mut head).map_err(|e| truncated(name, e))?;
    let compressed = compression(&head[..n]).is_some();
    let mut raw = Hashing::new(BufReader::with_capacity(
        256 << 10,
        Cursor::new(head[..n].to_vec()).chain(r),
    ));
    if !compressed {
        // Uncompressed: the blob is the tar, one digest serves as both.
        ap.layer(name, &mut raw)?;
        let d = raw.finish().map_err(|e| truncated(name, e))?;
        return Ok((d.clone(), d));
    }
    let diff = {
        let dec = decompress(Box::new(&mut raw)).with_context(|| format!("cannot read image layer {name}"))?;
        let mut un = Hashing::new(dec);
        ap.layer(name, &mut un)?;
        un.finish().map_err(|e| truncated(name, e))?
    };
    let blob = raw.finish().map_err(|e| truncated(name, e))?;
    Ok((blob, diff))
}

fn truncated(name: &str, e: io::Error) -> anyhow::Error {
    Invalid(format!(
        "image layer {name}: {e}: the image is truncated or corrupt (nothing was written to the target)"
    ))
    .into()
}

fn check_layer(spec: &Spec, l: &LayerRef, blob: &str, diff: &str) -> Result<()> {
    for (want, got, what) in [
        (&l.digest, blob, "digest"),
        (&l.diff_id, diff, "uncompressed digest (diff_id)"),
    ] {
        if let Some(w) = want {
            if w != got {
                return Err(invalid(
                    spec,
                    format!(
                        "layer {}: {what} {got} does not match {w}: the image is corrupt",
                        l.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn apply_in_order(b: &mut dyn Blobs, r: &Resolved, spec: &Spec, ap: &mut dyn Sink) -> Result<()> {
    for l in &r.layers {
        // An uncompressed layer in a file: perhaps nothing in it is needed.
        if let Some(mut w) = b.window(&l.name)? {
            let mut head = [0u8; 4];
            let n = read_up_to(&mut w, &mut head)?;
            w.seek(SeekFrom::Start(0))?;
            if compression(&head[..n]).is_none() && ap.layer_read_past(&l.name, &mut w)? {
                continue;
            }
        }
        let mut rd = b
            .open(&l.name)?
            .ok_or_else(|| invalid(spec, format!("layer {} is missing", l.name)))?;
        let (blob, diff) = apply_layer(&mut rd, &l.name, ap)?;
        check_layer(spec, l, &blob, &diff)?;
    }
    Ok(())
}

/// One pass over a stream (stdin, a compressed archive): JSON documents are kept, layers
/// applied in the order they come and checked, once the manifest is known, to be the
/// image's layers in its order.
fn stream(r: Box<dyn Read + '_>, spec: &Spec, platform: Option<&str>, ap: &mut dyn Sink) -> Result<Streamed> {
    let mut ar = tar::Archive::new(r);
    let mut docs = HashMap::new();
    let mut applied: Vec<(String, String, String)> = Vec::new();
    let bad = |e: io::Error| invalid(spec, format!("not a readable archive: {e}: truncated or corrupt"));
    for e in ar.entries().map_err(bad)? {
        let mut e = e.map_err(bad)?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let name = member_name(&e.path_bytes());
        let mut head = [0u8; 1];
        let first = if e.size() > 0 {
            let n = read_up_to(&mut e, &mut head).map_err(bad)?;
            head[..n].to_vec()
        } else {
            Vec::new()
        };
        let mut whole = Cursor::new(first.clone()).chain(&mut e);
        if name == "oci-layout" || matches!(first.first(), Some(b'{' | b'[')) {
            let mut v = Vec::new();
            (&mut whole).take(MAX_JSON + 1).read_to_end(&mut v).map_err(bad)?;
            if v.len() as u64 > MAX_JSON {
                return Err(invalid(spec, format!("{name} is larger than {MAX_JSON} bytes")));
            }
            docs.insert(name, v);
        } else if !first.is_empty() && looks_like_layer(&name) {
            let (blob, diff) = apply_layer(&mut whole, &name, ap)?;
            applied.push((name, blob, diff));
        }
    }
    let r = resolve(&mut MemBlobs(docs), spec, platform)?;
    let names: Vec<&str> = applied.iter().map(|(n, ..)| n.as_str()).collect();
    let want: Vec<&str> = r.layers.iter().map(|l| l.name.as_str()).collect();
    if names != want {
        let what = format!("it has {names:?}, the image {want:?}");
        return Ok(Streamed::OutOfOrder(r, what));
    }
    for (l, (_, blob, diff)) in r.layers.iter().zip(&applied) {
        check_layer(spec, l, blob, diff)?;
    }
    Ok(Streamed::Done(r.label, r.layers.len()))
}

/// How [`stream`] ended: the image applied, or layers that came in another order than the
/// image's (or other images' layers among them): the stage holds nothing valid.
enum Streamed {
    Done(String, usize),
    OutOfOrder(Resolved, String),
}

/// A member a stream may hold a layer in: docker-archive's `ID/layer.tar`, an OCI blob
/// (other members, such as legacy docker-archives' `ID/VERSION`, are read past).
fn looks_like_layer(name: &str) -> bool {
    name.ends_with("layer.tar") || name.starts_with("blobs/") || name.ends_with(".tar")
}

/// A compressed archive file whose layers are not in the image's order: read again, as
/// many times as it takes, each pass applying the layers that come in order.
fn passes(path: &Path, r: &Resolved, spec: &Spec, ap: &mut dyn Sink) -> Result<()> {
    let bad = |e: io::Error| invalid(spec, format!("not a readable archive: {e}: truncated or corrupt"));
    let mut next = 0;
    while next < r.layers.len() {
        let before = next;
        let f = File::open(path).with_context(|| format!("cannot open image {}", path.display()))?;
        let mut ar = tar::Archive::new(decompress(Box::new(BufReader::new(f))).map_err(bad)?);
        for e in ar.entries().map_err(bad)? {
            let mut e = e.map_err(bad)?;
            let l = &r.layers[next];
            if e.header().entry_type().is_file() && member_name(&e.path_bytes()) == l.name {
                let (blob, diff) = apply_layer(&mut e, &l.name, ap)?;
                check_layer(spec, l, &blob, &diff)?;
                next += 1;
                if next == r.layers.len() {
                    break;
                }
            }
        }
        if next == before {
            return Err(invalid(spec, format!("layer {} is missing", r.layers[next].name)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_and_references() {
        assert_eq!(
            classify(Path::new("oci:/x/y:v1")),
            Source::Image(Spec {
                path: Some("/x/y".into()),
                reference: Some("v1".into())
            })
        );
        assert_eq!(
            classify(Path::new("docker-archive:/x/y.tar")),
            Source::Image(Spec {
                path: Some("/x/y.tar".into()),
                reference: None
            })
        );
        assert_eq!(
            classify(Path::new("-")),
            Source::Image(Spec {
                path: None,
                reference: None
            })
        );
        assert_eq!(
            classify(Path::new("/nonexistent")),
            Source::Directory("/nonexistent".into())
        );
    }

    #[test]
    fn digest_names() {
        let h = "a".repeat(64);
        assert_eq!(
            digest_of_name(&format!("blobs/sha256/{h}")),
            Some(format!("sha256:{h}"))
        );
        assert_eq!(digest_of_name(&format!("{h}.json")), Some(format!("sha256:{h}")));
        assert_eq!(digest_of_name("abc/layer.tar"), None);
    }
}
