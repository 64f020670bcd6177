#!/usr/bin/env python3
"""Writes original-format IMS data files with N images and N public keys (for `ims migrate import`)."""
import json, sys, uuid, datetime, os

n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
t0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
images, keys = [], []
for i in range(n):
    ts = (t0 + datetime.timedelta(seconds=i)).isoformat(timespec="microseconds")
    images.append({
        "id": str(uuid.uuid4()), "created": ts, "name": f"compute-image-{i}.squashfs", "arch": "x86_64",
        "link": {"path": f"s3://boot-images/{uuid.uuid4()}/manifest.json", "etag": "0123456789abcdef0123456789abcdef", "type": "s3"},
        "metadata": {"site": "bench", "index": str(i)},
    })
    keys.append({"id": str(uuid.uuid4()), "created": ts, "name": f"key-{i}",
                 "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMHcrBAKqXIvSdnVXEGDk43qhGflqc1mzQUR37MsZKx5 root@ncn-m001\n"})
json.dump(images, open(os.path.join(out, "v2.1_images.json"), "w"))
json.dump(keys, open(os.path.join(out, "v2_public_keys.json"), "w"))
print(images[n // 2]["id"])
