#!/usr/bin/python3
"""examples/multi-asio.cpp (maas::Multi driven by standalone asio) against maas-emulator."""
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from emu import Emulator, run  # noqa: E402

EXAMPLE = os.environ.get("MAAS_MULTI_ASIO")


class MultiAsio(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not EXAMPLE:
            raise AssertionError("MAAS_MULTI_ASIO is not set: asio (libasio-dev) was not found")
        cls.emu = Emulator()

    @classmethod
    def tearDownClass(cls):
        if cls.emu.stop() != 0:
            raise AssertionError("maas-emulator did not shut down cleanly")

    def setUp(self):
        self.emu.reset()

    def check(self, n, prompt):
        rc, out, err = run([EXAMPLE, str(n), prompt], self.emu.env(), timeout=300)
        self.assertEqual(rc, 0, out + err)
        lines = out.splitlines()
        self.assertEqual(lines[-1], "%d of %d streams done" % (n, n))
        done = sorted(int(m.group(1)) for m in
                      (re.match(r"^stream (\d+): \d+ tokens, FINISH_REASON_\w+$", l)
                       for l in lines[:-1]) if m)
        self.assertEqual(done, list(range(n)))
        return self.emu.stats()

    def test_many_streams(self):
        stats = self.check(50, "Tell me a joke")
        self.assertEqual(stats["generations"], 50)
        self.assertEqual(stats["tokens_issued"], 1)

    def test_a_burst_larger_than_one_read(self):
        # Thousands of tokens written at once: libcurl reads part, and the
        # example must come back for the rest without a new readiness edge.
        self.check(4, "Tell me [[fault:coalesce]] [[fault:tokens=3000]]")

    def test_slow_streams_use_the_timer(self):
        # Pauses between tokens: the loop waits on sockets and the timer only.
        self.check(6, "Tell me [[fault:delay=30]] [[fault:tokens=8]]")


if __name__ == "__main__":
    unittest.main(verbosity=2)
