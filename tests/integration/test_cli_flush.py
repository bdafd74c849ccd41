#!/usr/bin/python3
"""maas generate writes each token out as soon as it has arrived.

The CLI buffers stdout fully and flushes when maas_token.last_buffered says
the tokens received so far are all out. This test proves the output still
appears token by token when tokens come slowly: a scripted server on
loopback sends the next token line only once the test has read the text of
the previous one from the CLI's stdout (a pipe, then a pseudo-terminal). A
CLI that held a token back would stall the server: the wait for it has a
generous clock, and a wait that runs out fails the test.
"""
import os
import pty
import select
import socket
import subprocess
import threading
import unittest

MAAS = os.environ.get("MAAS_CLI")
WAIT_S = 60  # per token; a stalled token fails the test, it does not hang it
TOKENS = ["Once", " upon", " a", " time", ",", " caf\u00e9", " \U0001F642", " end"]

MODELS = b'{"models":[{"model_name":"m","product_name":"p","product_id":"x"}]}'


def token_line(i, text):
    import json
    return (json.dumps({"result": {"response": {
        "token": {"id": 100 + i, "text": text, "logprob": -0.5, "special": False},
        "top_tokens": [], "requestID": "rid-1"}}}, separators=(",", ":")) + "\n").encode()


FINAL = (b'{"result":{"response":{"token":{"id":2,"text":"</s>","special":true},'
         b'"top_tokens":[],"generated_text":"x","details":{"finish_reason":'
         b'"FINISH_REASON_EOS_TOKEN","generated_tokens":9},"requestID":"rid-1"}}}\n')


class LockstepServer:
    """Serves /models, and /generatestream one token line at a time: the line of
    token i+1 is sent once `shown(i)` has been signalled."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.cond = threading.Condition()
        self.shown_count = 0
        self.stalled = []  # tokens whose predecessor never showed
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def shown(self, count):
        with self.cond:
            self.shown_count = count
            self.cond.notify_all()

    def wait_shown(self, count):
        with self.cond:
            return self.cond.wait_for(lambda: self.shown_count >= count, WAIT_S)

    def loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.serve(conn)

    def serve(self, conn):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                return
            head += chunk
        head, _, body = head.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            body += chunk
        if b" /models " in head.split(b"\r\n")[0]:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(MODELS), MODELS))
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                     b"Connection: close\r\n\r\n")
        for i, text in enumerate(TOKENS):
            # Once one token stalled, the rest go at once: fail in one clock, not in eight.
            if i > 0 and not self.stalled and not self.wait_shown(i):
                self.stalled.append(i)
            conn.sendall(token_line(i, text))
        conn.sendall(FINAL)

    def close(self):
        self.sock.close()


class CliFlush(unittest.TestCase):
    def setUp(self):
        self.server = LockstepServer()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("MAAS_") and not k.lower().endswith("_proxy")}
        self.env.update(MAAS_TOKEN="static-test-token", MAAS_API_BASE_URL=self.server.url,
                        MAAS_CLOUD_ACCOUNT="123456789012", NO_PROXY="127.0.0.1")

    def tearDown(self):
        self.server.close()

    def follow(self, read_fd, proc):
        """Read the CLI's output as it comes; tell the server how many tokens showed."""
        out = b""
        want = [("".join(TOKENS[:i + 1])).encode() for i in range(len(TOKENS))]
        shown = 0
        while True:
            r, _, _ = select.select([read_fd], [], [], WAIT_S * 2)
            if not r:
                break
            try:
                chunk = os.read(read_fd, 65536)
            except OSError:  # a pty's master reads EIO once the child is gone
                chunk = b""
            if not chunk:
                break
            out += chunk
            while shown < len(want) and out.startswith(want[shown]):
                shown += 1
            self.server.shown(shown)
        proc.wait(timeout=WAIT_S)
        return out

    def check(self, out, rc, newline):
        self.assertEqual(self.server.stalled, [],
                         "token %s was not shown before the next was sent" % self.server.stalled)
        self.assertEqual(out, "".join(TOKENS).encode() + newline)
        self.assertEqual(rc, 0)

    def test_slow_tokens_through_a_pipe(self):
        r, w = os.pipe()
        proc = subprocess.Popen([MAAS, "generate", "--model", "m", "a prompt"], stdout=w, stdin=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=self.env)
        os.close(w)
        try:
            out = self.follow(r, proc)
        finally:
            os.close(r)
        self.check(out, proc.returncode, b"\n")

    def test_slow_tokens_on_a_terminal(self):
        master, slave = pty.openpty()
        proc = subprocess.Popen([MAAS, "generate", "--model", "m", "a prompt"], stdout=slave, stdin=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=self.env)
        os.close(slave)
        try:
            out = self.follow(master, proc)
        finally:
            os.close(master)
        self.check(out, proc.returncode, b"\r\n")  # the terminal's own CRLF


if __name__ == "__main__":
    if not MAAS:
        raise SystemExit("MAAS_CLI is not set")
    unittest.main()
