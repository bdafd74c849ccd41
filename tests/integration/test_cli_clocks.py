#!/usr/bin/python3
"""maas models --timeout: a trickled catalogue ends at the deadline the user gave."""
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emu import Emulator, run as emu_run  # noqa: E402

MAAS = os.environ.get("MAAS_CLI")
EXIT_TIMEOUT = 8


class CliClocks(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.emu = Emulator()

    @classmethod
    def tearDownClass(cls):
        if cls.emu.stop() != 0:
            raise AssertionError("maas-emulator did not shut down cleanly")

    def setUp(self):
        self.emu.reset()

    def test_models_timeout(self):
        # One byte a second: without a deadline the call would take minutes.
        self.emu.fault("/v1/maas/models", "drip=1000", 5)
        start = time.monotonic()
        rc, out, err = emu_run([MAAS, "models", "--timeout", "2"], self.emu.env(), timeout=120)
        took = time.monotonic() - start
        self.assertEqual(rc, EXIT_TIMEOUT, err)
        self.assertEqual(out, "")
        self.assertIn("2000 ms deadline of GET /models", err)
        self.assertGreaterEqual(took, 2.0)
        self.assertLess(took, 20.0)

    def test_models_timeout_usage(self):
        rc, _, err = emu_run([MAAS, "models", "--timeout", "soon"], self.emu.env())
        self.assertEqual(rc, 2)
        self.assertIn("--timeout", err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
