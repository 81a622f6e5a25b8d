#!/usr/bin/env python3
"""Writes a corpus straight into a distribution registry's filesystem storage (much faster
than pushing 10,000 images one by one): REPOS repositories x TAGS tags, every image a
linux/amd64 OCI manifest with a shared base layer and a small unique layer.

    python3 benches/gen_registry.py ROOTDIRECTORY REPOS TAGS LIST_FILE

ROOTDIRECTORY is the registry's `storage.filesystem.rootdirectory` (start the registry after
this ran). Writes `scale/rNNNN:tNN` paths, one per line, to LIST_FILE. Used by bench.sh.

With a fifth argument LAYERS, each image has LAYERS unique layers (16 KiB between them)
instead of one: `gen_registry.py DIR 1000 10 LIST 9` writes 10,000 images of 100,001 blobs
(manifests and configs counted), the shape of real images with many layers.
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

root, repos, tags, list_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
unique_layers = int(sys.argv[5]) if len(sys.argv) > 5 else 1
v2 = os.path.join(root, "docker", "registry", "v2")


def put_blob(data):
    hexd = hashlib.sha256(data).hexdigest()
    d = os.path.join(v2, "blobs", "sha256", hexd[:2], hexd)
    if not os.path.exists(os.path.join(d, "data")):
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "data"), "wb") as f:
            f.write(data)
    return "sha256:" + hexd


def link(path, digest):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "link"), "w") as f:
        f.write(digest)


def layer(name, payload):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as t:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mtime = 0
        t.addfile(info, io.BytesIO(payload))
    tar = raw.getvalue()
    return gzip.compress(tar, compresslevel=1, mtime=0), "sha256:" + hashlib.sha256(tar).hexdigest()


base, base_diff = layer("base.bin", os.urandom(2 << 20))
base_d = put_blob(base)
with open(list_file, "w") as out:
    for r in range(1, repos + 1):
        repo = f"scale/r{r:04d}"
        rdir = os.path.join(v2, "repositories", repo)
        for t in range(1, tags + 1):
            uniques = []
            for _ in range(unique_layers):
                uniq, uniq_diff = layer("unique.bin", os.urandom(16384 // unique_layers))
                uniques.append((put_blob(uniq), len(uniq), uniq_diff))
            config = json.dumps({
                "architecture": "amd64", "os": "linux",
                "config": {"Labels": {"image": f"{repo}:t{t:02d}"}},
                "rootfs": {"type": "layers", "diff_ids": [base_diff] + [u[2] for u in uniques]},
            }).encode()
            config_d = put_blob(config)
            manifest = json.dumps({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config_d, "size": len(config)},
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                     "digest": d, "size": size}
                    for d, size in [(base_d, len(base))] + [(u[0], u[1]) for u in uniques]
                ],
            }).encode()
            man_d = put_blob(manifest)
            for d in [base_d, config_d] + [u[0] for u in uniques]:
                link(os.path.join(rdir, "_layers", "sha256", d[7:]), d)
            link(os.path.join(rdir, "_manifests", "revisions", "sha256", man_d[7:]), man_d)
            tag = f"t{t:02d}"
            link(os.path.join(rdir, "_manifests", "tags", tag, "current"), man_d)
            link(os.path.join(rdir, "_manifests", "tags", tag, "index", "sha256", man_d[7:]), man_d)
            out.write(f"{repo}:{tag}\n")
