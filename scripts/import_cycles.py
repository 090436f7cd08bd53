#!/usr/bin/env python3
"""Prints a crate's module import graph and fails on an import cycle.

Usage: scripts/import_cycles.py eventflow-mongo/src

Edges come from `crate::`, `super::` and `self::` paths (in `use` lines and inline) and from
paths into a module's own children (`lease::read(..)`); comments and inline `mod tests` are
skipped, and names lib.rs re-exports resolve to the module that defines them. A cycle is a
strongly connected component of two or more modules: a part importing the file that builds
it. Method calls on a type whose impl lives in another file are not seen."""
import os, re, sys

root = sys.argv[1]
mods = {}  # module path tuple -> file
for dirpath, _, files in os.walk(root):
    for f in files:
        if not f.endswith('.rs'):
            continue
        rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].split(os.sep)
        if rel[-1] == 'mod':
            rel = rel[:-1]
        if rel == ['lib']:
            rel = []
        mods[tuple(rel)] = os.path.join(dirpath, f)

def strip(text):
    out = []
    in_tests = False
    for line in text.split('\n'):
        s = line.strip()
        if s.startswith('//'):
            continue
        if re.match(r'\s*mod tests\s*\{', line):
            in_tests = True  # inline test modules: their super:: is this file
        if in_tests:
            continue
        out.append(line)
    return '\n'.join(out)

# lib.rs re-exports: name -> module
reexport = {}
lib = strip(open(mods[()]).read())
for m in re.finditer(r'pub use (\w+)::(\{[^}]*\}|\w+);', lib):
    names = re.findall(r'\w+', m.group(2))
    for n in names:
        if (m.group(1),) in mods:
            reexport[n] = (m.group(1),)

def resolve(here, path):
    parts = path.split('::')
    if parts[0] == 'crate':
        base, parts = [], parts[1:]
    else:
        base = list(here)
        while parts and parts[0] in ('super', 'self'):
            if parts[0] == 'super':
                base = base[:-1]
            parts = parts[1:]
    best = tuple(base)
    cur = list(base)
    for p in parts:
        cur.append(p)
        if tuple(cur) in mods:
            best = tuple(cur)
        else:
            break
    if best == () and parts and parts[0] in reexport:
        best = reexport[parts[0]]
    return best

edges = set()
for mod, path in mods.items():
    if mod == ():
        continue
    text = strip(open(path).read())
    for m in re.finditer(r'\b(?:crate|super|self)(?:::\w+)+', text):
        for grouped in [m.group(0)]:
            target = resolve(mod, grouped)
            if target != mod and target != ():
                edges.add((mod, target))
    # paths into this module's own children: `lease::read(..)`, `use feed::Feed;`
    children = [m[-1] for m in mods if len(m) == len(mod) + 1 and m[:len(mod)] == mod]
    for c in children:
        if re.search(r'(?<![:\w])' + c + r'::\w', text):
            edges.add((mod, mod + (c,)))
    # use crate::x::{a, b::c}
    for m in re.finditer(r'use\s+((?:crate|super|self)(?:::\w+)*)::\{([^}]*)\}', text):
        for item in re.findall(r'\w+(?:::\w+)*', m.group(2)):
            target = resolve(mod, m.group(1) + '::' + item)
            if target != mod and target != ():
                edges.add((mod, target))

name = lambda m: '::'.join(m) or 'lib'
graph = {}
for a, b in sorted(edges):
    graph.setdefault(a, set()).add(b)
    print(f'{name(a)} -> {name(b)}')

# Tarjan
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
def visit(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in graph.get(v, ()):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(comp)
for v in list(mods):
    if v not in index:
        visit(v)
print(f'{len(mods)} modules, {len(edges)} edges')
if sccs:
    for c in sccs:
        print('CYCLE:', ' <-> '.join(sorted(name(m) for m in c)))
    sys.exit(1)
print('no import cycles')
