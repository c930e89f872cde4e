#!/usr/bin/env python3
"""The layer map of docs/design.md §3 as a checked fact.

Reads the map's table (target, what, depends on), the libraries' sources
from each folder's CMakeLists.txt, and every quoted #include of the
product's sources (not tests, benches or fuzzers), and fails on an include
that crosses from one target to another the map does not let it reach
(directly or through the targets it depends on). Also fails when a source
file belongs to no target or the map names a target the build lacks.

Usage: layer_map_test.py REPO_ROOT
"""
import os
import re
import sys

# Folders with product code; tests/, bench/, fuzz/ and deploy/ are apps.
PRODUCT_DIRS = ["common", "kernels", "checkpoint", "store", "transport",
                "proto", "cluster", "server", "client", "python"]
# Headers without a .cc of the same name: the target of their folder.
FOLDER_DEFAULT = {
    "common": "common", "kernels": "kernels", "checkpoint": "checkpoint",
    "store": "store", "transport": "transport", "proto": "wire",
    "cluster": "cluster", "server": "server", "client": "client",
    "python": "_engram_store", "engram": "proto",  # generated messages
}
# Sources a folder's CMakeLists.txt gives to executables.
EXECUTABLES = {"server/main.cc": "engramd", "client/engramctl.cc": "engramctl"}


def parse_map(root):
    """{target: set of direct dependencies} from the design doc's table."""
    text = open(os.path.join(root, "docs", "design.md")).read()
    section = text.split("## 3. Layers of the code", 1)[1].split("\n## ", 1)[0]
    rows = [l for l in section.splitlines() if l.startswith("| `")]
    order, deps = [], {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        name = re.match(r"`(?:engram::)?([\w]+)`", cells[0]).group(1)
        order.append(name)
        if "everything above" in cells[-1]:
            deps[name] = set(order[:-1])
        else:
            deps[name] = {w for w in re.findall(r"[\w]+", cells[-1])}
    known = set(order)
    for name in deps:
        deps[name] = {d for d in deps[name] if d in known}
    return deps


def closure(deps):
    reach = {}
    for name in deps:
        seen, todo = set(), list(deps[name])
        while todo:
            d = todo.pop()
            if d not in seen:
                seen.add(d)
                todo.extend(deps.get(d, ()))
        reach[name] = seen
    return reach


def parse_sources(root):
    """{path relative to root: target} from add_library calls."""
    owner = {}
    for folder in PRODUCT_DIRS:
        path = os.path.join(root, folder, "CMakeLists.txt")
        text = open(path).read()
        for m in re.finditer(r"add_library\(\s*([\w]+)\s+([^)]*)\)", text):
            target = m.group(1)
            target = target[len("engram_"):] if target.startswith("engram_") \
                else target
            if target.endswith("_extra"):
                target = target[: -len("_extra")]
            for word in m.group(2).split():
                if re.search(r"\.(cc|cu)$", word):
                    owner[f"{folder}/{word}"] = target
    return owner


def target_of(rel, owner):
    if rel in EXECUTABLES:
        return EXECUTABLES[rel]
    stem = re.sub(r"\.(h|cc|cu)$", "", rel)
    for ext in (".cc", ".cu"):
        if stem + ext in owner:
            return owner[stem + ext]
    return FOLDER_DEFAULT.get(rel.split("/")[0])


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    deps = parse_map(root)
    deps.setdefault("engramd", {"server"})
    deps.setdefault("engramctl", {"client", "checkpoint"})
    reach = closure(deps)
    owner = parse_sources(root)
    errors = []
    for target in sorted(set(owner.values())):
        if target not in deps:
            errors.append(f"target {target} is built but not in the map")
    for folder in PRODUCT_DIRS:
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for f in sorted(files):
                if not re.search(r"\.(h|cc|cu)$", f):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), root)
                src = target_of(rel, owner)
                if src is None or src not in deps:
                    errors.append(f"{rel}: belongs to no target of the map")
                    continue
                for n, line in enumerate(open(os.path.join(root, rel)), 1):
                    m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
                    if not m:
                        continue
                    dst = target_of(m.group(1), owner)
                    if dst is None or dst == src:
                        continue
                    if dst not in reach[src]:
                        errors.append(
                            f"{rel}:{n}: {src} -> {dst} ({m.group(1)}) is "
                            f"not an arrow of the map (docs/design.md §3)")
    for e in errors:
        print(e)
    print(f"{len(owner)} sources in {len(set(owner.values()))} targets, "
          f"{len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
