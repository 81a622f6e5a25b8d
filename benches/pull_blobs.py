"""Pull images from a registry (or `airlock serve`) the way 8 clients would, checking every blob.

    python3 benches/pull_blobs.py HOST:PORT LIST N

LIST holds one REPOSITORY:TAG per line (the lines of `gen_registry.py`'s list without the
host); the first N are pulled by 8 threads, each on one keep-alive connection: the manifest
(OCI image manifests only), then its config and layers, each checked against its digest.
Prints how many blobs were bad and how many bytes came; exits 1 if any was bad.
"""
import hashlib
import http.client
import json
import sys
from concurrent.futures import ThreadPoolExecutor

host, lst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ACCEPT = "application/vnd.oci.image.manifest.v1+json"
refs = [line.strip() for line in open(lst) if line.strip()][:n]


def work(chunk):
    c = http.client.HTTPConnection(host, timeout=60)
    bad = got = 0
    for ref in chunk:
        repo, tag = ref.rsplit(":", 1)
        c.request("GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
        r = c.getresponse()
        m = json.loads(r.read())
        for d in [m["config"]] + m["layers"]:
            c.request("GET", f"/v2/{repo}/blobs/{d['digest']}")
            r = c.getresponse()
            b = r.read()
            got += len(b)
            if r.status != 200 or "sha256:" + hashlib.sha256(b).hexdigest() != d["digest"]:
                bad += 1
    return bad, got


with ThreadPoolExecutor(8) as ex:
    res = list(ex.map(work, [refs[i::8] for i in range(8)]))
bad = sum(r[0] for r in res)
print("bad", bad, "bytes", sum(r[1] for r in res))
sys.exit(1 if bad else 0)
