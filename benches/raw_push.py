#!/usr/bin/env python3
"""The raw pusher that `airlock import` is measured against (issue 9: import <= 0.8x an
8-thread raw pusher doing the same requests).

    python3 benches/raw_push.py LAYOUT HOST:PORT [THREADS]

LAYOUT is a bundle unpacked as it is (`zstd -dc B.tar.zst | tar -x -C LAYOUT`): its
bundle.json names each image's repository, tag and objects (children first, the root
manifest last) and blobs/sha256/ holds them. Into an empty registry (plain HTTP), THREADS
threads (default 8), one kept-alive connection each, push every image with the fewest
requests airlock's import makes there: each blob once per repository, as a POST that opens an
upload and one monolithic PUT of the file with ?digest= (or a cross-repository mount, POST
?mount=&from=, once the blob is in another repository); each child manifest once per
repository by digest; each root manifest by each of its tags. No HEADs: the registry is
empty. Nothing is checked beyond the status codes: this is a floor, not a tool. Prints the
requests made and the seconds taken; exits non-zero on the first failure.
"""

import http.client
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

MANIFEST_TYPES = ("manifest", "index")


class Once:
    """Who pushes (repository, digest) first; the others wait for it to finish."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events = {}
        self.home = {}  # digest -> a repository that has it, for mounts

    def claim(self, key):
        with self.lock:
            ev = self.events.get(key)
            if ev is None:
                ev = self.events[key] = threading.Event()
                return ev, True
            return ev, False

    def source_for(self, digest):
        with self.lock:
            return self.home.get(digest)

    def done(self, repo, digest, ev):
        with self.lock:
            self.home.setdefault(digest, repo)
        ev.set()


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    layout, host = sys.argv[1], sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) == 4 else 8
    with open(os.path.join(layout, "bundle.json")) as f:
        bundle = json.load(f)
    kinds = {b["digest"]: b["mediaType"] for b in bundle["blobs"]}
    local = threading.local()
    once = Once()
    requests = [0]
    count_lock = threading.Lock()
    failed = threading.Event()

    def conn():
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = http.client.HTTPConnection(host, timeout=300)
        return c

    def call(method, path, body=None, headers=None, want=(200, 201, 202)):
        c = conn()
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        r.read()
        with count_lock:
            requests[0] += 1
        if r.status not in want:
            raise RuntimeError(f"{method} {path}: {r.status} {r.reason}")
        return r

    def blob_path(d):
        return os.path.join(layout, "blobs", d.replace(":", "/", 1))

    def push_blob(repo, d):
        ev, mine = once.claim((repo, d))
        if not mine:
            ev.wait()
            return
        try:
            src = once.source_for(d)
            if src is not None:
                r = call("POST", f"/v2/{repo}/blobs/uploads/?mount={d}&from={src}")
                if r.status == 201:
                    return
            else:
                r = call("POST", f"/v2/{repo}/blobs/uploads/")
            loc = r.getheader("Location")
            if loc.startswith("http"):
                loc = "/" + loc.split("/", 3)[3]
            sep = "&" if "?" in loc else "?"
            size = os.path.getsize(blob_path(d))
            with open(blob_path(d), "rb") as f:
                call(
                    "PUT",
                    f"{loc}{sep}digest={d}",
                    body=f,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(size),
                    },
                    want=(201,),
                )
        finally:
            once.done(repo, d, ev)

    def put_manifest(repo, d, reference):
        with open(blob_path(d), "rb") as f:
            body = f.read()
        call(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            body=body,
            headers={"Content-Type": kinds[d]},
            want=(201,),
        )

    def push_image(img):
        if failed.is_set():
            return
        repo = img["path"] if not img["namespace"] else f'{img["namespace"]}/{img["path"]}'
        try:
            *children, root = img["blobs"]
            for d in children:
                if not any(t in kinds[d] for t in MANIFEST_TYPES):
                    push_blob(repo, d)
            for d in children:
                if any(t in kinds[d] for t in MANIFEST_TYPES):
                    ev, mine = once.claim((repo, d))
                    if mine:
                        try:
                            put_manifest(repo, d, d)
                        finally:
                            once.done(repo, d, ev)
                    else:
                        ev.wait()
            put_manifest(repo, root, img["tag"])
        except Exception as e:  # a floor: the first failure ends the run
            failed.set()
            print(f"raw_push: {repo}:{img['tag']}: {e}", file=sys.stderr)

    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(push_image, bundle["images"]))
    took = time.monotonic() - start
    print(f"{len(bundle['images'])} images, {requests[0]} requests, {took:.2f} s")
    sys.exit(1 if failed.is_set() else 0)


if __name__ == "__main__":
    main()
