"""`generate --show-threads`: every thread's text growing live in the terminal."""

from __future__ import annotations

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

STYLE = {"running": "green", "queued": "yellow", "waiting": "yellow", "closing": "cyan", "done": "dim"}


def _view(threads: list[dict], width: int = 400) -> Group:
    panels = []
    for th in threads:
        name = "main" if th["thread"] == 0 else f"async {th['thread']}"
        body = th["text"][-width:] or " "
        panels.append(Panel(Text(body), title=f"{name} · {th['state']} · {th['tokens']} tokens",
                            border_style=STYLE.get(th["state"], "white")))
    return Group(*panels)


def show_threads(stream):
    """Consumes an engine stream made with watch=True; returns its Result."""
    result = None
    with Live(_view([]), refresh_per_second=12, transient=False) as live:
        for update in stream:
            if "threads" in update:
                live.update(_view(update["threads"]))
            result = update.get("result", result)
    return result
