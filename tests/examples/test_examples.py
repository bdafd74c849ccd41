#!/usr/bin/python3
"""The small example programs against maas-emulator: output and exit status.

usage: test_examples.py [WRAPPER...]

The programs come from the environment: MAAS_HELLO (examples/hello.c, the
README's snippet, compiled as is), MAAS_CPP_EXAMPLE (examples/cpp-example.cpp;
its tests are skipped when it is not set) and MAAS_CLI (the maas command, the
reference for the text). MAAS_EMULATOR is the emulator. Arguments, if any,
are a command the examples run under, e.g. valgrind with its options.
"""
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from emu import Emulator, run as emu_run  # noqa: E402

WRAPPER = sys.argv[1:]
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.1"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def run(program, env, *args, wrapped=True, timeout=120):
    return emu_run((WRAPPER if wrapped else []) + [program, *args], env, timeout=timeout)


class Examples(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.emu = Emulator()

    @classmethod
    def tearDownClass(cls):
        if cls.emu.stop() != 0:
            raise AssertionError("maas-emulator did not shut down cleanly")

    def setUp(self):
        self.emu.reset()

    # ---- hello.c: the README's program --------------------------------------

    def test_hello_streams_the_text(self):
        rc, out, err = run(os.environ["MAAS_HELLO"], self.emu.env())
        self.assertEqual((rc, err), (0, ""))
        self.assertTrue(out.strip(), "hello printed no text")
        # It is exactly the text of that request (greedy, 250 new tokens at
        # most), as the maas command prints it with a final newline.
        rc, ref, _ = run(os.environ["MAAS_CLI"], self.emu.env(), "generate", "--model", MISTRAL,
                         "--temperature", "0", "--max-tokens", "250", "Tell me a joke",
                         wrapped=False)
        self.assertEqual(rc, 0)
        self.assertEqual(out + "\n", ref)
        stats = self.emu.stats()
        self.assertEqual(stats["generations"], 2)

    def test_hello_refused_credentials(self):
        rc, out, err = run(os.environ["MAAS_HELLO"], self.emu.env(MAAS_CLIENT_SECRET="wrong"))
        self.assertEqual((rc, out), (1, ""))
        self.assertRegex(err, r"^\nauthentication failed: .*invalid_client")
        self.assertNotIn("wrong", err)

    def test_hello_without_configuration(self):
        env = {k: v for k, v in self.emu.env().items() if not k.startswith("MAAS_")}
        rc, out, err = run(os.environ["MAAS_HELLO"], env)
        self.assertEqual((rc, out), (1, ""))
        self.assertTrue(err.startswith("\nconfiguration error: "), err)

    # ---- cpp-example.cpp: the C++ layer ---------------------------------------

    def cpp(self):
        path = os.environ.get("MAAS_CPP_EXAMPLE")
        if not path:
            self.skipTest("no C++ compiler: maas-cpp-example was not built")
        return path

    def test_cpp_example_streams_the_text(self):
        rc, out, err = run(self.cpp(), self.emu.env(), "Tell me a joke")
        self.assertEqual(rc, 0, err)
        self.assertTrue(out.strip())
        self.assertEqual(len(re.findall(r"^model: ", err, re.M)), 5)
        self.assertRegex(err, r"model: %s \(maas-model-mistral-7b-v0.1\)" % re.escape(MISTRAL))
        self.assertRegex(err, r"FINISH_REASON_LENGTH, 40 tokens, request %s\n" % UUID)

    def test_cpp_example_names_its_model(self):
        rc, out, err = run(self.cpp(), self.emu.env(MAAS_MODEL="maas-model-llama-3.1-8b"))
        self.assertEqual(rc, 0, err)
        self.assertTrue(out.strip())
        rc, _, err = run(self.cpp(), self.emu.env(MAAS_MODEL="no/such-model"))
        self.assertEqual(rc, 1)
        self.assertIn("no model named no/such-model", err)

    def test_cpp_example_reports_errors(self):
        rc, out, err = run(self.cpp(), self.emu.env(), "Tell me a joke [[fault:status=403]]")
        self.assertEqual(rc, 1)
        self.assertEqual(out, "")
        self.assertRegex(err, r"maas-cpp-example: permission denied: .*"
                              r"\(MAAS_ERR_PERMISSION_DENIED, HTTP 403, request %s\)\n" % UUID)


if __name__ == "__main__":
    result = unittest.main(argv=sys.argv[:1], verbosity=2, exit=False).result
    # A skip is not a pass: exit 77 so that meson reports SKIP, which scripts/test fails on.
    sys.exit(1 if not result.wasSuccessful() else 77 if result.skipped else 0)
