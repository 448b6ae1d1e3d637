"""Experiment tracking every stage sets up alike: Weights & Biases logs offline unless an account is set up, and
result tables go to the trackers a run names."""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from urllib.parse import urlparse


def wandb_requested(report_to) -> bool:
    """Whether `report_to` (TrainingArguments' value: a name, a list of names, "all" or "none") asks for wandb."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return "wandb" in names or "all" in names


def wandb_logged_in() -> bool:
    """WANDB_API_KEY is set, or the netrc file (`wandb login` writes it) holds a key for the wandb host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC") or Path.home() / ".netrc").authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # no file, or one wandb could not read either
        return False


def offline_unless_logged_in(report_to) -> bool:
    """Sets WANDB_MODE=offline when `report_to` asks for wandb and no login exists, so that a run without an account
    logs to ./wandb (`wandb sync` uploads it later) instead of stopping at a login prompt. A WANDB_MODE already set
    is kept. Returns whether it switched to offline."""
    if not wandb_requested(report_to) or "WANDB_MODE" in os.environ or wandb_logged_in():
        return False
    os.environ["WANDB_MODE"] = "offline"
    print("wandb: no login (WANDB_API_KEY or `wandb login`), logging offline to ./wandb; upload later with "
          "`wandb sync`", file=sys.stderr, flush=True)
    return True


def log_results(report_to, rows: list[dict], out: Path, config: dict | None = None, name: str = "results") -> None:
    """Logs result rows (one dict a row) as a table to the trackers `report_to` names: a wandb Table (in a run under
    `out`, offline without a login) and a tensorboard text summary (under out/tensorboard)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if not rows or not names or names == ["none"]:
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    if wandb_requested(names):
        import wandb

        offline_unless_logged_in(names)
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "pasta"), dir=str(out), config=config,
                         job_type="eval", reinit="finish_previous")
        run.log({name: wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])})
        run.finish()
    if "tensorboard" in names or "all" in names:
        from torch.utils.tensorboard import SummaryWriter

        lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
        with SummaryWriter(str(out / "tensorboard")) as writer:
            writer.add_text(name, "\n".join(lines))
