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
import subprocess
import tarfile

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


def layer_tar(base, members, split):
    """A tar (bytes) of `members` (paths relative to base, in order), not following links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        if split:
            t.inodes = None
        for m in members:
            full = os.path.join(base, m)
            ti = t.gettarinfo(full, arcname=m)
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
    return buf.getvalue()


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

raw_layers = []  # (uncompressed tar bytes, blob bytes, media type)
for g in groups:
    if isinstance(g, tuple) and g[0] == "raw":
        with open(g[1], "rb") as f:
            tb = f.read()
    elif isinstance(g, tuple):
        tb = layer_tar(g[0], g[1], False)
    else:
        tb = layer_tar(root, g, a.split_hardlinks)
    if a.compress == "gzip":
        blob, mt = gzip.compress(tb, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
    elif a.compress == "zstd":
        blob = subprocess.run(["zstd", "-q", "-c"], input=tb, stdout=subprocess.PIPE, check=True).stdout
        mt = "application/vnd.oci.image.layer.v1.tar+zstd"
    else:
        blob, mt = tb, "application/vnd.oci.image.layer.v1.tar"
    raw_layers.append((tb, blob, mt))


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


config = json.dumps({
    "architecture": a.arch, "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": [sha(tb) for tb, _, _ in raw_layers]},
}).encode()
files = []  # (name, bytes), in archive order
if a.format == "docker":
    names = []
    for tb, blob, _ in raw_layers:
        n = hashlib.sha256(blob).hexdigest() + "/layer.tar"
        names.append(n)
        files.append((n, blob))
    cfg = hashlib.sha256(config).hexdigest() + ".json"
    files.append((cfg, config))
    files.append(("manifest.json", json.dumps([{"Config": cfg, "RepoTags": [a.tag], "Layers": names}]).encode()))
else:
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": mt, "digest": sha(blob), "size": len(blob)} for _, blob, mt in raw_layers],
    }).encode()
    for _, blob, _ in raw_layers:
        files.append(("blobs/sha256/" + sha(blob)[7:], blob))
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
            "Layers": ["blobs/sha256/" + sha(b)[7:] for _, b, _ in raw_layers]}]).encode()))

if a.reverse:
    layers = [f for f in files if f[1] in [b for _, b, _ in raw_layers]]
    rest = [f for f in files if f not in layers]
    files = layers[::-1] + rest

if a.format == "oci":
    for n, b in files:
        path = os.path.join(a.out, n)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b)
else:
    out = gzip.open(a.out, "wb") if a.whole_gzip else open(a.out, "wb")
    with out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as t:
        seen = set()
        for n, b in files:
            d = os.path.dirname(n)
            if d and d not in seen and a.format != "docker":
                seen.add(d)
            ti = tarfile.TarInfo(n)
            ti.size = len(b)
            ti.mtime = 1
            t.addfile(ti, io.BytesIO(b))
