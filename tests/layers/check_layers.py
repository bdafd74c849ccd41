#!/usr/bin/env python3
"""Check that lib/'s modules include each other one way only.

usage: check_layers.py LIBDIR

Reads the declared layers from LIBDIR/README.md (the block between
"<!-- layers" and "<!-- /layers -->", lines "N name: module module ...")
and every `#include "x.h"` line of LIBDIR/*.c and LIBDIR/*.h. A module is a
file's name without .c/.h. Fails, naming the file, the line and the two
modules, when a module includes one of a higher layer, when the includes
close a circle (within a layer), or when a file of lib/ belongs to no
declared module. Headers outside LIBDIR (maas/maas.h) are not modules. A
layer whose name says "(data only)" holds headers that declare types and
no function (a static inline accessor excepted): the check fails naming a
function declared there.
"""
import os
import re
import sys

# Edges the order does not allow yet, each with its reason: (from, to).
KNOWN_EXCEPTIONS = set()

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def strip_comments(text):
    text = re.sub(r'/\*.*?\*/', lambda m: '\n' * m.group(0).count('\n'), text, flags=re.S)
    return re.sub(r'//[^\n]*', '', text)


def declared_functions(path):
    """(line, name) of each function declared at file scope, not static inline."""
    text = strip_comments(open(path, encoding='utf-8').read())
    out, depth, stmt, start = [], 0, '', 1
    lineno = 1
    for ch in text:
        if ch == '\n':
            lineno += 1
        if depth == 0 and not stmt.strip():
            start = lineno
        if ch == '{':
            if depth == 0 and re.search(r'\)\s*$', stmt) and 'static inline' not in stmt \
                    and not stmt.lstrip().startswith('#'):
                m = re.search(r'(\w+)\s*\([^()]*\)\s*$', stmt)
                if m:
                    out.append((start, m.group(1)))
            depth += 1
        elif ch == '}':
            depth -= 1
            if depth == 0:
                stmt = ''
            continue
        if depth:
            continue
        if ch == '\n' and stmt.lstrip().startswith('#') and not stmt.rstrip().endswith('\\'):
            stmt = ''
            continue
        if ch == ';':
            m = re.search(r'(?<![(*\w])\s*\**\s*(\w+)\s*\((?!\s*\*)[^;]*\)\s*'
                          r'(?:MAAS_PRINTF\([^)]*\)\s*)?$', stmt)
            if m and not stmt.lstrip().startswith(('typedef', '#')) and 'static inline' not in stmt:
                out.append((start, m.group(1)))
            stmt = ''
            continue
        stmt += ch
    return out


def read_layers(readme):
    text = open(readme, encoding='utf-8').read()
    m = re.search(r'<!-- layers[^>]*-->(.*?)<!-- /layers -->', text, re.S)
    if not m:
        sys.exit(f'{readme}: no "<!-- layers -->" block')
    layer_of, names, data_only = {}, {}, set()
    for line in m.group(1).splitlines():
        lm = re.match(r'^\s*(\d+)\s+([^:]+):\s*(.*)$', line)
        if not lm:
            continue
        n, name = int(lm.group(1)), lm.group(2).strip()
        names[n] = name
        for mod in lm.group(3).split():
            if '(data only)' in name:
                data_only.add(mod)
            if mod in layer_of:
                sys.exit(f'{readme}: module {mod} is declared twice')
            layer_of[mod] = n
    if not layer_of:
        sys.exit(f'{readme}: the layers block declares no module')
    return layer_of, names, data_only


def module(fname):
    return os.path.splitext(os.path.basename(fname))[0]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    libdir = sys.argv[1]
    layer_of, names, data_only = read_layers(os.path.join(libdir, 'README.md'))
    files = sorted(f for f in os.listdir(libdir) if f.endswith(('.c', '.h')))
    present = {module(f) for f in files}
    problems = []

    def where(mod):
        n = layer_of[mod]
        return f'{mod} ({names[n]}, layer {n})'

    for mod in sorted(present - set(layer_of)):
        problems.append(f'lib/: module {mod} is in no declared layer (add it to lib/README.md)')
    for mod in sorted(set(layer_of) - present):
        problems.append(f'lib/README.md: declared module {mod} has no file in lib/')

    for f in files:
        if module(f) in data_only:
            for line, name in declared_functions(os.path.join(libdir, f)):
                problems.append(f'lib/{f}:{line}: {name}() is declared in a data-only header '
                                f'({module(f)}): declare it with its module')

    edges = {}  # (from, to) -> first "file:line" that makes it
    for f in files:
        with open(os.path.join(libdir, f), encoding='utf-8') as fh:
            for lineno, line in enumerate(fh, 1):
                im = INCLUDE.match(line)
                if not im:
                    continue
                target = im.group(1)
                if not os.path.exists(os.path.join(libdir, target)):
                    continue  # the public header, a system header in quotes
                a, b = module(f), module(target)
                if a != b:
                    edges.setdefault((a, b), f'lib/{f}:{lineno}')

    for (a, b), site in sorted(edges.items(), key=lambda e: e[1]):
        if a not in layer_of or b not in layer_of or (a, b) in KNOWN_EXCEPTIONS:
            continue
        if layer_of[b] > layer_of[a]:
            problems.append(f'{site}: upward include: {where(a)} includes {b}.h '
                            f'of {where(b)}')

    # Circles: a depth-first search over the module graph.
    graph = {}
    for (a, b) in edges:
        if (a, b) not in KNOWN_EXCEPTIONS:
            graph.setdefault(a, []).append(b)
    state, stack, seen_cycles = {}, [], set()

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, [])):
            if state.get(n) == 1:
                cyc = stack[stack.index(n):] + [n]
                key = frozenset(cyc)
                if key not in seen_cycles:
                    seen_cycles.add(key)
                    hops = ', '.join(f'{x} -> {y} ({edges[(x, y)]})'
                                     for x, y in zip(cyc, cyc[1:]))
                    problems.append(f'include circle: {" -> ".join(cyc)}: {hops}')
            elif not state.get(n):
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m)

    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f'check_layers: {len(problems)} problem(s); the declared order is in lib/README.md',
              file=sys.stderr)
        return 1
    print(f'check_layers: {len(files)} files, {len(edges)} module edges, all one way')
    return 0


if __name__ == '__main__':
    sys.exit(main())
