#!/usr/bin/env python3
"""Make a container image of a Nix root, as image builders write them, for the tests.

  mkimage.py ROOT OUT [options]

ROOT holds nix/ (store/ and maybe var/). Formats (--format):
  docker    docker-archive as nixpkgs' dockerTools writes it: DIGEST/layer.tar per layer,
            DIGEST.json configuration, manifest.json (legacy layout);
  docker25  docker-archive as Docker >= 25 writes it: an OCI layout (blobs/sha256/...,
            index.json, oci-layout) plus manifest.json;
  oci       an OCI image layout directory at OUT;
  oci-archive  the same, as a tar file.
Layers (--layers): `per-path` (one layer per store path, then one for var/, as dockerTools'
streamLayeredImage), or `one`. --compress none|gzip|zstd compresses each layer;
--whole-gzip compresses the whole archive. --split-hardlinks writes every hardlinked file
as a file of its own (dockerTools); --mtime N sets every mtime. --append-layer DIR adds a
layer made of DIR's tree (whiteout files included, as they are); --raw-layer TAR adds the
tar file TAR as a layer, as it is. --reverse writes the
layers in the archive in reverse order (for stream-order tests). --tag REPO:TAG.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile

p = argparse.ArgumentParser()
p.add_argument("root")
p.add_argument("out")
p.add_argument("--format", default="docker")
p.add_argument("--layers", default="per-path")
p.add_argument("--compress", default="none")
p.add_argument("--whole-gzip", action="store_true")
p.add_argument("--split-hardlinks", action="store_true")
p.add_argument("--mtime", type=int)
p.add_argument("--append-layer", action="append", default=[])
p.add_argument("--raw-layer", action="append", default=[])
p.add_argument("--reverse", action="store_true")
p.add_argument("--tag", default="example.com/nix-image:1")
p.add_argument("--arch", default="amd64")
a = p.parse_args()


def layer_tar(base, members, split, path):
    """Write a tar of `members` (paths relative to base, in order) to `path`, not following links."""
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as t:
        if split:
            t.inodes = None
        for m in members:
            full = os.path.join(base, m)
            ti = t.gettarinfo(full, arcname=m)
            if ti is None:  # a socket: no tar holds one
                continue
            if split and ti.type == tarfile.LNKTYPE:
                ti.type = tarfile.REGTYPE
            if split:
                t.inodes = {}
            if a.mtime is not None:
                ti.mtime = a.mtime
            ti.uname = ti.gname = ""
            if ti.type == tarfile.REGTYPE:
                with open(full, "rb") as f:
                    t.addfile(ti, f)
            else:
                t.addfile(ti)


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return "sha256:" + h.hexdigest()
            h.update(b)


def walk(base, top):
    out = [top]
    full = os.path.join(base, top)
    if os.path.isdir(full) and not os.path.islink(full):
        for n in sorted(os.listdir(full)):
            out += walk(base, os.path.join(top, n))
    return out


root = a.root
store = os.path.join(root, "nix/store")
groups = []
if a.layers == "per-path":
    for n in sorted(os.listdir(store)):
        if n.startswith("."):
            continue
        groups.append(["nix", "nix/store"] + walk(root, os.path.join("nix/store", n)))
    if os.path.isdir(os.path.join(root, "nix/var")):
        groups.append(["nix"] + walk(root, "nix/var"))
else:
    groups.append(walk(root, "nix"))
for extra in a.append_layer:
    groups.append((extra, sorted(os.path.relpath(os.path.join(d, f), extra)
                                 for d, ds, fs in os.walk(extra) for f in ds + fs)))

for raw in a.raw_layer:
    groups.append(("raw", raw))

work = tempfile.mkdtemp(prefix="mkimage-", dir=os.path.dirname(os.path.abspath(a.out)))
raw_layers = []  # (uncompressed tar digest, blob path, blob digest, media type)
for i, g in enumerate(groups):
    tpath = os.path.join(work, f"{i}.tar")
    if isinstance(g, tuple) and g[0] == "raw":
        shutil.copyfile(g[1], tpath)
    elif isinstance(g, tuple):
        layer_tar(g[0], g[1], False, tpath)
    else:
        layer_tar(root, g, a.split_hardlinks, tpath)
    diff = sha_file(tpath)
    if a.compress == "gzip":
        bpath, mt = tpath + ".gz", "application/vnd.oci.image.layer.v1.tar+gzip"
        with open(tpath, "rb") as fi, gzip.GzipFile(bpath, "wb", mtime=0, compresslevel=6) as fo:
            shutil.copyfileobj(fi, fo, 1 << 20)
        os.unlink(tpath)
    elif a.compress == "zstd":
        bpath, mt = tpath + ".zst", "application/vnd.oci.image.layer.v1.tar+zstd"
        subprocess.run(["zstd", "-q", "--rm", tpath, "-o", bpath], check=True)
    else:
        bpath, mt = tpath, "application/vnd.oci.image.layer.v1.tar"
    raw_layers.append((diff, bpath, sha_file(bpath), mt))


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


config = json.dumps({
    "architecture": a.arch, "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": [diff for diff, _, _, _ in raw_layers]},
}).encode()
files = []  # (name, bytes or a path), in archive order
if a.format == "docker":
    names = []
    for _, bpath, bd, _ in raw_layers:
        n = bd[7:] + "/layer.tar"
        names.append(n)
        files.append((n, bpath))
    cfg = hashlib.sha256(config).hexdigest() + ".json"
    files.append((cfg, config))
    files.append(("manifest.json", json.dumps([{"Config": cfg, "RepoTags": [a.tag], "Layers": names}]).encode()))
else:
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": mt, "digest": bd, "size": os.path.getsize(bp)} for _, bp, bd, mt in raw_layers],
    }).encode()
    for _, bp, bd, _ in raw_layers:
        files.append(("blobs/sha256/" + bd[7:], bp))
    files.append(("blobs/sha256/" + sha(config)[7:], config))
    files.append(("blobs/sha256/" + sha(manifest)[7:], manifest))
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest), "size": len(manifest),
        "platform": {"architecture": a.arch, "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": a.tag.rsplit(":", 1)[-1],
                        "io.containerd.image.name": a.tag}}]}
    files.append(("index.json", json.dumps(index).encode()))
    files.append(("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'))
    if a.format == "docker25":
        files.append(("manifest.json", json.dumps([{
            "Config": "blobs/sha256/" + sha(config)[7:], "RepoTags": [a.tag],
            "Layers": ["blobs/sha256/" + bd[7:] for _, _, bd, _ in raw_layers]}]).encode()))

if a.reverse:
    layers = [f for f in files if isinstance(f[1], str)]
    rest = [f for f in files if not isinstance(f[1], str)]
    files = layers[::-1] + rest

if a.format == "oci":
    for n, b in files:
        path = os.path.join(a.out, n)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(b, str):
            shutil.move(b, path)
        else:
            with open(path, "wb") as f:
                f.write(b)
else:
    out = gzip.open(a.out, "wb", compresslevel=6) if a.whole_gzip else open(a.out, "wb")
    with out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as t:
        for n, b in files:
            ti = tarfile.TarInfo(n)
            ti.mtime = 1
            if isinstance(b, str):
                ti.size = os.path.getsize(b)
                with open(b, "rb") as f:
                    t.addfile(ti, f)
            else:
                ti.size = len(b)
                t.addfile(ti, io.BytesIO(b))
shutil.rmtree(work)
