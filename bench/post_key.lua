wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"name": "bench", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMHcrBAKqXIvSdnVXEGDk43qhGflqc1mzQUR37MsZKx5 root@ncn-m001\\n"}'
