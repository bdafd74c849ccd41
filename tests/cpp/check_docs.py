#!/usr/bin/env python3
"""Every complete program in docs/cpp.md compiles as C++17.

usage: check_docs.py ROOT CXX [CXX ARGS...]

Each ```cpp block that defines main() is compiled with
`CXX -std=c++17 -Wall -Wextra -Werror -pedantic -fsyntax-only -I ROOT/include`;
compiler messages point into the Markdown file. Standard library only.
"""
import os
import re
import subprocess
import sys
import tempfile


def main(argv):
    if len(argv) < 3:
        sys.stderr.write("usage: check_docs.py ROOT CXX [CXX ARGS...]\n")
        return 2
    root, cxx = argv[1], argv[2:]
    page = os.path.join(root, "docs", "cpp.md")
    with open(page, encoding="utf-8") as f:
        text = f.read()
    blocks = [(text.count("\n", 0, m.start(1)) + 1, m.group(1))
              for m in re.finditer(r"^```cpp[ \t]*\n(.*?)^```[ \t]*$", text, re.S | re.M)]
    programs = [(line, code) for line, code in blocks if re.search(r"\bint\s+main\s*\(", code)]
    if not programs:
        print("cpp-docs: no program in %s" % page)
        return 1
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "example.cpp")
        for line, code in programs:
            with open(src, "w", encoding="utf-8") as f:
                f.write(code)
            r = subprocess.run(cxx + ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic",
                                      "-fsyntax-only", "-I", os.path.join(root, "include"), src],
                               capture_output=True, text=True)
            if r.returncode != 0:
                failed += 1
                out = re.sub(re.escape(src) + r":(\d+):",
                             lambda m: "docs/cpp.md:%d:" % (int(m.group(1)) + line - 1),
                             r.stdout + r.stderr)
                print("docs/cpp.md:%d: the program does not compile:\n%s" % (line, out.rstrip()))
    print("cpp-docs: %d of %d programs compile" % (len(programs) - failed, len(programs)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
