#!/usr/bin/env python3
"""Every relative link in README.md and docs/*.md points at a file or folder
inside the repository (no link to planning documents outside it)."""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1]).resolve()
pages = [root / "README.md"] + sorted((root / "docs").glob("*.md"))
link = re.compile(r"\]\(([^)\s]+)\)")
bad = []
for page in pages:
    for target in link.findall(page.read_text()):
        if re.match(r"^[a-z]+://", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists() or root not in path.parents and path != root:
            bad.append(f"{page.relative_to(root)}: {target}")
if bad:
    print("links that do not resolve inside the repository:")
    print("\n".join(bad))
    sys.exit(1)
print(f"links_test: {len(pages)} pages, all relative links resolve")
