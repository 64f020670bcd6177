#!/usr/bin/env python3
"""Memory of `ims serve` holding idle connections (issue 12 item 7).

Usage: bench/idle_connections.py IMS_BINARY [CONNECTIONS [HOLD_SECONDS [MODE]]]

Starts IMS_BINARY serve (SQLite, no executor) in a fresh data directory, takes the server's RSS
at rest, opens CONNECTIONS (default 2000) TCP connections to the API and holds them for
HOLD_SECONDS (default 10) -- MODE `silent` (default) sends nothing, `kept` sends one request on
each and keeps the connection alive -- then closes them and takes the RSS 3 s and 12 s later. Prints the
RSS figures (MiB, from /proc/PID/status) and how many connections the server closed by itself
while they were held. Extra environment (IMS_HTTP_*) is passed on to the server.
"""
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    hold = float(sys.argv[3]) if len(sys.argv) > 3 else 10
    mode = sys.argv[4] if len(sys.argv) > 4 else "silent"
    data = tempfile.mkdtemp(prefix="ims-bench-conn.")
    env = dict(os.environ, IMS_JOB_EXECUTOR="none", IMS_LOG="info")
    log = open(os.path.join(data, "serve.log"), "w+")
    p = subprocess.Popen(
        [binary, "serve", "--data-dir", os.path.join(data, "d"), "--listen", "127.0.0.1:0",
         "--s3-listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        port = None
        for _ in range(300):
            time.sleep(0.1)
            log.seek(0)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read())
            if m:
                port = int(m.group(1))
                break
        if port is None:
            sys.exit("the server did not start")
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        # Warm up: a few requests, as a server that has served something.
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(request)
            s.recv(65536)
            s.close()
        time.sleep(1)
        base = rss_mib(p.pid)
        conns = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            if mode == "kept":
                s.sendall(request)
            conns.append(s)
        if mode == "kept":
            for s in conns:
                s.recv(65536)
        peak = held = rss_mib(p.pid)
        closed_by_server = 0
        poller = select.poll()
        by_fd = {s.fileno(): s for s in conns}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        t = time.time()
        while time.time() - t < hold:
            for fd, _ in poller.poll(500):
                try:
                    gone = by_fd[fd].recv(65536) == b""
                except OSError:
                    gone = True
                if gone:
                    poller.unregister(fd)
                    closed_by_server += 1
            held = rss_mib(p.pid)
            peak = max(peak, held)
        for s in conns:
            s.close()
        time.sleep(3)
        after = rss_mib(p.pid)
        time.sleep(9)
        later = rss_mib(p.pid)
        print(f"{binary}: {n} {mode} connections held {hold:.0f} s: RSS at rest {base:.1f} MiB, "
              f"peak while held {peak:.1f} MiB, at the end of the hold {held:.1f} MiB, 3 s after "
              f"they closed {after:.1f} MiB, 12 s after {later:.1f} MiB; closed by the server during the hold: "
              f"{closed_by_server}")
    finally:
        p.terminate()
        p.wait()


if __name__ == "__main__":
    main()
