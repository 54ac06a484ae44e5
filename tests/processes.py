"""Counting the gateway's child processes the way an operator would: through Linux's `/proc`."""

from __future__ import annotations

import os
from pathlib import Path


def children(marker: str, parent: int | None = None) -> list[int]:
    """Pids of the live (not zombie) children of `parent` (default: this process, where
    `serve_gateway` runs the gateway) whose command line contains `marker`."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it ended while we looked
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == parent and state != "Z" and marker in command:
            found.append(int(entry.name))
    return found
