"""`python -m data_gen` end to end: config handling, the outputs finetune reads, and every rule counted."""

import json
import subprocess
import sys

import pytest
from dg_common import instruction_source, list_answer, read_jsonl, student_dir
from dg_replay import ReplayServer
from tiny import bpe_tokenizer

from data_gen import annotate
from data_gen.cli import main, parse_config
from interpreter import add_tag_tokens, load_tokenizer, measure, parse, strip
from pipeline.dataset import DatasetError, load_splits

COLUMNS = ["id", "messages", "annotated", "stripped", "source", "teacher", "blocks", "sequential_tokens",
           "parallel_steps", "total_tokens", "theoretical_speedup", "parallelism"]


def build(tmp_path, source, *flags):
    return main(["--source", str(source), "--student", student_dir(tmp_path), "--run_dir",
                 str(tmp_path / "runs" / "t"), *flags])


def test_help_lists_the_flags():
    out = subprocess.run([sys.executable, "-m", "data_gen", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--teacher" in out.stdout and "--no_parallel_share" in out.stdout


def test_flags_override_the_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# Run\nrun_dir: runs/from-yaml\nmax_blocks: 3\ntag_tokens: false\nsource_categories: [list]\n")
    cfg = parse_config(["--config", str(path), "--max_blocks", "5"])
    assert (cfg.run_dir, cfg.max_blocks, cfg.tag_tokens, cfg.source_categories) == ("runs/from-yaml", 5, False,
                                                                                 ["list"])
    cfg = parse_config(["--config", str(path), "--source_categories", "code", "steps"])
    assert cfg.source_categories == ["code", "steps"]


@pytest.mark.parametrize("args, message", [
    (["--config", "nowhere.yaml"], "nowhere.yaml"),
    (["--teacher", "gemini"], "--teacher must be one of structural, openai, not 'gemini'"),
    (["--teacher", "openai"], "--teacher openai needs --openai_model"),
    (["--push_to_hub"], "--push_to_hub needs --hub_repo_id"),
    (["--source", "missing.jsonl"], "missing.jsonl: not a JSON, JSONL or parquet file"),
    (["--student", "nobody/no-such-model", "--source", "SOURCE"], "model 'nobody/no-such-model' is not a local"),
])
def test_errors_are_one_clear_line(tmp_path, capsys, args, message):
    source = instruction_source(tmp_path, [list_answer(0)])
    args = [str(source) if a == "SOURCE" else a for a in args]
    assert main([*args, "--run_dir", str(tmp_path / "runs" / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m data_gen: error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("yaml_text, message", [("max_blockz: 3\n", "max_blockz"),
                                                ("max_blocks: [3\n", "while parsing a flow sequence")])
def test_a_bad_config_file_is_reported_with_its_path(tmp_path, capsys, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m data_gen: error: {path}: ") and message in err


def test_structural_build_writes_what_finetune_reads(tmp_path, capsys):
    answers = [list_answer(i) for i in range(12)] + ["Paris.", "Use <sync/> wisely.", "  ",
                                                     "\n".join(["1. Pluto is far away"] * 30)]
    source = instruction_source(tmp_path, answers)
    assert build(tmp_path, source, "--no_parallel_share", "0.05", "--test_size", "0.2") == 0
    summary = json.loads(capsys.readouterr().out)
    out = tmp_path / "runs" / "t" / "dataset"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rejected"]["answer-has-tags"] == stats["rejected"]["empty-answer"] == 1
    assert stats["rejected"]["repetitive-answer"] == 1
    assert stats["rejected"]["no-parallelism-over-share"] == 1  # "Paris." has no room next to 12 forked answers
    assert (stats["kept"], stats["with_blocks"], stats["train"] + stats["test"]) == (12, 12, 12)
    assert summary["kept"] == 12 and summary["mean_theoretical_speedup"] == stats["theoretical_speedup"]["mean"]
    ds = load_splits(tmp_path / "runs" / "t")
    assert ds["train"].column_names == COLUMNS and (len(ds["train"]), len(ds["test"])) == (10, 2)
    rows = list(ds["train"]) + list(ds["test"])
    tok = load_tokenizer(student_dir(tmp_path))
    add_tag_tokens(tok)  # as the build measures by default (--tag_tokens)
    for row in rows:
        assert row["stripped"] == strip(row["annotated"]) and row["stripped"] in answers
        assert row["annotated"] == annotate(row["stripped"], tok)
        assert row["teacher"] == "structural (rule-based, offline)"
        assert row["blocks"] == len(parse(row["annotated"]).blocks)
        costs = measure(row["annotated"], tok)
        assert (row["sequential_tokens"], row["parallel_steps"]) == (costs.sequential_tokens, costs.parallel_steps)
        assert row["messages"][-1]["role"] == "user"
    assert len({r["id"] for r in rows}) == 12
    assert read_jsonl(out / "train.jsonl") == list(ds["train"])
    assert (out / "speedup_hist.png").stat().st_size > 1000
    assert "structural (rule-based, offline)" in (out / "README.md").read_text()
    again = load_splits(tmp_path / "runs" / "t")
    assert load_splits(out)["test"]["id"] == ds["test"]["id"] == again["test"]["id"]


def test_a_second_build_gives_the_same_files(tmp_path):
    source = instruction_source(tmp_path, [list_answer(i) for i in range(6)])
    out = tmp_path / "runs" / "t" / "dataset"
    assert build(tmp_path, source) == 0
    first = (out / "train.jsonl").read_text(), (out / "test.jsonl").read_text()
    assert build(tmp_path, source) == 0
    assert ((out / "train.jsonl").read_text(), (out / "test.jsonl").read_text()) == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["dataset"]  # no temporary folder left behind


def test_load_dataset_says_how_to_build_a_missing_run(tmp_path):
    with pytest.raises(DatasetError, match="run `make dataset` first"):
        load_splits(tmp_path / "nope")


def P(topic, tokens=5):
    return f'<promise topic="{topic}" tokens="{tokens}"/>'


def test_openai_build_counts_every_rule_and_fix(tmp_path):
    tok = bpe_tokenizer()
    answers = [list_answer(i, items=4 if i == 8 else 3) for i in range(10)]
    answers += [f"Plain answer number {i}." for i in range(3)]
    good = {a: annotate(a, tok, granularity=1) for a in answers[:10]}
    a = answers
    head, rest = a[5].split("\n\n", 1)
    recorded = {
        a[0]: good[a[0]], a[1]: good[a[1]],
        a[2]: f"```\n{good[a[2]]}\n```",  # fenced: unwrapped
        a[3]: good[a[3]].replace("Together", "All together"),  # changed-text
        a[4]: good[a[4]].replace("</async>", "", 1),  # invalid: nesting
        a[5]: f"{head}{P('x')}\n\n{rest}",  # invalid: promise-without-block
        a[6]: good[a[6]].replace(parse(good[a[6]]).promises[0].raw, P("a b c d e f g h i")),  # bad-topic
        a[7]: f"{P('nothing')}<async></async>{a[7]}",  # empty-block
        a[8]: good[a[8]],  # 4 blocks: too many for --max_blocks 3
        a[10]: a[10], a[11]: a[11] + "<sync/>", a[12]: a[12],  # no blocks: one fits the share
    }
    scripts = {a[9]: ["500"] * 10}  # teacher-failed
    with ReplayServer(recorded, scripts) as server:
        code = build(tmp_path, instruction_source(tmp_path, answers), "--teacher", "openai", "--openai_model",
                     "recorded", "--openai_base_url", server.url, "--openai_max_retries", "1", "--openai_backoff",
                     "0.01", "--max_blocks", "3", "--no_parallel_share", "0.25", "--tokens_granularity", "10")
    assert code == 0
    stats = json.loads((tmp_path / "runs" / "t" / "dataset" / "stats.json").read_text())
    rejected = {k: v for k, v in stats["rejected"].items() if v}
    assert rejected == {"changed-text": 1, "nesting": 1, "invalid": 1, "bad-topic": 1, "empty-block": 1,
                        "too-many-blocks": 1, "teacher-failed": 1, "no-parallelism-over-share": 2}
    assert stats["invalid_by_validator_rule"] == {"promise-without-block": 1, "nesting": 1, "bad-topic": 1}
    assert stats["fixed"]["unwrapped-fence"] == 1 and stats["fixed"]["tokens-rewritten"] == 3
    assert (stats["kept"], stats["with_blocks"], stats["without_blocks"]) == (4, 3, 1)
    assert stats["teacher"] == "openai:recorded" and stats["teacher_summary"]["failed_records"] == 1
    rows = read_jsonl(tmp_path / "runs" / "t" / "dataset" / "train.jsonl")
    rows += read_jsonl(tmp_path / "runs" / "t" / "dataset" / "test.jsonl")
    assert {r["stripped"] for r in rows if r["blocks"]} == {a[0], a[1], a[2]}
    assert all(r["teacher"] == "openai:recorded" for r in rows)


@pytest.mark.parametrize("answers, flags", [(1, []), (3, ["--test_size", "0"])])
def test_an_empty_test_split_is_written_and_loads(tmp_path, answers, flags):
    source = instruction_source(tmp_path, [list_answer(i) for i in range(answers)])
    assert build(tmp_path, source, *flags) == 0
    ds = load_splits(tmp_path / "runs" / "t")
    assert (len(ds["train"]), len(ds["test"])) == (answers, 0) and ds["test"].column_names == COLUMNS
    assert (tmp_path / "runs" / "t" / "dataset" / "test.jsonl").read_text() == ""
