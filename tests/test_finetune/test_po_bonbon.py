"""BoNBoN preference optimization: best-of-N pairs, the loss, and the rounds."""

import dataclasses
import json
import math

import pytest
import torch
from tiny import bpe_tokenizer, memorize, tag_token_tokenizer, tiny_model
from transformers import TrainingArguments
from trl import ModelConfig

from eval.pairs import PairsArguments
from eval.pairs import main as make_pairs
from finetune.collator import PastaCollator
from finetune.prefopt import PairCollator, PrefOptArguments, run_rounds, sequence_logps, train_pairs
from interpreter import Engine, Script, encode, turn_end_id
from pipeline.errors import PipelineError
from pipeline.preference import answer, pairs_for, rank

FAST = '<promise topic="a" tokens="4"/><async> one</async><promise topic="b" tokens="4"/><async> two</async><sync/>'
SLOW = " one two"
Q = [{"role": "user", "content": "Count"}]


def sample(speedup, quality, repaired=False, stored="x"):
    return {"speedup": speedup, "quality": quality, "repaired": repaired, "stored": stored, "messages": Q}


def test_best_and_worst_by_speedup_plus_lambda_quality():
    group = {"p": [sample(1.0, 0.9, stored="good"), sample(1.8, 0.2, stored="fast"), sample(3.0, 1.0, True, "broken")]}
    assert answer(pairs_for(group, 1.0)[0], "chosen") == "fast"  # 1.8 + 0.2 > 1.0 + 0.9
    assert answer(pairs_for(group, 4.0)[0], "chosen") == "good"  # 1.0 + 3.6 > 1.8 + 0.8
    assert answer(pairs_for(group, math.inf)[0], "chosen") == "good"
    assert all(answer(p, "rejected") == "broken" for lam in (1.0, math.inf) for p in pairs_for(group, lam))
    assert pairs_for({"q": [sample(1.0, 0.5), sample(1.0, 0.5)]}, 1.0) == []  # nothing to learn
    skipped = pairs_for(group, 1.0, repaired="skip")  # the broken answer is neither best nor worst
    assert [(answer(p, "chosen"), answer(p, "rejected")) for p in skipped] == [("fast", "good")]
    looping = {"p": [sample(1.0, 0.3, stored="plain"), {**sample(1.9, 0.9, stored="loop"), "looping": True}]}
    assert answer(pairs_for(looping, 1.0)[0], "chosen") == "plain"  # fast and well judged, but it loops: never best
    assert pairs_for(looping, 1.0, repaired="skip") == []


def test_slower_rejects_a_broken_answer_only_where_it_forked_no_further_than_the_chosen():
    slow_loop = {**sample(1.0, 0.8, stored="plain loop"), "looping": True}
    fast_loop = {**sample(2.5, 0.9, stored="forked loop"), "looping": True}
    group = {"p": [sample(1.4, 0.3, stored="forked"), sample(1.2, 0.2, stored="less forked"), slow_loop, fast_loop]}
    pairs = pairs_for(group, 1.0, repaired="slower")
    assert [(answer(p, "chosen"), answer(p, "rejected")) for p in pairs] == [("forked", "plain loop")]
    # rejecting the loop that forked further than the chosen answer would teach not to fork: the clean pair stands
    no_slow = {"p": [sample(1.4, 0.3, stored="forked"), sample(1.2, 0.2, stored="less forked"), fast_loop]}
    assert [(answer(p, "chosen"), answer(p, "rejected")) for p in pairs_for(no_slow, 1.0, repaired="slower")] == [
        ("forked", "less forked")]
    assert pairs_for({"p": [slow_loop, fast_loop]}, 1.0, repaired="slower") == []  # no clean answer to choose


def test_answers_the_budget_ended_are_left_out_forked_or_not():
    group = {"p": [sample(1.0, 0.2, stored="slow"), sample(1.3, 0.4, stored="fast"),
                   {**sample(1.0, 0.0, stored="cut plain"), "finish_reason": "length"},
                   {**sample(1.9, 0.1, True, "cut forked"), "finish_reason": "length"}]}
    for repaired in ("worst", "skip"):
        pairs = pairs_for(group, 0.25, repaired)
        assert [(answer(p, "chosen"), answer(p, "rejected")) for p in pairs] == [("fast", "slow")]


def test_sooner_ranks_a_shorter_answer_above_a_longer_one_that_forks_as_much():
    def drawn(tokens, steps, stored):
        return {**sample(tokens / steps, 0.5, stored=stored), "tokens": tokens, "steps": steps}

    def chosen(group):
        return answer(pairs_for(group, 1.0)[0], "chosen")

    long_forked, short_plain = drawn(300, 150, "long list"), drawn(100, 100, "short paragraph")
    group = {"p": [long_forked, short_plain]}
    assert chosen(group) == "long list"  # theoretical: 2.0 against 1.0, though it ends 50 steps later
    rank(group, "sooner")  # the median answer, 200 tokens, over each one's steps
    assert chosen(group) == "short paragraph"
    group = {"p": [drawn(300, 150, "long list"), drawn(100, 100, "short paragraph"), drawn(120, 60, "short list")]}
    rank(group, "sooner")
    assert chosen(group) == "short list" and answer(pairs_for(group, 1.0)[0], "rejected") == "long list"


def make_run(root, model, tok=None):
    """A run folder: the policy as models/pasta-sft and three training prompts."""
    tok = tok or bpe_tokenizer()
    model.save_pretrained(root / "models" / "pasta-sft")
    tok.save_pretrained(root / "models" / "pasta-sft")
    (root / "dataset").mkdir()
    (root / "dataset" / "train.jsonl").write_text("\n".join(
        json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": f"List {i} things"}], "stripped": SLOW})
        for i in range(3)))
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("po"), tiny_model("llama", len(bpe_tokenizer())))


def test_pairs_are_sampled_judged_and_cached(run):
    args = PairsArguments(run_dir=str(run), out=str(run / "po1"), num_prompts=3, samples=3, max_new_tokens=12,
                          temperature=1.0, lambdas=[1.0, math.inf], proxy_reference=str(run / "models" / "pasta-sft"))
    summary = make_pairs(args)
    assert summary["samples"] == 9 and set(summary["lambdas"]) == {"1", "inf"}
    assert len((run / "po1" / "samples.jsonl").read_text().splitlines()) == 9
    for name in ("1", "inf"):
        for line in (run / "po1" / f"pairs-l{name}.jsonl").read_text().splitlines():
            pair = json.loads(line)
            assert pair["chosen"] != pair["rejected"] or pair["chosen_quality"] != pair["rejected_quality"]
            assert pair["chosen_layout"]["targets"] and pair["rejected_layout"]["targets"]  # the tokens drawn
    sooner = make_pairs(dataclasses.replace(args, speed="sooner"))  # ranked again from the cached samples
    assert sooner["speed"] == "sooner" and sooner["samples"] == 9
    make_pairs(args)  # every sample is cached
    cache = run / "po1" / "samples.jsonl"
    lines = cache.read_text().splitlines()
    assert len(lines) == 9
    cache.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])  # killed while writing the sixth
    make_pairs(dataclasses.replace(args, batch=2))
    again = [json.loads(line) for line in cache.read_text().splitlines()[5:]]
    # the answers made again, two at a time in one cache, are the ones the first run drew with their seeds
    assert {(r["id"], r["score_seed"]): r["stored"] for r in again} == \
           {(r["id"], r["score_seed"]): r["stored"] for r in map(json.loads, lines[5:])}
    make_pairs(dataclasses.replace(args, temperature=0.5))  # other settings: samples drawn anew, none reused
    assert len(cache.read_text().splitlines()) == 18
    make_pairs(dataclasses.replace(args, stop_loops=True))  # so does stopping loops
    assert len(cache.read_text().splitlines()) == 27


def test_preference_training_scores_the_tokens_the_policy_drew():
    """A policy may draw a text in other tokens than the tokenizer would cut it into (here: one character a
    token). Training must score the tokens drawn, whose log-probabilities the policy really produced."""
    tok = bpe_tokenizer()
    model = tiny_model("llama", len(tok))
    chars = lambda text: [t for c in text for t in encode(tok, c)]  # noqa: E731
    script = Script(chars("Tips:") + encode(tok, '<promise topic="a" tokens="4"/>') + chars(" ok"),
                    [chars(" one") + encode(tok, "</async>")], turn_end_id(tok))
    result = Engine(model, tok).generate(Q, source=script, record_logits=True, record_layout=True)
    drawn = {0: script.main + [turn_end_id(tok)], 1: script.blocks[0]}
    taken = dict.fromkeys(drawn, 0)
    expected = 0.0
    for thread, row in result.logits:  # each draw's logits row, in the order they were drawn
        expected += row.log_softmax(-1)[drawn[thread][taken[thread]]].item()
        taken[thread] += 1
    pair = {"messages": Q, "chosen": result.stored, "rejected": result.stored,
            "chosen_layout": result.layout.to_dict(), "rejected_layout": None}
    with torch.no_grad():
        logp, count = sequence_logps(model, PairCollator(PastaCollator(tok))([pair]))
    assert count[0] == sum(map(len, drawn.values()))
    assert logp[0].item() == pytest.approx(expected, abs=1e-3)  # the drawn tokens, as the policy scored them
    assert abs(logp[1].item() - expected) > 1.0  # the text re-tokenized: other tokens, another score


def _margin(model, tok, rows):
    collator = PairCollator(PastaCollator(tok))
    with torch.no_grad():
        logp, _ = sequence_logps(model, collator(rows))
    return (logp[: len(rows)] - logp[len(rows):]).mean().item()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_training_on_pairs_moves_the_model_towards_the_chosen_answers(run, tmp_path, lora):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"messages": Q, "chosen": FAST, "rejected": SLOW}] * 4
    pairs.write_text("\n".join(json.dumps(r) for r in rows))
    policy = str(run / "models" / "pasta-sft")
    from interpreter import load_model

    model, tok = load_model(policy)
    before = _margin(model, tok, rows[:1])
    training = TrainingArguments(output_dir=str(tmp_path / "ck"), max_steps=12, learning_rate=3e-3 if lora else 3e-4,
                                 per_device_train_batch_size=2, report_to="none", save_strategy="no",
                                 use_cpu=True, logging_steps=1)
    model_args = ModelConfig(model_name_or_path=policy, use_peft=lora, lora_r=4, lora_alpha=8,
                             lora_target_modules=["q_proj", "v_proj", "down_proj"])
    summary = train_pairs(policy, pairs, tmp_path / "models" / "po", PrefOptArguments(), training, model_args)
    assert not (tmp_path / "models" / "po" / "adapter_config.json").exists()  # LoRA lands merged, as any model
    trained, _ = load_model(str(tmp_path / "models" / "po"))
    assert math.isfinite(summary["train_loss"])
    # the squared term pulls log p(chosen)/p(rejected) to 1/(2β) = 1 nat above the reference's
    assert before + 0.5 < _margin(trained, tok, rows[:1]) < before + 3.0


@pytest.mark.slow
def test_two_rounds_two_lambdas(tmp_path):
    # a policy half-trained on FAST ends its answers in varied ways (a random one runs to the budget: left out);
    # its tags are added tokens, as the demo student's
    tok = tag_token_tokenizer()
    run = make_run(tmp_path, memorize(tiny_model("llama", len(tok)), tok, Q, FAST, steps=40), tok)
    args = PrefOptArguments(run_dir=str(run), rounds=2, lambdas=[1.0, math.inf], samples=3, num_prompts=2,
                            max_new_tokens=48, proxy_reference=str(run / "models" / "pasta-sft"))
    training = TrainingArguments(output_dir=str(tmp_path / "ck"), max_steps=1, per_device_train_batch_size=2,
                                 report_to="none", save_strategy="no", use_cpu=True)
    run_rounds(args, training, ModelConfig())
    for name in ("prefopt-l1-r1", "prefopt-linf-r1", "prefopt-l1-r2", "prefopt-linf-r2"):
        assert (run / "models" / name / "config.json").exists(), name
    assert (run / "prefopt" / "round-2" / "linf" / "samples.jsonl").exists()
    samples = [json.loads(line) for line in (run / "prefopt" / "round-1" / "samples.jsonl").read_text().splitlines()]
    assert any("<promise" in s["stored"] for s in samples)  # the policy forks with its tag tokens
    with pytest.raises(PipelineError, match="ranked by --speed theoretical"):  # not trained on the other ranking
        run_rounds(dataclasses.replace(args, speed="sooner"), training, ModelConfig())


def test_preference_optimization_trains_in_float32_on_a_cpu_without_bf16_units(monkeypatch, capsys, tmp_path):
    from finetune import prefopt, sft

    trained = []
    monkeypatch.setattr(sft, "native_bf16", lambda: False)
    monkeypatch.setattr(prefopt, "train_round", lambda args, training, model_args, k: trained.append(training))
    recipe = TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True, report_to="none")
    prefopt.run(PrefOptArguments(run_dir=str(tmp_path), stage="train"), recipe, ModelConfig())
    assert len(trained) == 1 and not trained[0].bf16
    assert "no bf16 units" in capsys.readouterr().err


def test_preference_optimization_samples_in_the_dtype_asked(monkeypatch, tmp_path):
    """The demo's recipe samples as its evaluation decodes (`sample_dtype: auto`); the policy trains in --dtype."""
    from finetune import prefopt

    asked = []
    monkeypatch.setattr(prefopt, "sample_pairs", lambda *_, dtype=None: asked.append(dtype) or {})
    args = PrefOptArguments(run_dir=str(tmp_path), sample_dtype="float16-weights")
    prefopt.sample_round(args, ModelConfig(model_name_or_path="policy"), 1)
    assert asked == ["float16-weights"]
