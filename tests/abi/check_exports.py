#!/usr/bin/env python3
"""The shared library exports exactly the functions the header declares.

usage: check_exports.py HEADER LIBRARY

Fails (exit status 1, one line per problem) unless:
  - the set of functions LIBRARY exports (`nm -D --defined-only`) equals
    the set of functions HEADER declares with MAAS_EXPORT;
  - it exports no data object and no symbol outside maas_*;
  - every exported symbol carries the version node LIBMAAS_0 (lib/libmaas.map),
    as its default version;
  - the SONAME is libmaas.so.0.
Standard library only (and binutils' nm and readelf).
"""
import re
import subprocess
import sys

SONAME = "libmaas.so.0"
NODE = "LIBMAAS_0"


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def header_functions(path):
    """Names of the functions declared with MAAS_EXPORT (not the macro's own #define)."""
    with open(path, encoding="utf-8") as f:
        text = strip_comments(f.read())
    # Drop preprocessor lines, continuations included.
    lines, cont = [], False
    for line in text.split("\n"):
        if cont or line.lstrip().startswith("#"):
            cont = line.rstrip().endswith("\\")
            continue
        lines.append(line)
    text = "\n".join(lines)
    names = set()
    for m in re.finditer(r"\bMAAS_EXPORT\b([^;]*);", text, re.S):
        # The declarator's name: the identifier before the first '('.
        n = re.search(r"([A-Za-z_]\w*)\s*\(", m.group(1))
        if n:
            names.add(n.group(1))
    return names


def exported(library):
    """{name: (type, version, default)} of the dynamic symbols LIBRARY defines."""
    out = subprocess.run(["nm", "-D", "--defined-only", library], check=True,
                         capture_output=True, text=True).stdout
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        typ, sym = parts[-2], parts[-1]
        if "@@" in sym:
            name, version, default = sym.split("@@")[0], sym.split("@@")[1], True
        elif "@" in sym:
            name, version, default = sym.split("@")[0], sym.split("@")[1], False
        else:
            name, version, default = sym, "", False
        syms[name] = (typ, version, default)
    return syms


def soname(library):
    out = subprocess.run(["readelf", "-d", library], check=True,
                         capture_output=True, text=True).stdout
    m = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", out)
    return m.group(1) if m else None


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: check_exports.py HEADER LIBRARY\n")
        return 2
    header, library = argv[1], argv[2]
    declared = header_functions(header)
    syms = exported(library)
    problems = []
    if not declared:
        problems.append("%s: no MAAS_EXPORT function found" % header)

    # The version node itself is an absolute symbol without a version.
    functions = {}
    for name, (typ, version, default) in sorted(syms.items()):
        if typ == "A" and not version:
            if name != NODE:
                problems.append("version node %s: want only %s" % (name, NODE))
            continue
        if not name.startswith("maas_"):
            problems.append("%s is exported: only maas_* symbols may be" % name)
        if typ not in ("T", "W", "i"):
            problems.append("%s is exported as '%s', not as a function" % (name, typ))
        if version != NODE or not default:
            problems.append("%s has version '%s', want %s@@%s" % (name, version or "(none)", name, NODE))
        functions[name] = typ

    for name in sorted(declared - set(functions)):
        problems.append("%s is declared with MAAS_EXPORT but not exported by %s" % (name, library))
    for name in sorted(set(functions) - declared):
        problems.append("%s is exported but not declared with MAAS_EXPORT in %s" % (name, header))

    so = soname(library)
    if so != SONAME:
        problems.append("SONAME is %s, want %s" % (so, SONAME))

    if problems:
        for p in problems:
            print("abi: " + p)
        return 1
    print("abi: %d functions exported, as declared; SONAME %s, version node %s"
          % (len(functions), so, NODE))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
