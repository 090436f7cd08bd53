#!/usr/bin/env python3
"""Prints the import cycles between the modules of a Rust crate.

    scripts/module_cycles.py eventflow eventflow-kafka eventflow-mongo

Reads every `.rs` file under `<crate>/src`, one module per file (`foo.rs` and `foo/mod.rs`
are `foo`), and follows the paths its code names: `use crate::..`, `use super::..`,
`use self::..`, `use child::..` and the same paths written inline (`crate::bus::x(..)`).
A name re-exported with `pub use` (such as `crate::Error`) counts as the module that
defines it, so a door like `lib.rs` does not join every module into one cycle. Comments,
doc links and `#[cfg(test)]` modules are left out: only what the code depends on counts.

A cycle is a strongly connected group of modules: each can reach every other through
imports. For each it prints the modules and the imports that close it, and exits 1 if it
found any (0 if none), so a CI step can run it.
"""

import re
import sys
from pathlib import Path

WORD = r"[A-Za-z_][A-Za-z0-9_]*"
INLINE_PATH = re.compile(rf"\b(?:crate|super|self)(?:::{WORD})+")
MOD_DECL = re.compile(rf"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+({WORD})\s*;")


def module_of(src: Path, file: Path) -> tuple:
    """`src/bus/worker.rs` -> ("bus", "worker"); `src/lib.rs` -> ()."""
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return tuple(parts)


def code_lines(text: str) -> list:
    """The file's lines without comments, stopping at a `#[cfg(test)]` module."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    lines = []
    pending_test = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#[cfg(test)]"):
            pending_test = True
            continue
        if pending_test and re.match(r"(pub\s+)?mod\s+\w+\s*\{", stripped):
            break  # unit tests sit at the end of the file by convention
        pending_test = False
        line = re.sub(r"//.*", "", line)
        # `pub(in crate::bus)` names where an item is visible, not something it uses.
        lines.append(re.sub(r"\bpub\(in [^)]*\)", "pub(crate)", line))
    return lines


USE = re.compile(r"(?m)^\s*(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);")


def use_tree(match) -> str:
    """A `use` statement's tree without whitespace; a rename (`as x`) keeps its path."""
    tree = re.sub(rf"\s+as\s+{WORD}", "", match.group(2))
    return re.sub(r"\s+", "", tree)


def use_statements(lines: list) -> list:
    """Each `use ...;` statement's tree text, with whether it is a `pub use`."""
    return [(bool(m.group(1)), use_tree(m)) for m in USE.finditer("\n".join(lines))]


def flatten(tree: str) -> list:
    """`a::{b,c::{d,e}}` -> [[a,b],[a,c,d],[a,c,e]]."""
    if "{" not in tree:
        return [[part for part in tree.split("::") if part]]
    head, _, rest = tree.partition("{")
    prefix = [part for part in head.split("::") if part]
    body = rest[: rest.rfind("}")]
    items, depth, current = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        current += ch
    items.append(current)
    paths = []
    for item in filter(None, items):
        for sub in flatten(item):
            paths.append(prefix + [p for p in sub if p != "self"])
    return paths


class Crate:
    def __init__(self, root: Path):
        self.src = root / "src"
        self.files = {module_of(self.src, f): f for f in sorted(self.src.rglob("*.rs"))}
        self.lines = {m: code_lines(f.read_text()) for m, f in self.files.items()}
        self.children = {
            m: {d.group(1) for line in lines if (d := MOD_DECL.match(line))}
            for m, lines in self.lines.items()
        }
        # module -> {name: [paths it re-exports under that name]}, from `pub use`; a name
        # can be both a crate's trait and a macro (`Event`), so every path is kept.
        self.exports = {m: {} for m in self.files}
        for m, lines in self.lines.items():
            for public, tree in use_statements(lines):
                if public:
                    for path in flatten(tree):
                        if path and path[-1] != "*":
                            self.exports[m].setdefault(path[-1], []).append(path)

    def start(self, module: tuple, path: list):
        """Where `path`, written in `module`, starts, and what remains of it."""
        if not path:
            return None
        if path[0] == "crate":
            return (), path[1:]
        if path[0] in ("super", "self"):
            base = module
            while path and path[0] in ("super", "self"):
                if path[0] == "super":
                    if not base:
                        return None
                    base = base[:-1]
                path = path[1:]
            return base, path
        if path[0] in self.children.get(module, ()):
            return module, path
        return None  # an external crate or a local item

    def resolve(self, module: tuple, path: list, depth: int = 0):
        """The module `path` (written in `module`) refers to, or None outside the crate."""
        started = self.start(module, path)
        if started is None or depth > 16:
            return None
        base, rest = started
        while rest and base + (rest[0],) in self.files:
            base, rest = base + (rest[0],), rest[1:]
        for reexported in self.exports.get(base, {}).get(rest[0] if rest else None, []):
            target = self.resolve(base, reexported, depth + 1)
            if target is not None:
                return target
        return base

    def imports(self) -> dict:
        """module -> {imported module: the first path naming it}."""
        edges = {m: {} for m in self.files}
        for m, lines in self.lines.items():
            scopes = inline_scopes(m, lines)
            paths = []
            text = "\n".join(lines)
            for match in USE.finditer(text):
                scope = scopes[text.count("\n", 0, match.start())]
                for path in flatten(use_tree(match)):
                    paths.append((scope, path, "use " + "::".join(path)))
            for i, line in enumerate(lines):
                if not re.match(r"\s*(pub(\([^)]*\))?\s+)?use\s", line):
                    paths += [(scopes[i], p.split("::"), p) for p in INLINE_PATH.findall(line)]
            for scope, path, shown in paths:
                target = self.resolve(scope, path)
                if target is not None and target != m and target in self.files:
                    edges[m].setdefault(target, shown)
        return edges


def inline_scopes(module: tuple, lines: list) -> list:
    """For each line, the module its paths are written in: `module`, or an inline
    `mod name { .. }` inside it (so that its `super::` is the file's module)."""
    scopes, stack, depth = [], [], 0
    for line in lines:
        opened = re.match(rf"\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+({WORD})\s*\{{", line)
        if opened:
            stack.append((opened.group(1), depth))
        scopes.append(module + tuple(name for name, _ in stack))
        depth += line.count("{") - line.count("}")
        while stack and depth <= stack[-1][1]:
            stack.pop()
    return scopes


def strongly_connected(edges: dict) -> list:
    """Tarjan's algorithm: the groups of more than one module."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def name(module: tuple) -> str:
    return "::".join(module) or "lib"


def main(argv: list) -> int:
    if not argv:
        print("usage: " + __doc__.strip().splitlines()[2].strip() + "  (crate directories)", file=sys.stderr)
        return 2
    found = False
    for arg in argv:
        root = Path(arg)
        if not (root / "src").is_dir():
            print(f"{arg}: no src/ directory here; pass a crate's directory, e.g. eventflow", file=sys.stderr)
            return 2
        edges = Crate(root).imports()
        groups = strongly_connected(edges)
        if not groups:
            print(f"{arg}: no import cycles between its {len(edges)} modules")
            continue
        found = True
        print(f"{arg}: {len(groups)} import cycle(s)")
        for group in groups:
            members = set(group)
            print("  " + " <-> ".join(name(m) for m in group))
            for m in group:
                for target, text in sorted(edges[m].items()):
                    if target in members:
                        print(f"    {name(m)} -> {name(target)}  ({text})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
