#!/usr/bin/python3
"""The man pages read without a warning, as lintian reads them.

usage: man_warnings.py PAGE...

Each page is formatted by `man --warnings -E UTF-8 -l -Tutf8 -Z`, lintian's
command for its groff-message tag, at 120 columns (lintian's width) and at
80 (a common terminal). Anything man or groff says on stderr fails the test:
most often "can't break line", a word wider than a table cell. man-db is in
scripts/deps; a missing `man` is a failure, not a skip.
"""
import os
import shutil
import subprocess
import sys

WIDTHS = ("120", "80")


def main(argv):
    pages = argv[1:]
    if not pages:
        sys.stderr.write("usage: man_warnings.py PAGE...\n")
        return 2
    man = shutil.which("man")
    if not man:
        print("FAIL: no man command (scripts/deps installs man-db)")
        return 1
    problems = 0
    for page in pages:
        for width in WIDTHS:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8",
                   "MANROFFSEQ": "", "MANWIDTH": width}
            r = subprocess.run([man, "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", page],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
            said = r.stderr.strip()
            if r.returncode != 0 or said:
                problems += 1
                print("%s at %s columns (exit %d):\n  %s"
                      % (os.path.basename(page), width, r.returncode,
                         said.replace("\n", "\n  ")))
    print("man-pages: %d pages read at %s columns, %d with warnings"
          % (len(pages), " and ".join(WIDTHS), problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
