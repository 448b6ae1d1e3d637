"""The OpenAI-compatible judge against a fake one served locally: probed before any decoding, a failed
judgment counted (never a tie, never cached), and a run stopped with one line above the threshold."""

import json
import re
import socket
import time

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from serving import serving
from tiny import bpe_tokenizer, tiny_model

import eval.run
from eval.run import EvalArguments, cli, main
from pipeline.judges import JudgeError, JudgmentCache, OpenAIJudge, check_failures

PAIR = re.compile(r"\[Instruction\]\n(.*)\n\n\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)", re.S)


@pytest.fixture
def judge_server():
    """A judge that likes long answers. It serves one model, "judge-model"; `app.state.key` (if set) is the only key
    it takes; `app.state.replies` maps an instruction to the reply (text, or an HTTP status) it gets instead."""
    app = FastAPI()
    app.state.calls, app.state.key, app.state.replies = 0, None, {}

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        app.state.calls += 1
        return _answer(app, body)

    @app.middleware("http")
    async def check_key(request, call_next):
        if app.state.key and request.headers.get("authorization") != f"Bearer {app.state.key}":
            return JSONResponse({"error": {"message": "Incorrect API key provided"}}, status_code=401)
        return await call_next(request)

    with serving(app) as (url, _):
        yield url + "/v1", app


def _answer(app, body: dict):
    if body["model"] != "judge-model":
        return JSONResponse({"error": {"message": f"The model `{body['model']}` does not exist."}}, status_code=404)
    pair = PAIR.search(body["messages"][-1]["content"])
    verdict = "A"  # the probe's one-token question
    if pair:
        instruction, a, b = pair.groups()
        verdict = app.state.replies.get(instruction, "A" if len(a) >= len(b) else "B")
    if isinstance(verdict, int):
        return JSONResponse({"error": {"message": "the judge fell over"}}, status_code=verdict)
    return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": verdict}, "finish_reason": "stop"}]}


def test_openai_judge_both_orders_and_cache(judge_server, tmp_path, capsys):
    url, app = judge_server
    judge = OpenAIJudge("judge-model", JudgmentCache(tmp_path / "j.jsonl"), base_url=url)
    rows = judge.prefer_all([("q", "a long answer here", "short"), ("q", "tiny", "a much longer answer")])
    assert [r["preference"] for r in rows] == [1.0, 0.0]
    assert app.state.calls == 4  # each pair judged in both orders
    assert "2/2" in capsys.readouterr().err  # the progress bar, on stderr
    again = OpenAIJudge("judge-model", JudgmentCache(tmp_path / "j.jsonl"), base_url=url)
    again.prefer_all([("q", "a long answer here", "short")])
    assert app.state.calls == 4  # the cached verdict is not paid for twice


def test_a_failed_judgment_is_counted_never_a_tie_and_asked_again(judge_server, tmp_path):
    url, app = judge_server
    app.state.replies = {"mumbles": "I cannot tell.", "wordy": "Answer B is better.", "falls": 500}
    judge = OpenAIJudge("judge-model", JudgmentCache(tmp_path / "j.jsonl"), base_url=url, max_retries=0)
    triples = [("fine", "a long answer", "short"), ("mumbles", "x", "y"), ("wordy", "x", "y"), ("falls", "x", "y")]
    rows = judge.prefer_all(triples)
    assert [r["preference"] for r in rows] == [1.0, None, None, None] and judge.failures == 3
    assert "neither A nor B: 'I cannot tell.'" in rows[1]["error"]
    assert "neither A nor B" in rows[2]["error"]  # "Answer B": its first word is no verdict, not an "A"
    assert "[500]" in rows[3]["error"]
    assert len((tmp_path / "j.jsonl").read_text().splitlines()) == 1  # only the judged pair is cached
    calls = app.state.calls
    OpenAIJudge("judge-model", JudgmentCache(tmp_path / "j.jsonl"), base_url=url, max_retries=0).prefer_all(triples)
    assert app.state.calls == calls + 3 * 2  # a rerun asks the failed pairs again, in both orders
    assert check_failures(rows, 0.75, "a row") == 3
    with pytest.raises(JudgeError, match=r"failed on 3 of 4 pairs of a row, more than max_judge_failures=0.5 "
                                         r"\(last: the judge at .* \[500\]\)"):
        check_failures(rows, 0.5, "a row")


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/v1"


def _no_model_loads(monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the judge was probed")
    monkeypatch.setattr(eval.run, "load_model", load)


@pytest.mark.parametrize("case", ["wrong-url", "missing-key", "refused-key", "unknown-model", "shard-worker"])
def test_a_judge_that_cannot_answer_stops_the_run_in_seconds_before_any_model_loads(
        case, judge_server, tmp_path, capsys, monkeypatch):
    url, app = judge_server
    monkeypatch.delenv("PASTA_TEST_JUDGE_KEY", raising=False)
    flags = {"wrong-url": ["--judge_base_url", _closed_port_url()],
             "missing-key": [],
             "refused-key": ["--judge_base_url", url],
             "unknown-model": ["--judge_base_url", url, "--judge_model", "nope"],
             "shard-worker": ["--judge_base_url", _closed_port_url(), "--shard", "0/2"]}[case]
    expected = {"wrong-url": "cannot reach the judge at http://127.0.0.1:",
                "missing-key": "the openai judge needs an API key in $PASTA_TEST_JUDGE_KEY",
                "refused-key": f"the judge at {url} rejected the API key in $PASTA_TEST_JUDGE_KEY [401]",
                "unknown-model": f"the judge at {url} does not know model 'nope'",
                "shard-worker": "cannot reach the judge at http://127.0.0.1:"}[case]
    if case == "refused-key":
        app.state.key = "secret"
        monkeypatch.setenv("PASTA_TEST_JUDGE_KEY", "wrong")
    _no_model_loads(monkeypatch)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"instruction": "Say hi."}) + "\n")
    started = time.perf_counter()
    status = cli(["--run_dir", str(tmp_path / "run"), "--prompts", str(prompts), "--judge", "openai",
                  "--judge_model", "judge-model", "--judge_api_key_env", "PASTA_TEST_JUDGE_KEY", *flags])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"python -m eval: error: {expected}"), err
    assert time.perf_counter() - started < 5
    assert not (tmp_path / "run" / "eval" / "generations").exists()  # nothing decoded


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    tok = bpe_tokenizer()
    for i, name in enumerate(["baseline-sft", "pasta-sft"]):
        tiny_model("llama", len(tok), seed=i).save_pretrained(root / "models" / name)
        tok.save_pretrained(root / "models" / name)
    (root / "p.jsonl").write_text("\n".join(json.dumps({"instruction": q}) for q in
                                            ["List three fruits.", "Why is the sky blue?", "Say hi."]))
    return root


def _args(root, url, **kw) -> EvalArguments:
    return EvalArguments(run_dir=str(root / "run"), prompts=[str(root / "p.jsonl")], methods=["sequential", "pasta"],
                         baseline_model=str(root / "models" / "baseline-sft"),
                         pasta_models=[str(root / "models" / "pasta-sft")], max_new_tokens=8, bootstrap=10,
                         judge="openai", judge_model="judge-model", judge_base_url=url, **kw)


def test_garbage_verdicts_are_counted_in_the_table_and_too_many_stop_the_run(run_root, judge_server, capsys):
    url, app = judge_server
    app.state.replies = {"Say hi.": "Hmm, hard to say."}
    rows = main(_args(run_root, url, max_judge_failures=0.5))
    assert [r["judge_failures"] for r in rows] == [0, 1]
    assert rows[1]["win_rate"] in (0.0, 50.0, 100.0)  # over the two judged pairs, the failed one left out
    out = run_root / "run" / "eval"
    table = (out / "results.md").read_text()
    assert "| judge failures |" in table and "| pasta | pasta-sft | 3 | 1 |" in table
    csv_rows = (out / "results.csv").read_text().splitlines()
    assert csv_rows[0].split(",")[3] == "judge_failures" and csv_rows[2].split(",")[3] == "1"
    capsys.readouterr()
    assert cli(["--run_dir", str(run_root / "run"), "--prompts", str(run_root / "p.jsonl"),
                "--methods", "sequential", "pasta", "--baseline_model", str(run_root / "models" / "baseline-sft"),
                "--pasta_models", str(run_root / "models" / "pasta-sft"), "--max_new_tokens", "8",
                "--judge", "openai", "--judge_model", "judge-model", "--judge_base_url", url,
                "--max_judge_failures", "0.2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("python -m eval: error: the judge failed on 1 of 3 pairs of pasta · pasta-sft, more "
                              "than max_judge_failures=0.2 (last: a reply that is neither A nor B: "
                              "'Hmm, hard to say.')")
    assert not any("Traceback" in line for line in err)
