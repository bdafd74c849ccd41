#!/usr/bin/python3
"""maas batch against maas-emulator: results, faults, resume after kill -9,
validation, shards, progress on a terminal, signals, back-off, memory."""
import json
import os
import pty
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emu import Emulator, run as emu_run  # noqa: E402

MAAS = os.environ.get("MAAS_CLI")
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.1"
OK_FIELDS = {"id", "text", "finish_reason", "generated_tokens", "seed", "request_id",
             "attempts", "ttft_ms", "duration_ms"}
ERR_FIELDS = {"status", "message", "http_status", "grpc_code", "request_id"}


def fnv1a(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def write_input(path, items):
    with open(path, "w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")


def prompts(n, tokens=20, prefix="Question"):
    return [{"id": f"p{i}", "prompt": f"{prefix} number {i}", "max_new_tokens": tokens}
            for i in range(n)]


def read_output(path):
    """Every line of an output file, parsed; a line that is not JSON fails the test."""
    with open(path, "rb") as f:
        data = f.read()
    assert data == b"" or data.endswith(b"\n"), "the output ends in a torn line"
    return [json.loads(line) for line in data.decode().split("\n") if line]


def key(i):
    return json.dumps(i)


class Batch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.emu = Emulator()
        cls.tmp = tempfile.TemporaryDirectory()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()
        if cls.emu.stop() != 0:
            raise AssertionError("maas-emulator did not shut down cleanly")

    def setUp(self):
        self.emu.reset()

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def batch(self, *args, emu=None, stdin=None, timeout=240):
        emu = emu or self.emu
        return emu_run([MAAS, "batch", *args], emu.env(), stdin=stdin, timeout=timeout)

    def reference(self, items, emu=None):
        """The emulator's texts for these requests, from a clean run on a fresh file."""
        ref = self.path("reference-%d.jsonl" % random.randrange(1 << 30))
        inp = ref + ".in"
        clean = [{k: v for k, v in it.items()} for it in items]
        write_input(inp, clean)
        rc, _, err = self.batch("--concurrency", "64", "--output", ref, inp, emu=emu)
        self.assertIn(rc, (0, 6), err)
        return {key(r["id"]): r["text"] for r in read_output(ref) if "error" not in r}

    def assert_once(self, lines, items):
        ids = [key(r["id"]) for r in lines]
        self.assertEqual(len(ids), len(set(ids)), "an id is answered twice")
        self.assertEqual(set(ids), {key(it["id"]) for it in items}, "an id is missing")

    # ---- formats ---------------------------------------------------------

    def test_result_lines_and_texts(self):
        items = prompts(40) + [{"id": 7, "prompt": "an integer id", "temperature": 0,
                                "max_new_tokens": 5, "model": "maas-model-llama-3.1-8b"}]
        inp, out = self.path("fmt.in"), self.path("fmt.out")
        write_input(inp, items)
        rc, stdout, err = self.batch("--model", MISTRAL, "--output", out, inp)
        self.assertEqual((rc, stdout), (0, ""), err)
        lines = read_output(out)
        self.assert_once(lines, items)
        for r in lines:
            self.assertEqual(set(r), OK_FIELDS)
            self.assertEqual(r["attempts"], 1)
            self.assertGreaterEqual(r["duration_ms"], r["ttft_ms"])
            self.assertGreater(r["ttft_ms"], 0)
        by_id = {key(r["id"]): r for r in lines}
        greedy = by_id["7"]
        self.assertIsNone(greedy["seed"])
        self.assertEqual(greedy["generated_tokens"], 5)
        # The texts are the emulator's, as `maas generate` shows them.
        for it in items[:8] + items[-1:]:
            code, gen, gerr = emu_run(
                [MAAS, "generate", "--json", "--model", it.get("model", MISTRAL),
                 "--max-tokens", str(it["max_new_tokens"]),
                 "--temperature", str(it.get("temperature", 0.7)), "--", it["prompt"]],
                self.emu.env())
            self.assertEqual(code, 0, gerr)
            details = json.loads(gen.split("\n")[-2])
            self.assertEqual(by_id[key(it["id"])]["text"], details["generated_text"])
            self.assertEqual(by_id[key(it["id"])]["seed"], details.get("seed"))
        self.assertIn("41 of 41 requests done", err)
        self.assertIn("41 ok, 0 failed", err)
        self.assertNotIn("\r", err)  # no terminal: no progress line

    def test_stdin_to_stdout(self):
        items = prompts(5)
        data = "".join(json.dumps(it) + "\n\n" for it in items)  # blank lines are ignored
        rc, out, err = self.batch("-", stdin=data)
        self.assertEqual(rc, 0, err)
        lines = [json.loads(x) for x in out.split("\n") if x]
        self.assert_once(lines, items)
        rc, out, err = self.batch("--output", "-", "-", stdin=data)
        self.assertEqual(rc, 0, err)
        self.assert_once([json.loads(x) for x in out.split("\n") if x], items)
        self.assertFalse(os.path.exists("-"))

    def test_failures_carry_their_status(self):
        items = prompts(10) + [
            {"id": "bad400", "prompt": "x [[fault:status=400]]"},
            {"id": "err", "prompt": "x [[fault:error-after=2]]"},
            {"id": "gone", "prompt": "x [[fault:status=403]]", "model": MISTRAL},
        ]
        items = items[:-1]  # 403 stops the batch: tested on its own below
        inp, out = self.path("fail.in"), self.path("fail.out")
        write_input(inp, items)
        rc, _, err = self.batch("--output", out, "--retries", "1", inp)
        self.assertEqual(rc, 6, err)
        lines = {key(r["id"]): r for r in read_output(out)}
        self.assertEqual(len(lines), len(items))
        e = lines['"bad400"']["error"]
        self.assertEqual(set(e), ERR_FIELDS)
        self.assertEqual((e["status"], e["http_status"], e["grpc_code"]),
                         ("MAAS_ERR_INVALID_REQUEST", 400, 3))
        self.assertRegex(e["request_id"], r"^[0-9a-f-]{36}$")
        e = lines['"err"']["error"]
        self.assertEqual((e["status"], e["http_status"], e["grpc_code"]),
                         ("MAAS_ERR_STREAM", 200, 14))
        self.assertIn("maximum capacity", e["message"])
        self.assertIn("MAAS_ERR_INVALID_REQUEST 1", err)
        # A rerun skips the answered ids, failures included, and still says 6.
        self.emu.reset()
        rc, _, err = self.batch("--output", out, inp)
        self.assertEqual(rc, 6, err)
        self.assertEqual(self.emu.stats()["generate_requests"], 0)
        # --retry-failed runs only the failures again, and keeps one line per id.
        rc, _, err = self.batch("--output", out, "--retry-failed", inp)
        self.assertEqual(rc, 6, err)
        self.assertEqual(self.emu.stats()["generate_requests"], 2)
        self.assert_once(read_output(out), items)

    def test_an_oversized_answer_fails_alone(self):
        items = prompts(3) + [{"id": "huge", "prompt": "x [[fault:long-line=5000000]]",
                               "max_new_tokens": 5}]
        inp, out = self.path("huge.in"), self.path("huge.out")
        write_input(inp, items)
        rc, _, err = self.batch("--output", out, inp)
        self.assertEqual(rc, 6, err)
        lines = {key(r["id"]): r for r in read_output(out)}
        self.assertEqual(len(lines), 4)
        e = lines['"huge"']["error"]
        self.assertEqual(e["status"], "MAAS_ERR_PROTOCOL")
        self.assertIn("4 MiB", e["message"])

    def test_emulator_refuses_a_bad_random_fault(self):
        for arg in ("x:status=429", "101:status=429", "5:status=429+bogus", "5"):
            p = subprocess.run([os.environ["MAAS_EMULATOR"], "--random-fault", arg],
                               capture_output=True, timeout=30)
            self.assertEqual(p.returncode, 2, arg)
            self.assertIn(b"--random-fault", p.stderr)

    def test_permission_denied_stops_and_writes_nothing(self):
        items = prompts(30)
        inp, out = self.path("deny.in"), self.path("deny.out")
        write_input(inp, items)
        self.emu.fault("/v1/maas/generatestream", "status=403", 1000)
        rc, _, err = self.batch("--output", out, "--concurrency", "4", inp)
        self.assertEqual(rc, 4, err)
        self.assertIn("permission denied", err.lower())
        self.assertEqual(read_output(out), [])
        self.assertLessEqual(self.emu.stats()["generate_requests"], 4)

    # ---- validation ------------------------------------------------------

    def test_validation_lists_errors_with_line_numbers_and_sends_nothing(self):
        bad = ['{"id": 1, "prompt": "fine"}', 'not json', '[1, 2]', '{"prompt": "no id"}',
               '{"id": 1, "prompt": "duplicate"}', '{"id": 2, "prompt": "a"}',
               '{"id": 3, "prompt": 5}', '{"id": 4, "prompt": "ok", "model": "no-such-model"}',
               '{"id": 5, "prompt": "ok", "max_new_tokens": 2048}',
               '{"id": 6, "prompt": "ok", "temperature": 1.0}', '',
               '{"id": 7.5, "prompt": "ok"}']
        bad += ['{"id": %d, "prompt": "x"}' % (100 + i) for i in range(15)]
        inp, out = self.path("bad.in"), self.path("bad.out")
        with open(inp, "w") as f:
            f.write("\n".join(bad) + "\n")
        rc, stdout, err = self.batch("--output", out, inp)
        self.assertEqual((rc, stdout), (2, ""))
        shown = [x for x in err.split("\n") if x.startswith(inp + ":")]
        self.assertEqual(len(shown), 20)
        self.assertEqual([int(x.split(":")[1]) for x in shown[:10]],
                         [2, 3, 4, 5, 6, 7, 8, 9, 10, 12])
        self.assertIn("duplicate id 1 (first on line 1)", shown[3])
        self.assertIn("unknown model", shown[6])
        self.assertIn("... and 5 more errors", err)
        self.assertIn("25 invalid lines", err)
        self.assertIn("nothing was sent", err)
        self.assertEqual(self.emu.stats()["generate_requests"], 0)
        self.assertFalse(os.path.exists(out))
        rc, _, err = self.batch("--model", "no-such-model", self.path("fmt.in"))
        self.assertEqual(rc, 2, err)
        self.assertEqual(self.emu.stats()["generate_requests"], 0)

    def test_usage_errors(self):
        for args in (["--shard", "3/3", "x"], ["--shard", "1"], ["--concurrency", "0", "x"],
                     ["--temperature", "1", "x"], ["--bogus", "x"], []):
            rc, _, err = self.batch(*args)
            self.assertEqual(rc, 2, (args, err))
            self.assertIn("usage", err)

    # ---- resume ----------------------------------------------------------

    def test_torn_last_line_is_repaired(self):
        items = prompts(30)
        inp, out = self.path("torn.in"), self.path("torn.out")
        write_input(inp, items)
        rc, _, err = self.batch("--output", out, inp)
        self.assertEqual(rc, 0, err)
        with open(out, "rb") as f:
            data = f.read()
        keep = data[:data.rstrip(b"\n").rfind(b"\n") + 1]
        cut = data[len(keep):len(keep) + 25]  # what a kill inside write() leaves
        with open(out, "wb") as f:
            f.write(keep + cut)
        self.emu.reset()
        rc, _, err = self.batch("--output", out, inp)
        self.assertEqual(rc, 0, err)
        self.assertIn("torn last line", err)
        self.assertEqual(self.emu.stats()["generate_requests"], 1)
        self.assert_once(read_output(out), items)

    def test_output_that_is_not_ours_is_refused(self):
        inp, out = self.path("foreign.in"), self.path("foreign.out")
        write_input(inp, prompts(3))
        with open(out, "w") as f:
            f.write('{"id": "p0", "text": "x"}\nsomething else\n')
        rc, _, err = self.batch("--output", out, inp)
        self.assertEqual(rc, 2, err)
        self.assertIn(out + ":2: not a result line", err)
        self.assertEqual(self.emu.stats()["generate_requests"], 0)

    # ---- shards ----------------------------------------------------------

    def test_shards_cover_every_id_exactly_once(self):
        items = prompts(90) + [{"id": i, "prompt": f"integer {i}", "max_new_tokens": 3}
                               for i in range(30)]
        inp = self.path("shard.in")
        write_input(inp, items)
        seen = []
        for i in range(4):
            out = self.path(f"shard{i}.out")
            rc, _, err = self.batch("--shard", f"{i}/4", "--output", out, inp)
            self.assertEqual(rc, 0, err)
            lines = read_output(out)
            # The documented hash: FNV-1a 64 of the id's text, modulo N.
            for r in lines:
                text = r["id"] if isinstance(r["id"], str) else str(r["id"])
                self.assertEqual(fnv1a(text.encode()) % 4, i)
            self.assertIn(f"{len(items) - len(lines)} in other shards", err)
            seen += lines
        self.assert_once(seen, items)

    # ---- progress --------------------------------------------------------

    def run_pty(self, *args):
        master, slave = pty.openpty()
        p = subprocess.Popen([MAAS, "batch", *args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=slave, env=self.emu.env())
        os.close(slave)
        data = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            data += chunk
        os.close(master)
        return p.wait(timeout=120), data.decode(errors="replace")

    def test_progress_line_on_a_terminal_only(self):
        # 16 streams of 10 tokens 40 ms apart, 4 at a time: over a second.
        items = [{"id": i, "prompt": f"slow [[fault:delay=40]] {i}", "max_new_tokens": 10}
                 for i in range(16)]
        inp = self.path("progress.in")
        write_input(inp, items)
        rc, tty = self.run_pty("--concurrency", "4", "--output", self.path("progress.out"), inp)
        self.assertEqual(rc, 0, tty)
        updates = re.findall(r"\r\x1b\[K(\d+)/16 done, (\d+) ok, (\d+) failed \| \d+ tokens/s "
                             r"\| \d+ running.*? \| elapsed \d+:\d\d \| ETA [-\d:]+", tty)
        self.assertGreaterEqual(len(updates), 2, tty)
        self.assertIn("16 of 16 requests done", tty)
        # --no-progress on a terminal, and a pipe: only the summary.
        rc, tty = self.run_pty("--no-progress", "--concurrency", "4",
                               "--output", self.path("progress2.out"), inp)
        self.assertEqual(rc, 0, tty)
        self.assertNotIn("\x1b[K", tty)
        self.assertIn("16 of 16 requests done", tty)

    # ---- signals ---------------------------------------------------------

    def test_sigint_finishes_running_requests_then_exits_130(self):
        # One quick request, then slow ones (10 tokens 400 ms apart: 4 s each). The
        # signal goes once the quick answer is on disk and the 4 slow ones that
        # replaced it run, about 3 s before any of them can end: exactly those 4 are
        # running at the signal, however loaded the machine.
        items = [{"id": 0, "prompt": "quick one", "max_new_tokens": 2}]
        items += [{"id": i, "prompt": f"slow [[fault:delay=400]] {i}", "max_new_tokens": 10}
                  for i in range(1, 12)]
        inp, out = self.path("int.in"), self.path("int.out")
        write_input(inp, items)
        p = subprocess.Popen([MAAS, "batch", "--concurrency", "4", "--output", out, inp],
                             stderr=subprocess.PIPE, env=self.emu.env())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not os.path.exists(out)
                                               or os.path.getsize(out) == 0
                                               or self.emu.stats()["streams_active"] < 4):
            time.sleep(0.01)
        self.assertEqual([r["id"] for r in read_output(out)], [0])
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 130, err)
        self.assertIn(b"finishing the 4 running requests", err)
        lines = read_output(out)
        self.assertTrue(all("error" not in r for r in lines))
        # The 4 streams running at the signal finished and were written; no new one started.
        self.assertEqual(sorted(r["id"] for r in lines), [0, 1, 2, 3, 4])
        self.assertIn("not done:", err.decode())
        rc, _, err = self.batch("--output", out, inp)
        self.assertEqual(rc, 0, err)
        self.assert_once(read_output(out), items)

    def test_second_sigint_cancels(self):
        items = [{"id": i, "prompt": f"slower [[fault:delay=5000]] {i}", "max_new_tokens": 5}
                 for i in range(8)]
        inp, out = self.path("int2.in"), self.path("int2.out")
        write_input(inp, items)
        p = subprocess.Popen([MAAS, "batch", "--concurrency", "4", "--output", out, inp],
                             stderr=subprocess.PIPE, env=self.emu.env())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.emu.stats()["streams_active"] < 4:
            time.sleep(0.01)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        # Two signals sent at once may arrive as one: wait until the first is taken.
        first = p.stderr.readline()
        self.assertIn(b"SIGINT again to cancel", first)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 130, err)
        self.assertLess(time.monotonic() - t0, 12.0)  # well below the 20 s the streams need
        self.assertEqual(read_output(out), [])  # cancelled requests are not answered

    # ---- back-off --------------------------------------------------------

    def test_429_halves_concurrency_and_pauses_the_whole_batch(self):
        items = prompts(48, tokens=5)
        inp, out = self.path("aimd.in"), self.path("aimd.out")
        write_input(inp, items)
        # The first 8 requests: 429 with Retry-After: 2; no library retries, so the
        # batch sees each one.
        self.emu.fault("/v1/maas/generatestream", "status=429", 8)
        self.emu.fault("/v1/maas/generatestream", "retry-after=2", 8)
        t0 = time.monotonic()
        rc, _, err = self.batch("--concurrency", "8", "--retries", "0", "--output", out, inp)
        wall = time.monotonic() - t0
        self.assertEqual(rc, 0, err)
        self.assert_once(read_output(out), items)
        m = re.search(r"concurrency: 8 at most, (\d+) lowest, (\d+) at the end; (\d+) pauses? "
                      r"for the service \(([\d.]+) s\)", err)
        self.assertTrue(m, err)
        low, last, pauses, paused = int(m[1]), int(m[2]), int(m[3]), float(m[4])
        self.assertEqual(low, 4)            # halved once, not once per stream
        self.assertGreater(last, low)       # and grown back after successes
        self.assertEqual(pauses, 1)
        self.assertGreaterEqual(paused, 2.0)
        self.assertGreaterEqual(wall, 2.0)  # no stream started during the Retry-After
        self.assertEqual(self.emu.stats()["generate_requests"], 48 + 8)
        retried = [r for r in read_output(out) if r["attempts"] == 2]
        self.assertEqual(len(retried), 8)

    # ---- faults, at scale -----------------------------------------------

    def test_500_prompts_with_mixed_faults(self):
        items = prompts(500)
        items[10]["prompt"] += " [[fault:error-after=3]]"
        items[20]["prompt"] += " [[fault:status=400]]"
        items[30]["prompt"] += " [[fault:drop-after=0]]"
        items[40]["prompt"] += " [[fault:status=503]][[fault:retry-after=0]]"
        fixed = {"p10": "MAAS_ERR_STREAM", "p20": "MAAS_ERR_INVALID_REQUEST",
                 "p30": "MAAS_ERR_NETWORK", "p40": "MAAS_ERR_UNAVAILABLE"}
        ref = self.reference(items)
        faulty = Emulator("--random-seed", "11",
                          "--random-fault", "4:status=429+retry-after=1",
                          "--random-fault", "4:status=503",
                          "--random-fault", "4:drop-after=0",
                          "--random-fault", "3:error-after=2")
        try:
            inp, out = self.path("mixed.in"), self.path("mixed.out")
            write_input(inp, items)
            rc, _, err = self.batch("--concurrency", "32", "--output", out, inp, emu=faulty)
            stats = faulty.stats()
        finally:
            faulty.stop()
        self.assertEqual(rc, 6, err)
        lines = read_output(out)
        self.assert_once(lines, items)
        failed = {r["id"]: r["error"] for r in lines if "error" in r}
        for rid, status in fixed.items():
            self.assertEqual(failed[rid]["status"], status, failed[rid])
        stream_errors = 0
        for rid, e in failed.items():
            self.assertEqual(set(e), ERR_FIELDS)
            if rid in fixed:
                continue
            # Mostly a random error line after the first tokens (never retried); rarely
            # a request whose every attempt drew a drop, a 429 or a 503.
            if e["status"] == "MAAS_ERR_STREAM":
                self.assertEqual(e["grpc_code"], 14, e)
                stream_errors += 1
            else:
                self.assertIn(e["status"], ("MAAS_ERR_NETWORK", "MAAS_ERR_RATE_LIMITED",
                                            "MAAS_ERR_UNAVAILABLE"), e)
        self.assertGreater(stream_errors, 0)
        ok = [r for r in lines if "error" not in r]
        for r in ok:
            self.assertEqual(r["text"], ref[key(r["id"])], r["id"])
        self.assertTrue(any(r["attempts"] > 1 for r in ok))
        self.assertGreater(stats["generate_requests"], len(items) + 20)
        self.assertIn(f"{len(ok)} ok, {len(failed)} failed", err)

    # ---- kill -9 ---------------------------------------------------------

    def test_kill_9_and_rerun_answers_every_id_exactly_once(self):
        items = prompts(300, tokens=20)
        ref = self.reference(items)
        slow = Emulator("--token-interval-ms", "5")
        try:
            for seed in (1, 2, 3, 4):
                rnd = random.Random(seed)
                inp, out = self.path(f"kill{seed}.in"), self.path(f"kill{seed}.out")
                write_input(inp, items)
                kills = 0
                for _ in range(3):
                    p = subprocess.Popen([MAAS, "batch", "--concurrency", "24", "--output", out,
                                          inp], stderr=subprocess.DEVNULL, env=slow.env())
                    time.sleep(rnd.uniform(0.05, 0.8))  # the random kill point
                    if p.poll() is None:
                        p.kill()
                        kills += 1
                    p.wait()
                    if seed == 4 and os.path.exists(out):
                        with open(out, "ab") as f:  # a torn line too, as write() can leave
                            f.write(b'{"id":"p299","text":"half')
                rc, _, err = self.batch("--output", out, inp, emu=slow)
                self.assertEqual(rc, 0, err)
                lines = read_output(out)
                self.assert_once(lines, items)
                for r in lines:
                    self.assertEqual(r["text"], ref[key(r["id"])])
                self.assertGreater(kills, 0)
        finally:
            slow.stop()

    # ---- memory ----------------------------------------------------------

    def peak_rss_kib(self, n, pad):
        inp, out = self.path(f"big{n}.in"), self.path(f"big{n}.out")
        with open(inp, "w") as f:
            for i in range(n):
                f.write('{"id": "big%d", "prompt": "%s %d", "max_new_tokens": 2}\n' % (i, pad, i))
        # Under AddressSanitizer, freed memory is held in a quarantine: keep it small,
        # so that the figure is the program's and not the sanitizer's.
        env = self.emu.env()
        env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=1").lstrip(":")
        # The same shard count for both sizes: about n / 2000 requests each.
        p = subprocess.Popen([MAAS, "batch", "--shard", "0/2000", "--output", out, inp],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        err = p.stderr.read()
        p.stderr.close()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        self.assertEqual(p.returncode, 0, err)
        return ru.ru_maxrss, os.path.getsize(inp), len(read_output(out))

    def test_memory_stays_bounded_with_a_large_input(self):
        pad = "x" * 300
        small, _, n_small = self.peak_rss_kib(2000, pad)
        big, size, n_big = self.peak_rss_kib(200000, pad)
        self.assertTrue(50 < n_big < 200, n_big)
        self.assertGreater(size, 60 << 20)
        # ru_maxrss is in KiB. 100 times the input (60 MiB more) costs the id set
        # (about 6 MiB) and nothing that grows with the lines themselves.
        self.assertLess(big - small, 16 << 10, f"peak RSS {small} KiB -> {big} KiB")
        if "ASAN_OPTIONS" not in os.environ:
            self.assertLess(big, 48 << 10, f"peak RSS {big} KiB")

if __name__ == "__main__":
    unittest.main(verbosity=2)
