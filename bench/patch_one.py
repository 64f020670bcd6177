#!/usr/bin/env python3
"""PATCH rate on one image record: metadata sets of distinct keys, WIDTH requests in flight.

Usage: bench/patch_one.py URL [COUNT] [WIDTH] [PRESET_KEYS]
Creates an image, gives it PRESET_KEYS keys first (~60 bytes each), then times COUNT PATCHes of new
keys through WIDTH keep-alive connections. Prints the rate, the status counts and the final record size.
"""
import http.client, json, sys, threading, time, urllib.parse

url = urllib.parse.urlparse(sys.argv[1])
count = int(sys.argv[2]) if len(sys.argv) > 2 else 400
width = int(sys.argv[3]) if len(sys.argv) > 3 else 8
preset = int(sys.argv[4]) if len(sys.argv) > 4 else 0


def conn():
    return http.client.HTTPConnection(url.hostname, url.port, timeout=120)


def call(c, method, path, body=None):
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, r.read()


c = conn()
status, body = call(c, "POST", "/v3/images", {"name": "patch-bench"})
assert status == 201, (status, body)
image = json.loads(body)["id"]
path = f"/v3/images/{image}"
for i in range(preset):
    status, _ = call(c, "PATCH", path, {"metadata": {"operation": "set", "key": f"preset-{i:06d}",
                                                     "value": "p" * 40}})
    assert status == 200, status

statuses = {}
lock = threading.Lock()
next_i = [0]


def worker():
    c = conn()
    while True:
        with lock:
            i = next_i[0]
            next_i[0] += 1
        if i >= count:
            return
        status, _ = call(c, "PATCH", path, {"metadata": {"operation": "set", "key": f"k{i}", "value": f"v{i}"}})
        with lock:
            statuses[status] = statuses.get(status, 0) + 1


t = time.monotonic()
threads = [threading.Thread(target=worker) for _ in range(width)]
for th in threads:
    th.start()
for th in threads:
    th.join()
elapsed = time.monotonic() - t
status, body = call(c, "GET", path)
keys = len(json.loads(body)["metadata"])
print(json.dumps({"patches": count, "width": width, "preset_keys": preset, "seconds": round(elapsed, 2),
                  "per_second": round(count / elapsed, 1), "statuses": statuses, "final_keys": keys,
                  "record_bytes": len(body)}))
