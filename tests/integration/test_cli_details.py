#!/usr/bin/python3
"""maas --details: timings and the rate-limit headers, after a stream and after a failure."""
import json
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emu import Emulator, run as emu_run  # noqa: E402

MAAS = os.environ.get("MAAS_CLI")
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.1"


def run(emu, *args):
    return emu_run([MAAS, *args], emu.env(), timeout=120)


def fields(err):
    """The "name: value" lines of stderr."""
    out = {}
    for line in err.splitlines():
        m = re.match(r"^([a-z_]+): (.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


class Details(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.emu = Emulator()

    @classmethod
    def tearDownClass(cls):
        if cls.emu.stop() != 0:
            raise AssertionError("maas-emulator did not shut down cleanly")

    def setUp(self):
        self.emu.reset()

    def test_timings_and_rate_limits(self):
        rc, _, err = run(self.emu, "generate", "--model", MISTRAL, "--max-tokens", "5",
                         "--details",
                         "Tell me a joke [[fault:rate-limit=100,98,20]] [[fault:retry-after=3]]"
                         " [[fault:delay=50]]")
        self.assertEqual(rc, 0, err)
        f = fields(err)
        self.assertEqual(f["rate_limit_limit"], "100")
        self.assertEqual(f["rate_limit_remaining"], "98")
        self.assertEqual(f["rate_limit_reset"], "20.000 s")
        self.assertEqual(f["retry_after"], "3.000 s")
        ttft = float(f["time_to_first_token"].split()[0])
        total = float(f["total_time"].split()[0])
        self.assertGreaterEqual(total, ttft)
        # 5 tokens, 50 ms apart: the stream lasts at least 4 pauses.
        self.assertGreaterEqual(total, 0.19)
        self.assertGreater(float(f["tokens_per_second"]), 0.0)

    def test_no_headers_no_lines(self):
        rc, _, err = run(self.emu, "generate", "--model", MISTRAL, "--max-tokens", "5",
                         "--details", "Tell me a joke")
        self.assertEqual(rc, 0, err)
        f = fields(err)
        self.assertIn("total_time", f)
        for name in ("rate_limit_limit", "rate_limit_remaining", "rate_limit_reset",
                     "retry_after"):
            self.assertNotIn(name, f)

    def test_json_details(self):
        rc, out, err = run(self.emu, "generate", "--model", MISTRAL, "--max-tokens", "5",
                           "--json", "Tell me a joke [[fault:rate-limit=7,6,5]]")
        self.assertEqual(rc, 0, err)
        d = [json.loads(line) for line in out.split("\n") if line][-1]
        self.assertEqual(d["type"], "details")
        self.assertEqual((d["rate_limit_limit"], d["rate_limit_remaining"]), (7, 6))
        self.assertEqual(d["rate_limit_reset"], 5.0)
        self.assertGreaterEqual(d["total_time"], d["time_to_first_token"])

    def test_after_a_failure(self):
        rc, _, err = run(self.emu, "generate", "--model", MISTRAL, "--max-tokens", "5",
                         "--details", "--retries", "0",
                         "Tell me a joke [[fault:status=429]] [[fault:rate-limit=60,0,30]]"
                         " [[fault:retry-after=30]]")
        self.assertNotEqual(rc, 0)
        self.assertIn("rate limited", err)
        f = fields(err)
        self.assertEqual(f["rate_limit_limit"], "60")
        self.assertEqual(f["rate_limit_remaining"], "0")
        self.assertEqual(f["retry_after"], "30.000 s")


if __name__ == "__main__":
    unittest.main(verbosity=2)
