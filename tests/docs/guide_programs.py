#!/usr/bin/python3
"""Every complete C program of the guides compiles without a warning.

usage: guide_programs.py SOURCE_ROOT

A ```c block of docs/*.md that defines main() is compiled as a reader would
compile it, with `$CC -std=c99 -Wall -Wextra -Werror -fsyntax-only` against
include/ (the reference pages' examples are checked by scripts/check-docs).
Messages point into the Markdown file.
"""
import os
import re
import shlex
import subprocess
import sys
import tempfile

BLOCK_RE = re.compile(r"^```c\n(.*?)^```", re.S | re.M)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: guide_programs.py SOURCE_ROOT\n")
        return 2
    root = argv[1]
    cc = shlex.split(os.environ.get("CC", "cc"))
    problems, count = [], 0
    docs = os.path.join(root, "docs")
    for name in sorted(os.listdir(docs)):
        if not name.endswith(".md"):
            continue
        path = os.path.join(docs, name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for m in BLOCK_RE.finditer(text):
            code = m.group(1)
            if not re.search(r"^int main\(", code, re.M):
                continue
            count += 1
            line = text.count("\n", 0, m.start(1)) + 1
            with tempfile.NamedTemporaryFile("w", suffix=".c") as src:
                src.write("#line %d \"docs/%s\"\n" % (line, name) + code)
                src.flush()
                r = subprocess.run(cc + ["-std=c99", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                                         "-I", os.path.join(root, "include"), src.name],
                                   capture_output=True, text=True)
            if r.returncode != 0:
                problems.append("docs/%s:%d: the program does not compile cleanly:\n%s"
                                % (name, line, r.stderr.strip()))
    for p in problems:
        print(p)
    print("%d guide programs, %d with problems" % (count, len(problems)))
    if count == 0:
        print("no guide program found")
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
