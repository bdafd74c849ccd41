#!/usr/bin/python3
"""The maas CLI as docs/security.md promises it: no core dump, server text shown
and not obeyed, bad input refused before any traffic, messages a new user can
act on. Exact expected text throughout."""
import json
import os
import pty
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emu import Emulator, run as emu_run  # noqa: E402

MAAS = os.environ.get("MAAS_CLI")
EMULATOR = os.environ.get("MAAS_EMULATOR")
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.1"

# Names that clear the screen, set the window title, use a C1 CSI, forge a line.
HOSTILE_MODEL = "evil\x1b]0;title\x07name\u009b2J"
HOSTILE_PRODUCT = "p\x1b[2J"
HOSTILE_ID = "id\r\nmaas: forged"
HOSTILE_TOKEN = "\x1b[31mred\x1b[0m\r\n\tok\u009b1m"


def run(emu, *args, stdin=None, env=None, timeout=120):
    return emu_run([MAAS, *args], env or emu.env(), stdin=stdin, timeout=timeout)


def run_bytes(args, env, stdin=None, timeout=120):
    p = subprocess.run([MAAS, *args], input=stdin, capture_output=True, env=env,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Hostile(BaseHTTPRequestHandler):
    """A server whose every string is an attack on a terminal."""

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n)

    def do_POST(self):
        self.read_body()
        if self.path == "/oauth2/token":
            self.answer(200, json.dumps({"access_token": "tok-abcdef", "expires_in": 3600,
                                         "token_type": "Bearer"}))
        elif self.path == "/v1/maas/generatestream":
            lines = [{"result": {"response": {"token": {"id": 1, "text": HOSTILE_TOKEN,
                                                        "special": False}}}},
                     {"result": {"response": {"token": {"id": 2, "text": "</s>",
                                                        "special": True},
                                              "generated_text": HOSTILE_TOKEN,
                                              "details": {"finish_reason": "FINISH_REASON_EOS_TOKEN",
                                                          "generated_tokens": 2}}}}]
            if self.server.stream_error:
                lines = [{"error": {"code": 13, "message": "boom\x1b[5m\nmaas: forged"}}]
            self.answer(200, "".join(json.dumps(x) + "\n" for x in lines))
        else:
            self.answer(404, "{}")

    def do_GET(self):
        if self.path == "/v1/maas/models":
            self.answer(200, json.dumps({"models": [{"model_name": HOSTILE_MODEL,
                                                     "product_id": HOSTILE_ID,
                                                     "product_name": HOSTILE_PRODUCT}]}))
        else:
            self.answer(404, "{}")


class HostileServer:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
        self.httpd.stream_error = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        base = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.api, self.auth = base + "/v1/maas", base + "/oauth2/token"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class SecurityCli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.emu = Emulator()
        cls.hostile = HostileServer()

    @classmethod
    def tearDownClass(cls):
        cls.hostile.stop()
        if cls.emu.stop() != 0:
            raise AssertionError("maas-emulator did not shut down cleanly")

    def setUp(self):
        self.emu.reset()
        self.hostile.httpd.stream_error = False

    def hostile_env(self):
        return self.emu.env(MAAS_API_BASE_URL=self.hostile.api, MAAS_AUTH_URL=self.hostile.auth)

    def assert_no_traffic(self):
        stats = self.emu.stats()
        for name in ("token_requests", "models_requests", "generate_requests"):
            self.assertEqual(stats[name], 0, name)

    # ---- 2. server text on a terminal -----------------------------------------

    def test_model_names_escaped(self):
        rc, out, err = run_bytes(["models"], self.hostile_env())
        self.assertEqual((rc, err), (0, b""))
        self.assertEqual(out, b"evil\\x1b]0;title\\x07name\\u009b2J\tp\\x1b[2J\t"
                              b"id\\r\\nmaas: forged\n")
        rc, out, err = run_bytes(["models", "--json"], self.hostile_env())
        self.assertEqual(rc, 0)
        self.assertNotIn(b"\xc2\x9b", out)
        self.assertIn(b"\\u009b2J", out)
        self.assertEqual(json.loads(out)["models"][0]["model_name"], HOSTILE_MODEL)

    def test_generated_text_raw_in_a_pipe(self):
        rc, out, err = run_bytes(["generate", "--model", HOSTILE_MODEL, "Tell me"],
                                 self.hostile_env())
        self.assertEqual((rc, err), (0, b""))
        self.assertEqual(out, HOSTILE_TOKEN.encode() + b"\n")

    def test_generated_text_escaped_on_a_terminal(self):
        master, slave = pty.openpty()
        p = subprocess.Popen([MAAS, "generate", "--model", HOSTILE_MODEL, "Tell me"],
                             stdout=slave, stderr=subprocess.PIPE, env=self.hostile_env())
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            out += chunk
        os.close(master)
        self.assertEqual(p.wait(timeout=60), 0)
        p.stderr.close()
        # The terminal's own line discipline turns "\n" into "\r\n".
        self.assertEqual(out, b"\\x1b[31mred\\x1b[0m\\r\r\n\tok\\u009b1m\r\n")

    def test_stream_error_escaped(self):
        self.hostile.httpd.stream_error = True
        rc, out, err = run_bytes(["generate", "--model", HOSTILE_MODEL, "Tell me"],
                                 self.hostile_env())
        self.assertEqual(rc, 9)
        self.assertEqual(err, b"maas: error in stream: boom\\x1b[5m\\nmaas: forged "
                              b"(HTTP 200, gRPC 13)\n")

    # ---- 5. core dumps ----------------------------------------------------------

    def wait_not_dumpable(self, pid, cli, timeout=30.0):
        """/proc/PID/status belongs to root once a process is not dumpable. Before
        setpriv has become the CLI it belongs to root too: wait for the exec."""
        deadline = time.monotonic() + timeout
        maas = os.path.realpath(cli)
        while time.monotonic() < deadline:
            try:
                is_cli = os.readlink("/proc/%d/exe" % pid) == maas
            except OSError:
                is_cli = False
            if is_cli and os.stat("/proc/%d/status" % pid).st_uid == 0:
                return True
            time.sleep(0.05)
        return False

    @unittest.skipUnless(os.geteuid() == 0, "needs root to run the CLI as another user")
    def test_no_core_dumps(self):
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        # The control: an ordinary process of that user owns its /proc entry.
        ctl = subprocess.Popen(as_nobody + ["cat"], stdin=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while os.stat("/proc/%d/status" % ctl.pid).st_uid != 65534:
                self.assertLess(time.monotonic(), deadline, "setpriv did not switch user")
                time.sleep(0.05)
        finally:
            ctl.stdin.close()
            ctl.wait(timeout=30)
        # That user may not reach the build tree (a clone under a 0700 directory):
        # run a copy of the CLI, beside the library its run path ($ORIGIN/..) finds.
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        os.mkdir(os.path.join(tmp, "bin"))
        cli = shutil.copy2(MAAS, os.path.join(tmp, "bin", "maas"))
        shutil.copy2(os.path.join(os.path.dirname(os.path.realpath(MAAS)), "..", "libmaas.so.0"),
                     tmp)
        for d in (tmp, os.path.join(tmp, "bin")):
            os.chmod(d, 0o755)
        p = subprocess.Popen(as_nobody + [cli, "generate", "--model", MISTRAL,
                                          "--max-tokens", "3", "-"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=self.emu.env())
        try:
            # The CLI waits for its prompt on stdin: it is alive and past main's start.
            dumpable_off = self.wait_not_dumpable(p.pid, cli)
            with open("/proc/%d/limits" % p.pid) as f:
                core = [line for line in f if line.startswith("Max core file size")]
        finally:
            out, err = p.communicate(b"Tell me a joke", timeout=60)
        self.assertTrue(dumpable_off, "the CLI is still dumpable")
        self.assertEqual(core[0].split()[4:6], ["0", "0"], core)
        self.assertEqual(p.returncode, 0, err)

    # ---- 6. small inputs ------------------------------------------------------------

    def test_nul_in_stdin_prompt(self):
        rc, out, err = run_bytes(["generate", "--model", MISTRAL, "-"], self.emu.env(),
                                 stdin=b"ab\x00cd secret")
        self.assertEqual((rc, out), (2, b""))
        self.assertEqual(err, b"maas: usage: the prompt on stdin contains a NUL byte (at byte 2)\n")
        self.assert_no_traffic()

    def test_stdin_prompt_over_16mib(self):
        rc, out, err = run_bytes(["generate", "--model", MISTRAL, "-"], self.emu.env(),
                                 stdin=b"a" * (16 * 1024 * 1024 + 1))
        self.assertEqual((rc, out), (2, b""))
        self.assertEqual(err, b"maas: usage: the prompt on stdin is larger than the service's "
                              b"limit of 16 MiB (16777216 bytes)\n")
        self.assert_no_traffic()

    def test_emulator_refuses_non_loopback(self):
        # Addresses this machine does not have first: a broken check then
        # fails to bind rather than listening on every interface.
        for host in ("10.1.2.3", "192.0.2.1", "0.0.0.0", "::"):
            p = subprocess.run([EMULATOR, "--host", host, "--port", "0", "--quiet"],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 2, host)
            self.assertEqual(p.stderr,
                             "maas-emulator: --host %s is not a loopback address: anyone who "
                             "can reach it could use the unauthenticated /emulator/ control "
                             "endpoints; pass --allow-non-loopback to listen there anyway\n"
                             % host)
        other = Emulator("--host", "127.0.0.2")
        self.assertEqual(other.stop(), 0)

    # ---- 7. messages ------------------------------------------------------------------

    def test_short_prompt_is_usage_before_traffic(self):
        for prompt, n in (("", 0), ("a", 1), ("\u00e9", 1)):
            rc, out, err = run(self.emu, "generate", prompt)
            self.assertEqual((rc, out), (2, ""))
            self.assertEqual(err, "maas: usage: the prompt must be at least 2 characters, "
                                  "got %d\n" % n)
        rc, out, err = run(self.emu, "generate", "-", stdin="x\n")
        self.assertEqual((rc, err), (2, "maas: usage: the prompt must be at least 2 "
                                        "characters, got 1\n"))
        self.assert_no_traffic()

    def test_connect_failure_names_endpoint(self):
        port = closed_port()
        rc, _, err = run(self.emu, "models", env=self.emu.env(
            MAAS_AUTH_URL="http://127.0.0.1:%d/oauth2/token" % port))
        self.assertEqual(rc, 7)
        self.assertRegex(err, r"^maas: could not connect: token endpoint: Failed to connect to "
                              r"127\.0\.0\.1 port %d after \d+ ms: "
                              r"(Couldn't connect to server|Connection refused)( \(\d+ attempts\))?\n$" % port)
        token = json.loads(urllib_token(self.emu))["access_token"]
        rc, _, err = run(self.emu, "models", env=self.emu.env(
            MAAS_TOKEN=token, MAAS_API_BASE_URL="http://127.0.0.1:%d/v1/maas" % port))
        self.assertEqual(rc, 7)
        self.assertRegex(err, r"^maas: could not connect: API: Failed to connect to "
                              r"127\.0\.0\.1 port %d after \d+ ms: "
                              r"(Couldn't connect to server|Connection refused)( \(\d+ attempts\))?\n$" % port)

    def test_permission_denied_said_once(self):
        rc, _, err = run(self.emu, "generate", "--model", MISTRAL, "Tell me a joke",
                         env=self.emu.env(MAAS_CLOUD_ACCOUNT="999999999999"))
        self.assertEqual(rc, 4)
        self.assertEqual(err, "maas: permission denied: cloudAccountId is not the caller's "
                              "cloud account (HTTP 403, gRPC 7)\n")

    def test_temperature_range(self):
        for value in ("1.5", "1", "-0.1", "nan", "x"):
            rc, out, err = run(self.emu, "generate", "--temperature", value, "Tell me")
            self.assertEqual((rc, out), (2, ""))
            self.assertEqual(err, "maas: usage: --temperature needs a number with 0 <= T < 1, "
                                  "got '%s'\n" % value)
        self.assert_no_traffic()

    def test_https_to_plain_port_explained(self):
        # A plain-HTTP server that speaks first, so that the client's TLS layer
        # always reads a status line where a record belongs (an HTTP server
        # that answers the ClientHello may close before it is read).
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)

        def speak():
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                with conn:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    while conn.recv(4096):
                        pass

        t = threading.Thread(target=speak, daemon=True)
        t.start()
        auth = "https://127.0.0.1:%d/oauth2/token" % srv.getsockname()[1]
        try:
            rc, _, err = run(self.emu, "models", env=self.emu.env(MAAS_AUTH_URL=auth))
        finally:
            srv.shutdown(socket.SHUT_RDWR)
            srv.close()
            t.join(timeout=30)
        self.assertEqual(rc, 7)
        self.assertRegex(err, r"^maas: TLS error: token endpoint: .*wrong version number "
                              r"\(the server answered without TLS: is that port a plain-HTTP "
                              r"one, or the wrong port\?\)\n$")


def urllib_token(emu):
    import base64
    import urllib.request
    req = urllib.request.Request(
        emu.urls["MAAS_AUTH_URL"], data=b"grant_type=client_credentials",
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Authorization": "Basic " + base64.b64encode(b"test-client:test-secret").decode()})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=20) as r:
        return r.read()


if __name__ == "__main__":
    unittest.main(verbosity=2)
