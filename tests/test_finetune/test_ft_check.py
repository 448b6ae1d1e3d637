"""python -m finetune.check: held-out answers decoded by the engine, summarised without hiding cut answers."""

import json

import pytest
from tiny import bpe_tokenizer, tiny_model

from finetune.check import CheckArguments, check
from pipeline.prompts import prompt_id

ANNOTATED = 'Two:<promise topic="a" tokens="3"/><async> one</async><sync/> done'


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    tok = bpe_tokenizer()
    tiny_model("llama", len(tok)).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "dataset").mkdir()
    rows = [{"id": f"t{i}", "messages": [{"role": "user", "content": f"List {i}"}], "annotated": ANNOTATED}
            for i in range(4)]
    (root / "dataset" / "test.jsonl").write_text("\n".join(map(json.dumps, rows)))
    return root


def test_summary_separates_answers_cut_by_the_budget(run):
    model = run / "model"
    summary = check(CheckArguments(model=str(model), run_dir=str(run), max_new_tokens=6))
    answers = json.loads((model / "check.json").read_text())["answers"]
    assert summary["answers"] == len(answers) == 4 and summary["prompts_with_reference_blocks"] == 4
    finished = [a["theoretical_speedup"] for a in answers if a["finish_reason"] == "stop"]
    assert summary["cut_at_max_new_tokens"] == 4 - len(finished)
    assert summary["mean_theoretical_speedup_finished"] == (round(sum(finished) / len(finished), 4) if finished
                                                            else None)
    ended = [not a["repairs"] for a in answers if a["finish_reason"] == "stop"]
    assert summary["repair_free_share_finished"] == (round(sum(ended) / len(ended), 4) if ended else None)


def test_an_instruction_answered_twice_is_checked_once(run, tmp_path):
    (tmp_path / "dataset").mkdir()
    rows = [{"id": rid, "messages": [{"role": "user", "content": f"List {rid[1]}"}], "annotated": ANNOTATED}
            for rid in ("t0", "t0-1", "t1")]
    (tmp_path / "dataset" / "test.jsonl").write_text("\n".join(map(json.dumps, rows)))
    summary = check(CheckArguments(model=str(run / "model"), run_dir=str(tmp_path), max_new_tokens=4,
                                   out=str(tmp_path / "check.json")))
    answers = json.loads((tmp_path / "check.json").read_text())["answers"]
    assert summary["answers"] == 2 and [a["id"] for a in answers] == ["t0", "t1"]


def test_held_out_prompts_leave_out_what_the_dataset_holds(run, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "List 1", "category": "list"},  # in the dataset: not held out
        {"instruction": "List five birds.", "category": "list"},
        {"instruction": "Name two rivers.", "category": "list"},
        {"instruction": "Why is ice slippery?", "category": "explanation"}]))
    out = tmp_path / "held.json"
    summary = check(CheckArguments(model=str(run / "model"), run_dir=str(run), max_new_tokens=4, prompts=str(seeds),
                                   categories=["list"], out=str(out)))
    answers = json.loads(out.read_text())["answers"]
    assert summary["answers"] == 2 and summary["promise_share"] is None  # no reference answers to compare with
    assert sorted(a["id"] for a in answers) == sorted(map(prompt_id, ["List five birds.", "Name two rivers."]))
    with pytest.raises(ValueError, match="no prompt left outside"):
        check(CheckArguments(model=str(run / "model"), run_dir=str(run), prompts=str(seeds), categories=["code"]))


def test_against_an_earlier_check_gives_the_paired_difference(run, tmp_path):
    model, before = str(run / "model"), tmp_path / "before.json"
    check(CheckArguments(model=model, run_dir=str(run), max_new_tokens=6, out=str(before)))
    same = check(CheckArguments(model=model, run_dir=str(run), max_new_tokens=6, against=str(before)))
    assert same["against"]["all"]["mean"] == 0 and same["against"]["all"]["pairs"] == 4  # greedy: same answers
    doc = json.loads(before.read_text())
    doc["answers"] = [{**a, "theoretical_speedup": a["theoretical_speedup"] - 0.5, "finish_reason": "stop",
                       "looped": 0} for a in doc["answers"][:3]]
    slower = tmp_path / "slower.json"
    slower.write_text(json.dumps(doc))
    diff = check(CheckArguments(model=model, run_dir=str(run), max_new_tokens=6, against=str(slower)))["against"]
    assert diff["all"]["pairs"] == 3 and diff["all"]["mean"] == 0.5 and diff["all"]["ci95"] == [0.5, 0.5]
    assert diff["all"]["higher"] == 3


def test_sampled_answers_pair_up_by_seed(run, tmp_path):
    model, first = str(run / "model"), tmp_path / "first.json"
    args = dict(model=model, run_dir=str(run), max_new_tokens=6, samples=3, temperature=1.0)
    summary = check(CheckArguments(**args, out=str(first)))
    answers = json.loads(first.read_text())["answers"]
    assert summary["answers"] == 12 and summary["prompts_with_reference_blocks"] == 4
    assert {a["sample"] for a in answers} == {0, 1, 2}
    assert len({a["stored"] for a in answers if a["id"] == "t0"}) > 1  # three different draws
    again = check(CheckArguments(**args, against=str(first)))["against"]["all"]  # same seeds: same answers
    assert again["pairs"] == 12 and again["mean"] == 0 and again["higher"] == again["lower"] == 0


def test_promise_estimates_tag_costs_and_fork_points(run):
    from finetune.check import estimate_error, promise_costs
    from interpreter import Result, encode, promise_tag

    tok = bpe_tokenizer()
    stored = 'Two:<promise topic="a" tokens="20"/><async> one two</async><promise topic="b" tokens="3"/><async> x' \
             '</async><sync/> done'
    result = Result(text="", stored=stored, mode="pasta", finish_reason="stop", prompt_tokens=0, tokens=0,
                    thread_tokens=[0], steps=1, threads=2, wall_time=1.0, prefill_time=0.0)
    costs = promise_costs(result, tok)
    tags = len(encode(tok, "<async>")) + len(encode(tok, "</async>"))
    true = [tags + len(encode(tok, t)) for t in (" one two", " x")]
    assert costs["promises"] == [[20, true[0]], [3, true[1]]]
    assert costs["tag_tokens"][0] == len(encode(tok, promise_tag("a", 20))) + true[0] - len(encode(tok, " one two"))
    err = estimate_error([costs])
    assert err["promises"] == 2 and err["mean_abs_error_tokens"] == (abs(20 - true[0]) + abs(3 - true[1])) / 2
    summary = check(CheckArguments(model=str(run / "model"), run_dir=str(run), max_new_tokens=6))
    points = summary["reference_fork_points"]  # one promise per reference answer, teacher-forced
    assert points["points"] == 4 and 0 <= points["mean_probability"] < 0.5 and "greedy_share" in points
    assert "mean_theoretical_speedup_reference_forks" in summary and "tag_tokens_per_promise" in summary
