"""python -m finetune.check: held-out answers decoded by the engine, summarised without hiding cut answers."""

import json

from tiny import bpe_tokenizer, tiny_model

from finetune.check import CheckArguments, check

ANNOTATED = 'Two:<promise topic="a" tokens="3"/><async> one</async><sync/> done'


def test_summary_separates_answers_cut_by_the_budget(tmp_path):
    tok = bpe_tokenizer()
    model = tmp_path / "model"
    tiny_model("llama", len(tok)).save_pretrained(model)
    tok.save_pretrained(model)
    (tmp_path / "dataset").mkdir()
    rows = [{"id": f"t{i}", "messages": [{"role": "user", "content": f"List {i}"}], "annotated": ANNOTATED}
            for i in range(4)]
    (tmp_path / "dataset" / "test.jsonl").write_text("\n".join(map(json.dumps, rows)))
    summary = check(CheckArguments(model=str(model), run_dir=str(tmp_path), max_new_tokens=6))
    answers = json.loads((model / "check.json").read_text())["answers"]
    assert summary["answers"] == len(answers) == 4 and summary["prompts_with_reference_blocks"] == 4
    finished = [a["theoretical_speedup"] for a in answers if a["finish_reason"] == "stop"]
    assert summary["cut_at_max_new_tokens"] == 4 - len(finished)
    assert summary["mean_theoretical_speedup_finished"] == (round(sum(finished) / len(finished), 4) if finished
                                                            else None)
