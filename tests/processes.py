"""Counting the gateway's child processes the way an operator would: through Linux's `/proc`."""

from __future__ import annotations

import os
from pathlib import Path


def children(marker: str, cwd: Path | None = None, parent: int | None = None) -> list[int]:
    """Pids of the live (not zombie) children of `parent` (default: this process, where
    `serve_gateway` runs the gateway) whose command line contains `marker`, and, with `cwd`, that
    run in that directory (the tests give each gateway's upstreams its own, as gateways of other
    tests run in this process too)."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            where = Path(os.readlink(entry / "cwd"))
        except OSError:  # it ended while we looked
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) != parent or state == "Z" or marker not in command:
            continue
        if cwd is None or where == cwd.resolve():
            found.append(int(entry.name))
    return found
