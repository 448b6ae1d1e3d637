"""What an evaluation leaves behind: the results table (Markdown, CSV), the Pareto plot, an
alpaca_eval export, FastChat MT-Bench answers, and a per-prompt HTML report with the stored forms'
tags highlighted.

The table's quality figure beside the raw win rate is a length-adjusted win rate from a length-only
GLM (eval.winrate), not alpaca_eval's length-controlled win rate: for that, run alpaca_eval on the
export (docs/eval.md)."""

from __future__ import annotations

import csv
import hashlib
import html
import json
import re
import time
from pathlib import Path

from interpreter.tags import Lexer, Tag, Text

from .prompts import turn2_id

COLUMNS = ["method", "model", "n", "judge_failures", "win_rate", "length_adjusted_win_rate", "length_adjusted_ci_low",
           "length_adjusted_ci_high", "wall_speedup", "wall_speedup_ci_low", "wall_speedup_ci_high", "step_speedup",
           "theoretical_speedup", "parallelism", "tokens_per_s", "mean_tokens", "cut", "looped", "repaired",
           "block_repetition"]
ADJUSTED = "length-adjusted win rate (length-only GLM)"  # what the figure is: not alpaca_eval's LC win rate


def _fmt(v) -> str:
    if isinstance(v, float):
        return "–" if v != v else f"{v:.2f}"
    return str(v)


def table_markdown(rows: list[dict], judge_label: str) -> str:
    head = ("| method | model | n | judge failures | win rate | length-adjusted win rate (length-only GLM; 95% CI) | "
            "wall-clock speedup (95% CI) | step speedup | theoretical speedup | parallelism | tokens/s | tokens | "
            "cut | looped | repaired | repeated across blocks |")
    lines = [f"Quality judge: **{judge_label}**. Win rates are against the sequential baseline (50 = equal), over the "
             "pairs the judge answered; judge failures (an error after retries, or a reply that is neither A nor B) "
             "are counted, never scored as ties. The length-adjusted win rate is a logistic fit of the preference "
             "on the length difference alone, read at equal length; it is not alpaca_eval's length-controlled win "
             "rate (docs/eval.md). The speedup's interval resamples the prompts: how far another draw of as many "
             "prompts could move it. The step speedup is the wall-clock speedup counted in forward passes (each "
             "prompt's sequential passes over the method's, geometric mean): what it would read if every pass cost "
             "the same, free of the machine's speed drifting between rows. Without a judge: answers cut by the "
             "token budget, stopped in a loop, repaired (a tag, or a block the budget's end closed), and the share "
             "of a block's word 3-grams "
             "that another block of the same answer repeats.", "", head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['model']} | {r['n']} | {r['judge_failures']} | {_fmt(r['win_rate'])} | "
                     f"{_fmt(r['length_adjusted_win_rate'])} ({_fmt(r['length_adjusted_ci_low'])}–"
                     f"{_fmt(r['length_adjusted_ci_high'])}) | {_fmt(r['wall_speedup'])}× "
                     f"({_fmt(r['wall_speedup_ci_low'])}–{_fmt(r['wall_speedup_ci_high'])}) | "
                     f"{_fmt(r['step_speedup'])}× | {_fmt(r['theoretical_speedup'])}× | {_fmt(r['parallelism'])} | "
                     f"{_fmt(r['tokens_per_s'])} | {_fmt(r['mean_tokens'])} | {r['cut']} | {r['looped']} | "
                     f"{r['repaired']} | {_fmt(r['block_repetition'])} |")
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
    """Length-adjusted win rate against wall-clock speedup; PASTA checkpoints joined as one curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {"sequential": "s", "pasta": "o", "sot": "^", "pattern": "D"}
    pasta = sorted((r for r in rows if r["method"] == "pasta"), key=lambda r: r["wall_speedup"])
    if len(pasta) > 1:
        ax.plot([r["wall_speedup"] for r in pasta], [r["length_adjusted_win_rate"] for r in pasta], "-",
                color="tab:orange", alpha=0.6, zorder=1)
    for r in rows:
        y = r["length_adjusted_win_rate"]
        lo, hi = y - r["length_adjusted_ci_low"], r["length_adjusted_ci_high"] - y
        x = r["wall_speedup"]
        left, right = x - r["wall_speedup_ci_low"], r["wall_speedup_ci_high"] - x
        ax.errorbar(x, y, yerr=[[max(lo, 0)], [max(hi, 0)]], xerr=[[max(left, 0)], [max(right, 0)]], fmt=markers.get(
            r["method"], "o"), capsize=3, label=f"{r['method']} · {r['model']}", zorder=2)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.axvline(1, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("wall-clock speedup over sequential (geometric mean; bars: 95% CIs over prompts)")
    ax.set_ylabel(f"{ADJUSTED}\nvs sequential baseline (%)")
    ax.set_title(f"Quality vs speed{' on ' + prompts if prompts else ''}\njudge: {judge_label}", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def model_id(name: str) -> str:
    """A row's name ("pasta · pasta-sft") as the name alpaca_eval and FastChat know it by ("pasta_pasta-sft"): the
    export's file stem, and safe in the file names both tools make from it."""
    return _slug(name)


def alpaca_eval_export(generations: dict[str, list[dict]], prompts: dict[str, dict], out: Path) -> None:
    """out/alpaca_eval/<model_id>.json per row, in alpaca_eval's model_outputs format (instruction, output,
    generator = model_id, dataset), in prompt order, for its official CLI; the sequential Baseline-SFT row's file
    is the `--reference_outputs`."""
    folder = out / "alpaca_eval"
    folder.mkdir(parents=True, exist_ok=True)
    for name, gens in generations.items():
        rows = [{"instruction": prompts[g["prompt_id"]]["instruction"], "output": g["text"],
                 "generator": model_id(name), "dataset": prompts[g["prompt_id"]].get("category", "")} for g in gens]
        (folder / f"{model_id(name)}.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))


def mt_bench_export(answers: dict[str, dict[str, dict]], prompts: list[dict], folder: Path) -> list[Path]:
    """folder/<model_id>.jsonl per row in FastChat's model_answer format (question_id, answer_id, model_id,
    choices [{"index": 0, "turns": [answer 1, answer 2]}], tstamp), for FastChat's gen_judgment.py; only the
    prompts that hold both answers. Returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in answers.items():
        ident = model_id(name)
        both = [(p["question_id"], rows[p["id"]], rows[turn2_id(p["id"])]) for p in prompts
                if "question_id" in p and p["id"] in rows and turn2_id(p["id"]) in rows]
        lines = [{"question_id": qid, "answer_id": hashlib.sha1(f"{ident}/{qid}".encode()).hexdigest()[:22],
                  "model_id": ident, "choices": [{"index": 0, "turns": [first["text"], second["text"]]}],
                  "tstamp": time.time()} for qid, first, second in both]
        if lines:
            written.append(folder / f"{ident}.jsonl")
            written[-1].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
    return written


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
            pref = prefs.get(n, {}).get(p["id"], "–")
            meta = (f"{g['tokens']} tokens · {g['steps']} steps · {g['threads']} threads · {g['wall_time']:.2f} s"
                    + ("" if pref == "–" else " · judge failed" if pref is None else f" · preference {pref:.2f}"))
            stored = ""
            if g.get("stored") and g["stored"] != g["text"]:
                stored = f"<details><summary>stored form</summary><pre>{highlight(g['stored'])}</pre></details>"
            parts.append(f"<td><div class='meta'>{meta}</div><pre>{html.escape(g['text'])}</pre>{stored}</td>")
        parts.append("</tr></table>")
    path.write_text("".join(parts))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
