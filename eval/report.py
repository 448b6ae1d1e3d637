"""What an evaluation leaves behind: the results table (Markdown, CSV), the Pareto plot, an
alpaca_eval export, and a per-prompt HTML report with the stored forms' tags highlighted."""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

from interpreter.tags import Lexer, Tag, Text

COLUMNS = ["method", "model", "n", "win_rate", "lc_win_rate", "lc_ci_low", "lc_ci_high", "wall_speedup",
           "theoretical_speedup", "parallelism", "tokens_per_s", "mean_tokens", "cut", "looped", "repaired",
           "block_repetition"]


def _fmt(v) -> str:
    if isinstance(v, float):
        return "–" if v != v else f"{v:.2f}"
    return str(v)


def table_markdown(rows: list[dict], judge_label: str) -> str:
    head = ("| method | model | n | win rate | LC win rate (95% CI) | wall-clock speedup | theoretical speedup | "
            "parallelism | tokens/s | tokens | cut | looped | repaired | repeated across blocks |")
    lines = [f"Quality judge: **{judge_label}**. Win rates are against the sequential baseline (50 = equal). "
             "Without a judge: answers cut by the token budget, stopped in a loop, whose tags needed a repair, and "
             "the share of a block's word 3-grams that another block of the same answer repeats.", "",
             head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['model']} | {r['n']} | {_fmt(r['win_rate'])} | {_fmt(r['lc_win_rate'])} "
                     f"({_fmt(r['lc_ci_low'])}–{_fmt(r['lc_ci_high'])}) | {_fmt(r['wall_speedup'])}× | "
                     f"{_fmt(r['theoretical_speedup'])}× | {_fmt(r['parallelism'])} | {_fmt(r['tokens_per_s'])} | "
                     f"{_fmt(r['mean_tokens'])} | {r['cut']} | {r['looped']} | {r['repaired']} | "
                     f"{_fmt(r['block_repetition'])} |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], out: Path, judge_label: str) -> None:
    (out / "results.md").write_text(table_markdown(rows, judge_label))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + ["judge"], extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "judge": judge_label})


def set_slug(name: str) -> str:
    """A prompt set's folder name: `mt-bench`, `heldout`, or a JSONL's file stem."""
    return _slug(Path(name.split(":", 1)[-1]).stem if name.endswith((".jsonl", ".json")) else name)


def pareto_plot(rows: list[dict], path: Path, judge_label: str, prompts: str = "") -> None:
    """LC win rate against wall-clock speedup; PASTA checkpoints joined as one curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {"sequential": "s", "pasta": "o", "sot": "^", "pattern": "D"}
    pasta = sorted((r for r in rows if r["method"] == "pasta"), key=lambda r: r["wall_speedup"])
    if len(pasta) > 1:
        ax.plot([r["wall_speedup"] for r in pasta], [r["lc_win_rate"] for r in pasta], "-", color="tab:orange",
                alpha=0.6, zorder=1)
    for r in rows:
        lo, hi = r["lc_win_rate"] - r["lc_ci_low"], r["lc_ci_high"] - r["lc_win_rate"]
        ax.errorbar(r["wall_speedup"], r["lc_win_rate"], yerr=[[max(lo, 0)], [max(hi, 0)]], fmt=markers.get(
            r["method"], "o"), capsize=3, label=f"{r['method']} · {r['model']}", zorder=2)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.axvline(1, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("wall-clock speedup over sequential (geometric mean)")
    ax.set_ylabel("LC win rate vs sequential baseline (%)")
    ax.set_title(f"Quality vs speed{' on ' + prompts if prompts else ''} — judge: {judge_label}", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def alpaca_eval_export(generations: dict[str, list[dict]], prompts: dict[str, dict], out: Path) -> None:
    """One JSON per method/model in alpaca_eval's model_outputs format, for its official CLI."""
    folder = out / "alpaca_eval"
    folder.mkdir(parents=True, exist_ok=True)
    for name, gens in generations.items():
        rows = [{"instruction": prompts[g["prompt_id"]]["instruction"], "output": g["text"], "generator": name,
                 "dataset": prompts[g["prompt_id"]].get("category", "")} for g in gens]
        (folder / f"{_slug(name)}.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))


def highlight(stored: str) -> str:
    """`stored` as HTML: every piece escaped, each Pasta-Lang tag in <mark>; a malformed tag titled with its rule."""
    lexer = Lexer()  # the language's own reading of the tags, on the raw text (escaping first hides them)
    parts = []
    for ev in lexer.feed(stored) + lexer.close():
        if isinstance(ev, Text):
            parts.append(html.escape(ev.text))
        elif isinstance(ev, Tag):
            parts.append(f"<mark>{html.escape(ev.raw)}</mark>")
        else:
            parts.append(f"<mark class='bad' title='{html.escape(ev.message)}'>{html.escape(ev.raw)}</mark>")
    return "".join(parts)


def html_report(prompts: list[dict], generations: dict[str, dict[str, dict]], prefs: dict[str, dict[str, float]],
                path: Path, judge_label: str, table_md: str) -> None:
    """Side-by-side answers per prompt; PASTA's stored form with its tags marked."""
    names = list(generations)
    parts = ["<!doctype html><meta charset='utf-8'><title>PASTA evaluation</title><style>",
             "body{font-family:system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse;width:100%}",
             "td,th{border:1px solid #ccc;vertical-align:top;padding:.4em;font-size:13px}",
             "pre{white-space:pre-wrap;margin:0}mark{background:#ffe08a}mark.bad{background:#f5b5b5}",
             "details{margin:.3em 0}",
             ".meta{color:#666;font-size:11px}</style>",
             f"<h1>PASTA evaluation</h1><p>Judge: <b>{html.escape(judge_label)}</b></p>",
             f"<pre>{html.escape(table_md)}</pre>"]
    for p in prompts:
        parts.append(f"<h3>{html.escape(p['id'])} · {html.escape(p.get('category', ''))}</h3>"
                     f"<p>{html.escape(p['instruction'])}</p><table><tr>")
        parts += [f"<th>{html.escape(n)}</th>" for n in names]
        parts.append("</tr><tr>")
        for n in names:
            g = generations[n].get(p["id"])
            if g is None:
                parts.append("<td>–</td>")
                continue
            pref = prefs.get(n, {}).get(p["id"])
            meta = (f"{g['tokens']} tokens · {g['steps']} steps · {g['threads']} threads · {g['wall_time']:.2f} s"
                    + (f" · preference {pref:.2f}" if pref is not None else ""))
            stored = ""
            if g.get("stored") and g["stored"] != g["text"]:
                stored = f"<details><summary>stored form</summary><pre>{highlight(g['stored'])}</pre></details>"
            parts.append(f"<td><div class='meta'>{meta}</div><pre>{html.escape(g['text'])}</pre>{stored}</td>")
        parts.append("</tr></table>")
    path.write_text("".join(parts))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
