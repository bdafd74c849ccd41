#!/usr/bin/python3
"""The maas command-line client against maas-emulator: output, events, exit codes."""
import json
import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emu import Emulator, run as emu_run  # noqa: E402

MAAS = os.environ.get("MAAS_CLI")
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.1"


def run(emu, *args, stdin=None, env=None, timeout=60):
    return emu_run([MAAS, *args], env or emu.env(), stdin=stdin, timeout=timeout)


class Cli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.emu = Emulator()

    @classmethod
    def tearDownClass(cls):
        # A clean shutdown: the emulator exits 0 after every test's connections.
        if cls.emu.stop() != 0:
            raise AssertionError("maas-emulator did not shut down cleanly")

    def setUp(self):
        self.emu.reset()

    def events(self, out):
        # split("\n"), not splitlines(): tokens may hold U+2028 or U+0085.
        return [json.loads(line) for line in out.split("\n") if line]

    def test_help_and_version(self):
        rc, out, _ = run(self.emu, "--help")
        self.assertEqual(rc, 0)
        for word in ("models", "generate", "--max-tokens", "--idle-timeout", "Exit status"):
            self.assertIn(word, out)
        rc, out, _ = run(self.emu, "--version")
        self.assertEqual(rc, 0)
        self.assertRegex(out, r"^maas \d+\.\d+\.\d+ \(libmaas \d+\.\d+\.\d+\)")

    def test_models(self):
        rc, out, err = run(self.emu, "models")
        self.assertEqual((rc, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(len(lines), 5)
        self.assertEqual(lines[2].split("\t"),
                         [MISTRAL, "maas-model-mistral-7b-v0.1",
                          "269c3034-e6c7-4359-9e77-c3efedfaa778"])

    def test_models_json(self):
        rc, out, _ = run(self.emu, "models", "--json")
        self.assertEqual(rc, 0)
        models = json.loads(out)["models"]
        self.assertEqual(len(models), 5)
        self.assertEqual(models[0]["product_name"], "maas-model-qwen-2.5-coder-32b")

    def test_generate_text_is_the_generated_text(self):
        rc, out, err = run(self.emu, "generate", "--model", MISTRAL, "--max-tokens", "20",
                           "--details", "Tell me a joke")
        self.assertEqual(rc, 0, err)
        rc2, jout, _ = run(self.emu, "generate", "--model", MISTRAL, "--max-tokens", "20",
                           "--json", "Tell me a joke")
        self.assertEqual(rc2, 0)
        ev = self.events(jout)
        details = ev[-1]
        self.assertEqual(details["type"], "details")
        self.assertEqual(details["generated_tokens"], 20)
        self.assertEqual(details["finish_reason"], "FINISH_REASON_LENGTH")
        self.assertTrue(details["seed"].isdigit())
        self.assertEqual([e["index"] for e in ev[:-1]], list(range(20)))
        # Plain output: the text of the non-special tokens and one newline.
        self.assertEqual(out, details["generated_text"] + "\n")
        self.assertIn("finish_reason: FINISH_REASON_LENGTH", err)
        self.assertIn("generated_tokens: 20", err)
        self.assertRegex(err, r"seed: \d+")

    def test_special_token_not_printed(self):
        rc, out, _ = run(self.emu, "generate", "--max-tokens", "2047", "--json", "Tell me a joke")
        self.assertEqual(rc, 0)
        ev = self.events(out)
        self.assertTrue(ev[-2]["special"])
        self.assertEqual(ev[-1]["finish_reason"], "FINISH_REASON_EOS_TOKEN")
        rc, text, err = run(self.emu, "generate", "--max-tokens", "2047", "Tell me a joke")
        self.assertEqual(rc, 0, err)
        self.assertEqual(text, ev[-1]["generated_text"] + "\n")
        self.assertNotIn("</s>", text)

    def test_default_model_is_the_first_listed(self):
        rc, out, _ = run(self.emu, "generate", "--max-tokens", "3", "--json", "Tell me a joke")
        self.assertEqual(rc, 0)
        self.assertEqual(self.emu.stats()["models_requests"], 1)

    def test_product_name_as_model(self):
        rc, _, err = run(self.emu, "generate", "--model", "maas-model-llama-3.1-8b",
                         "--max-tokens", "3", "Tell me a joke")
        self.assertEqual(rc, 0, err)

    def test_prompt_after_double_dash(self):
        rc, out, err = run(self.emu, "generate", "--model", MISTRAL, "--max-tokens", "3",
                           "--json", "--", "-x is a prompt")
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.events(out)[-1]["type"], "details")

    def test_prompt_from_stdin(self):
        rc, out, _ = run(self.emu, "generate", "--model", MISTRAL, "--max-tokens", "5", "-",
                         stdin="Tell me a joke\n")
        rc2, out2, _ = run(self.emu, "generate", "--model", MISTRAL, "--max-tokens", "5",
                           "Tell me a joke")
        self.assertEqual((rc, rc2), (0, 0))
        self.assertEqual(out, out2)

    def test_usage_errors(self):
        for args in (["generate"], ["generate", "--max-tokens", "2048", "x y"],
                     ["generate", "--temperature", "1", "x y"], ["generate", "--bogus", "x y"],
                     ["frobnicate"], [], ["models", "--bogus"], ["generate", "--model"]):
            rc, out, err = run(self.emu, *args)
            self.assertEqual(rc, 2, args)
            self.assertTrue(err.startswith("maas: usage: "), (args, err))
            self.assertEqual(len(err.splitlines()), 1, (args, err))
        self.assertEqual(self.emu.stats()["generate_requests"], 0)

    def test_http_version_flags(self):
        # --http1.1 / --http2 anywhere among a command's options; after "--"
        # the words are the prompt's. The emulator is plain HTTP: 1.1 either way.
        for flag in ("--http1.1", "--http2"):
            rc, out, err = run(self.emu, "models", flag)
            self.assertEqual((rc, err), (0, ""))
            rc, out, err = run(self.emu, "generate", flag, "--max-tokens", "3", "Tell me a joke")
            self.assertEqual(rc, 0, err)
        rc, out, err = run(self.emu, "generate", "--max-tokens", "3", "--", "--http2")
        self.assertEqual(rc, 0, err)
        # A bad MAAS_HTTP_VERSION is a configuration error that names the variable.
        rc, out, err = run(self.emu, "models", env=self.emu.env(MAAS_HTTP_VERSION="3"))
        self.assertEqual(rc, 3, err)
        self.assertIn("MAAS_HTTP_VERSION", err)

    def check_error(self, prompt, code, needle, *extra):
        rc, out, err = run(self.emu, "generate", "--model", MISTRAL, "--max-tokens", "10",
                           *extra, prompt)
        self.assertEqual(rc, code, err)
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("maas: "), err)
        self.assertIn(needle, lines[0])
        return out, lines[0]

    def test_exit_codes(self):
        self.check_error("Tell me [[fault:status=429]]", 6, "rate limited", "--retries", "0")
        self.check_error("Tell me [[fault:status=503]]", 6,
                         "sorry, we are at maximum capacity", "--retries", "0")
        self.check_error("Tell me [[fault:status=403]]", 4, "permission denied")
        self.check_error("Tell me [[fault:status=400]]", 5, "invalid request")
        out, line = self.check_error("Tell me [[fault:error-after=2]]", 9,
                                     "error in stream: sorry, we are at maximum capacity")
        self.assertIn("gRPC 14", line)
        self.check_error("Tell me [[fault:truncate-after=2]]", 9, "stream truncated")
        self.check_error("Tell me [[fault:malformed-after=2]]", 9, "protocol error")
        self.check_error("Tell me [[fault:stall-after=2]]", 8, "idle timeout",
                         "--idle-timeout", "0.3")
        self.check_error("Tell me [[fault:delay=200]]", 8, "deadline", "--timeout", "0.5")

    def test_refused_credentials(self):
        rc, out, err = run(self.emu, "models", env=self.emu.env(MAAS_CLIENT_SECRET="nope"))
        self.assertEqual(rc, 4)
        self.assertTrue(err.startswith("maas: authentication failed: invalid_client"), err)
        self.assertNotIn("nope", err)

    def test_missing_configuration(self):
        rc, _, err = run(self.emu, "models", env=self.emu.env(MAAS_CLIENT_ID=None))
        self.assertEqual(rc, 3)
        self.assertTrue(err.startswith("maas: configuration error: "), err)
        rc, _, err = run(self.emu, "generate", "--model", MISTRAL, "x y",
                         env=self.emu.env(MAAS_CLOUD_ACCOUNT=None))
        self.assertEqual(rc, 3)
        self.assertIn("MAAS_CLOUD_ACCOUNT", err)

    def test_unknown_model(self):
        rc, _, err = run(self.emu, "generate", "--model", "gpt-17", "Tell me a joke")
        self.assertEqual(rc, 5)
        self.assertIn("unknown model", err)
        self.assertIn("gpt-17", err)

    def test_unreachable_server(self):
        env = self.emu.env(MAAS_API_BASE_URL="http://127.0.0.1:1/v1/maas",
                           MAAS_AUTH_URL="http://127.0.0.1:1/oauth2/token")
        rc, _, err = run(self.emu, "models", env=env)
        self.assertEqual(rc, 7)
        self.assertTrue(err.startswith("maas: could not connect"), err)

    def test_secrets_never_printed(self):
        # Debug logging on every path that touches a credential or a token:
        # success, refresh-and-replay, refused credentials, errors.
        basic = "dGVzdC1jbGllbnQ6dGVzdC1zZWNyZXQ="  # base64("test-client:test-secret")
        jwt = re.compile(r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
        env = self.emu.env(MAAS_LOG="debug")
        runs = [run(self.emu, "models", env=env),
                run(self.emu, "generate", "--max-tokens", "3", "Tell me a joke", env=env),
                run(self.emu, "generate", "--max-tokens", "3", "Tell [[fault:expire-token]]",
                    env=env),
                run(self.emu, "generate", "--retries", "0", "--max-tokens", "3",
                    "Tell [[fault:status=503]]", env=env),
                run(self.emu, "models", env=self.emu.env(MAAS_LOG="debug",
                                                         MAAS_CLIENT_SECRET="other-secret")),
                run(self.emu, "models", env=self.emu.env(MAAS_LOG="debug",
                                                         MAAS_TOKEN="static.tokenvalue.xyz12345"))]
        self.assertIn("libmaas debug: ", runs[0][2])
        # Each run took the path it was meant to: success, a 401 on every
        # token (replayed once, then refused), a 503, refused credentials, a
        # static token the server does not know.
        self.assertEqual([r[0] for r in runs], [0, 0, 4, 6, 4, 4],
                         [r[2][-300:] for r in runs])
        for rc, out, err in runs:
            for text in (out, err):
                for secret in ("test-secret", "other-secret", basic, "tokenvalue"):
                    self.assertNotIn(secret, text)
                self.assertIsNone(jwt.search(text), text)

    def test_json_error_event(self):
        rc, out, err = run(self.emu, "generate", "--model", MISTRAL, "--max-tokens", "10",
                           "--json", "Tell me [[fault:error-after=1]]")
        self.assertEqual(rc, 9)
        ev = self.events(out)
        self.assertEqual(ev[0]["type"], "token")
        self.assertEqual(ev[-1]["type"], "error")
        self.assertEqual(ev[-1]["status"], "MAAS_ERR_STREAM")
        self.assertEqual(ev[-1]["grpc_code"], 14)

    def test_closed_pipe_cancels(self):
        # `maas generate ... | head -c 1`: the stream ends, no hang, no leaked connection.
        p = subprocess.Popen([MAAS, "generate", "--model", MISTRAL, "--max-tokens", "2000",
                              "Tell me [[fault:delay=5]]"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.emu.env())
        p.stdout.read(1)
        p.stdout.close()
        # The write fails: the stream is cancelled and the command says why (exit 1).
        self.assertEqual(p.wait(timeout=30), 1)
        err = p.stderr.read().decode()
        p.stderr.close()
        self.assertIn("maas: output error: ", err)
        # The stream was abandoned (2000 tokens 5 ms apart take 10 s) and its
        # connection closed: nothing left open at the emulator but this stats
        # request itself.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            st = self.emu.stats()
            if (st["connections_open"], st["streams_active"]) == (1, 0):
                break
            time.sleep(0.02)
        self.assertEqual((st["connections_open"], st["streams_active"]), (1, 0))


if __name__ == "__main__":
    result = unittest.main(verbosity=2, exit=False).result
    # A skip is not a pass: exit 77 so that meson reports SKIP, which scripts/test fails on.
    sys.exit(1 if not result.wasSuccessful() else 77 if result.skipped else 0)
