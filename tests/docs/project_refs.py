#!/usr/bin/python3
"""Every Markdown document the project's files name is part of the project.

usage: project_refs.py SOURCE_ROOT

The docs, sources, scripts and packaging may cite a page by its file name
(`streaming.md`, `docs/ref/maas_generate.md`); a reader of the project must
be able to open it. A name with no such file in the tree is a pointer to a
document the project does not ship: it fails the test, with its place.
"""
import os
import re
import sys

NAME_RE = re.compile(r"(?<![%\w.-])([A-Za-z0-9][\w.-]*\.md)\b")
# Not files but placeholders in running text: md2man's usage and docstring,
# scripts/promises' message.
NOT_FILES = {"INPUT.md", "maas_x.md", "PAGE.md"}
SKIP_DIRS = {".git", "subprojects"}
# The mutation patches quote code as a break would make it, not as it is.
SKIP_PATHS = {os.path.join("tests", "mutations")}


def walk(root):
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        # Build directories (build/, build-asan/, ...) hold copies and generated files.
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS and not
                   (rel == "." and x.startswith("build")) and
                   os.path.normpath(os.path.join(rel, x)) not in SKIP_PATHS]
        for f in files:
            yield os.path.join(d, f)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: project_refs.py SOURCE_ROOT\n")
        return 2
    root = argv[1]
    paths = list(walk(root))
    shipped = {os.path.basename(p) for p in paths if p.endswith(".md")}
    problems = []
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue  # binary (images, packages)
        for m in NAME_RE.finditer(text):
            name = os.path.basename(m.group(1))
            if name in shipped or name in NOT_FILES:
                continue
            line = text.count("\n", 0, m.start()) + 1
            problems.append("%s:%d: names %s, which is not part of the project"
                            % (os.path.relpath(p, root), line, m.group(1)))
    for problem in problems:
        print(problem)
    print("project-refs: %d files read, %d names of documents outside the project"
          % (len(paths), len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
