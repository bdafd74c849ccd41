"""Start maas-emulator on an ephemeral loopback port for a Python test."""
import json
import os
import signal
import subprocess
import time
import urllib.request


def run(cmd, env, stdin=None, timeout=120):
    """Run a program; (exit status, stdout, stderr). Bytes decoded by hand:
    text mode would turn a token's "\\r" into "\\n"."""
    p = subprocess.run(cmd, input=stdin.encode() if stdin else None, capture_output=True,
                       env=env, timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class Emulator:
    def __init__(self, *args):
        path = os.environ["MAAS_EMULATOR"]
        cmd = [path, "--port", "0"]
        if not os.environ.get("MAAS_EMULATOR_VERBOSE"):
            cmd.append("--quiet")
        cmd += list(args)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.urls = {}
        deadline = time.monotonic() + 15
        while "MAAS_EMULATOR_URL" not in self.urls:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("maas-emulator did not start")
            line = self.proc.stdout.readline()
            if "=" in line:
                k, v = line.strip().split("=", 1)
                self.urls[k] = v
        self.root = self.urls["MAAS_EMULATOR_URL"]

    def env(self, **extra):
        """An environment aimed at the emulator, without proxies."""
        e = {k: v for k, v in os.environ.items()
             if not k.lower().endswith("_proxy") and not k.startswith("MAAS_")}
        e.update(MAAS_CLIENT_ID="test-client", MAAS_CLIENT_SECRET="test-secret",
                 MAAS_CLOUD_ACCOUNT="123456789012",
                 MAAS_API_BASE_URL=self.urls["MAAS_API_BASE_URL"],
                 MAAS_AUTH_URL=self.urls["MAAS_AUTH_URL"],
                 NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        e.update(extra)
        return {k: v for k, v in e.items() if v is not None}

    def _open(self, req):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=20) as r:
            return r.status, r.read()

    def stats(self):
        return json.loads(self._open(self.root + "/emulator/stats")[1])

    def post(self, path, body=None):
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(self.root + path, data=data,
                                     headers={"Content-Type": "application/json"})
        return self._open(req)[0]

    def reset(self):
        self.post("/emulator/reset")

    def fault(self, path, fault, count=1):
        self.post("/emulator/faults", {"path": path, "fault": fault, "count": count})

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode
