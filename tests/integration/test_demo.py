#!/usr/bin/python3
"""maas-demo (the guide's walkthrough in C) and the guide's own Python script
against maas-emulator."""
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emu import Emulator  # noqa: E402

DEMO = os.environ.get("MAAS_DEMO")
EXAMPLES = os.path.dirname(DEMO) if DEMO else None
GUIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guide_client.py")
PROMPT = ("Write a poem about programming, in four lines and two stanzas, which uses iambic "
          "pentameter in rhyming couplets.")


class Demo(unittest.TestCase):
    def setUp(self):
        self.emu = Emulator()

    def tearDown(self):
        self.assertEqual(self.emu.stop(), 0)

    def test_demo_walkthrough(self):
        p = subprocess.run([DEMO], capture_output=True, text=True, env=self.emu.env(),
                           timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout
        # The guide's four sections, in order.
        heads = ["=== Intel MaaS API Complete Demo ===", "1. Authentication Test",
                 "2. Available Models", "3. Text Generation Tests", "4. Parameter Variation Test"]
        pos = [out.index(h) for h in heads]
        self.assertEqual(pos, sorted(pos))
        self.assertIn("Authentication successful", out)
        self.assertIn("Found 5 available models:", out)
        self.assertEqual(out.count("Prompt: " + PROMPT), 5)
        self.assertEqual(out.count("Completion Details:"), 5)
        self.assertEqual(len(re.findall(r"- Tokens generated: \d+\n- Finish reason: FINISH_REASON_",
                                        out)), 5)
        self.assertEqual(out.count("Testing with parameters:"), 3)
        for mt, t in (("50", "0.2"), ("50", "0.8"), ("200", "0.5")):
            self.assertIn(f"- Max tokens: {mt}\n- Temperature: {t}\n", out)
        self.assertNotIn("✗", out)
        s = self.emu.stats()
        # One token for the whole run (the guide's script asks for ten).
        self.assertEqual(s["token_requests"], 1)
        self.assertEqual(s["generations"], 8)
        self.assertEqual(s["models_requests"], 1)

    def test_demo_reports_failures_per_step(self):
        # Every generation refused: each step says so, the run goes on, the exit says it failed.
        self.emu.fault("/v1/maas/generatestream", "status=400", 100)
        p = subprocess.run([DEMO], capture_output=True, text=True, env=self.emu.env(),
                           timeout=120)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stdout.count("✗ Generation failed: "), 8)
        self.assertIn("Found 5 available models:", p.stdout)

    def test_demo_with_bad_credentials(self):
        p = subprocess.run([DEMO], capture_output=True, text=True,
                           env=self.emu.env(MAAS_CLIENT_SECRET="wrong"), timeout=120)
        self.assertEqual(p.returncode, 1)
        self.assertIn("Authentication failed: invalid_client", p.stdout)
        self.assertIn("Failed to list models: invalid_client", p.stdout)
        self.assertNotIn("wrong", p.stdout + p.stderr)

    def run_example(self, name, *args):
        path = os.path.join(EXAMPLES, name)
        if not os.path.exists(path):
            self.skipTest(name + " was not built (its optional dependency is missing)")
        return subprocess.run([path, *args], capture_output=True, text=True,
                              env=self.emu.env(), timeout=120)

    def test_multi_poll_example(self):
        p = self.run_example("maas-multi-poll", "40")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("40 streams finished, 0 failed", p.stdout)
        s = self.emu.stats()
        self.assertEqual(s["generations"], 40)
        self.assertEqual(s["token_requests"], 1)

    def test_multi_uv_example(self):
        p = self.run_example("maas-multi-uv", "40")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("40 streams finished, 0 failed", p.stdout)
        self.assertEqual(self.emu.stats()["generations"], 40)

    def test_guide_script_against_emulator(self):
        # The product's own Python client, run by Debian's python3 with requests.
        p = subprocess.run(["/usr/bin/python3", GUIDE, "--check"], capture_output=True,
                           text=True, env=self.emu.env(), timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("Found 5 available models:", p.stdout)
        # The guide asks for a token before every call: 1 + 1 + 5 + 3.
        self.assertEqual(self.emu.stats()["token_requests"], 10)


if __name__ == "__main__":
    result = unittest.main(verbosity=2, exit=False).result
    # A skip is not a pass: exit 77 so that meson reports SKIP, which scripts/test fails on.
    sys.exit(1 if not result.wasSuccessful() else 77 if result.skipped else 0)
