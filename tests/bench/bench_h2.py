#!/usr/bin/env python3
"""bench-h2: N short concurrent streams of one maas_multi through a real
HTTP/2 front end (nghttpx, TLS on loopback, maas-emulator behind it), over
h2 (the default) beside HTTP/1.1 (MAAS_HTTP_VERSION=1.1), in the same run.

  tests/bench/bench_h2.py [N] [TOKENS]      defaults: 1000 streams of 5 tokens

For each protocol it prints what bench-multi measures (CPU and peak RSS of
the client, per stream) and, from nghttpx's access log, the protocol every
stream used and how many connections (client ports) carried them. Targets
(issue 11) are read from the figures, never asserted.

Uses the build in $MAAS_BUILD_DIR (default build/), nghttpx and openssl.
"""
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("MAAS_BUILD_DIR", os.path.join(ROOT, "build"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
os.environ.setdefault("MAAS_EMULATOR", os.path.join(BUILD, "tests", "emulator", "maas-emulator"))
from emu import Emulator  # noqa: E402


def certificates(d):
    """A CA and a certificate for IP:127.0.0.1 signed by it; the CA's path."""
    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    with open(os.path.join(d, "ca.cnf"), "w") as f:
        f.write("[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n"
                "[dn]\nCN = bench-h2 CA\n[v3_ca]\nbasicConstraints = critical,CA:TRUE\n"
                "keyUsage = critical,keyCertSign,cRLSign\n")
    with open(os.path.join(d, "server.cnf"), "w") as f:
        f.write("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = bench-h2 server\n")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n")
    p = lambda n: os.path.join(d, n)  # noqa: E731
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ssl("req", "-x509", "-config", p("ca.cnf"), *ec, "-days", "2", "-keyout", p("ca.key"),
        "-out", p("ca.pem"))
    ssl("req", "-new", "-config", p("server.cnf"), *ec, "-keyout", p("server.key"),
        "-out", p("server.csr"))
    ssl("x509", "-req", "-in", p("server.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
        "-set_serial", "2", "-days", "2", "-extfile", p("ext.cnf"), "-out", p("server.pem"))
    return p("ca.pem")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_front(d, backend_port, token_port):
    bin_ = shutil.which("nghttpx") or "/usr/sbin/nghttpx"
    port = free_port()
    log = os.path.join(d, "access.log")
    # One descriptor per HTTP/1.1 client connection and per backend connection.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    proc = subprocess.Popen(
        [bin_, "--conf=/dev/null", "--single-process", "--workers=1",
         f"--rlimit-nofile={nofile}",
         f"--frontend=127.0.0.1,{port}", f"--backend=127.0.0.1,{backend_port};;proto=http/1.1",
         # The token endpoint is a listener of its own, as the service has it on another host.
         f"--backend=127.0.0.1,{token_port};/oauth2/;proto=http/1.1",
         f"--accesslog-file={log}", "--accesslog-format=$remote_port $alpn $status $request",
         f"--errorlog-file={os.path.join(d, 'error.log')}", "--no-ocsp", "--no-via",
         os.path.join(d, "server.key"), os.path.join(d, "server.pem")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("bench-h2: nghttpx exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port, log
        except OSError:
            time.sleep(0.02)
    proc.terminate()
    raise SystemExit("bench-h2: nghttpx did not start")


def fields(line):
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def requests_since(log, offset, path):
    """(port, alpn, status) of each request for `path` logged after `offset`."""
    out = []
    with open(log) as f:
        f.seek(offset)
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and path in parts[4]:
                out.append((parts[0], parts[1], parts[2]))
    return out


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the emulator's too
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    bench_multi = os.path.join(BUILD, "tests", "bench", "bench-multi")
    emu = Emulator()
    front = None
    try:
        with tempfile.TemporaryDirectory() as d:
            ca = certificates(d)
            backend_port = int(re.search(r":(\d+)", emu.root.split("//", 1)[1]).group(1))
            token_port = int(re.search(r":(\d+)", emu.urls["MAAS_AUTH_URL"].split("//", 1)[1])
                             .group(1))
            front, port, log = start_front(d, backend_port, token_port)
            base = f"https://127.0.0.1:{port}"
            print(f"== bench-h2: {n:,} concurrent streams of {tokens} tokens (no pause) "
                  f"through nghttpx, one maas_multi")
            print(f"{'':10} {'conns':>6} {'protocol':>9} {'cpu s':>7} {'us/stream':>10} "
                  f"{'KiB/stream':>11} {'tokens/s':>9}")
            rows = {}
            for name, version in (("HTTP/1.1", "1.1"), ("h2", "2")):
                env = emu.env(MAAS_API_BASE_URL=base + "/v1/maas",
                              MAAS_AUTH_URL=base + "/oauth2/token", MAAS_CA_BUNDLE=ca,
                              MAAS_HTTP_VERSION=version)
                offset = os.path.getsize(log)
                p = subprocess.run([bench_multi, str(n), str(tokens), "0"], env=env,
                                   capture_output=True, text=True)
                if p.returncode != 0:
                    sys.stderr.write(p.stderr)
                    raise SystemExit(f"bench-h2: bench-multi failed over {name}")
                f = fields(p.stdout)
                # The proxy logs a stream as it closes it, a moment after the client
                # saw its end: read until all N are there (bounded).
                deadline = time.monotonic() + 10
                reqs = requests_since(log, offset, "/generatestream")
                while len(reqs) < n and time.monotonic() < deadline:
                    time.sleep(0.01)
                    reqs = requests_since(log, offset, "/generatestream")
                protos = sorted({a for _, a, _ in reqs})
                conns = len({port_ for port_, _, _ in reqs})
                cpu = float(f["cpu"])
                rows[name] = cpu
                print(f"{name:10} {conns:6d} {','.join(protos):>9} {cpu:7.2f} "
                      f"{cpu * 1e6 / n:10.0f} {float(f['rss_per_stream_kib']):11.1f} "
                      f"{float(f['tokens_per_s']):9.0f}   ({len(reqs)} logged)")
            print(f"h2 CPU per stream: {rows['h2'] / rows['HTTP/1.1']:.2f} of HTTP/1.1's "
                  f"(target <= 0.20); connections: target <= 16")
    finally:
        if front is not None:
            front.terminate()
            front.wait()
        emu.stop()


if __name__ == "__main__":
    main()
