"""The serving-engine backend: Pasta-Lang over /v1/completions, against the project's own server."""

import json
import socket
import subprocess
import sys

import httpx
import pytest
from serving import serving
from tiny import bpe_tokenizer, memorize, tag_token_tokenizer, tiny_model

from interpreter import Engine, Options, parse, prompt_ids
from interpreter.remote import RemoteInterpreter
from interpreter.server import create_app

STORED = ('Tips:<promise topic="a" tokens="6"/><async> one two</async><promise topic="b" tokens="6"/>'
          "<async> three</async><sync/> done")


@pytest.fixture(scope="module", params=["plain", "tag-tokens"])
def served(request):
    """The project's server over a model that writes STORED, with tags as text or as added tokens."""
    tok = bpe_tokenizer() if request.param == "plain" else tag_token_tokenizer()
    engine = Engine(memorize(tiny_model("llama", len(tok)), tok, "List", STORED, steps=120), tok)
    app = create_app(engine, "tiny", defaults=Options(max_new_tokens=64))
    with serving(app) as (url, _):
        # the expected answers come from another engine over the same model: the app's thread owns its own
        yield Engine(engine.model, tok), url + "/v1", app


def test_remote_backend_decodes_the_same_structure_as_the_engine(served):
    engine, url, app = served
    local = engine.generate("List")
    assert local.stored == STORED  # the model really writes tags
    raw_prompt = engine.tokenizer.decode(prompt_ids(engine.tokenizer, "List"))
    before = app.state.stats["requests"]
    remote = RemoteInterpreter(url, "tiny", max_tokens=64, max_thread_tokens=32).generate(raw_prompt)
    ours, theirs = parse(local.stored), parse(remote.stored)  # the remote's stored form is valid Pasta-Lang
    assert remote.text == theirs.stripped
    assert theirs.blocks[0].promise.topic == ours.blocks[0].promise.topic
    assert theirs.blocks[0].text == ours.blocks[0].text  # a block sees what it sees in the engine
    if engine.tokenizer.get_vocab().get("<async>") is None:
        # tags as text: this tiny model also writes the rest as in the engine. With tag tokens each tag is one
        # token, so main's consecutive positions (the remote cannot jump over a promise's tokens) move it further
        # from where it was trained, and it writes on differently after the first promise
        assert [b.promise.topic for b in theirs.blocks] == [b.promise.topic for b in ours.blocks]
        assert len(theirs.syncs) == len(ours.syncs) and remote.threads == 2
        assert remote.requests == app.state.stats["requests"] - before == 4  # main, 2 blocks, main after the sync



@pytest.mark.parametrize("served", ["plain"], indirect=True)
def test_remote_backend_sends_the_repetition_penalty(served):
    engine, url, _ = served
    raw_prompt = engine.tokenizer.decode(prompt_ids(engine.tokenizer, "List"))
    opts = Options(max_new_tokens=24, repetition_penalty=3.0)
    remote = RemoteInterpreter(url, "tiny").generate(raw_prompt, opts, mode="sequential")
    penalized = engine.generate("List", "sequential", opts).text
    assert remote.text == penalized != engine.generate("List", "sequential", Options(max_new_tokens=24)).text


# -- from the command line: `generate|serve --backend openai`, the project's server standing in for vLLM ------

def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port  # nothing listens there now


@pytest.fixture
def tokenizer_dir(served, tmp_path):
    engine, _, _ = served
    engine.tokenizer.save_pretrained(tmp_path / "tok")
    return str(tmp_path / "tok")


@pytest.mark.parametrize("served", ["plain"], indirect=True)
def test_generate_command_runs_pasta_over_a_serving_engine(served, tokenizer_dir):
    engine, url, _ = served
    out = subprocess.run([sys.executable, "-m", "interpreter", "generate", "--backend", "openai", "--base_url", url,
                          "--tokenizer", tokenizer_dir, "--prompt", "List", "--max-new-tokens", "64",
                          "--max_thread_tokens", "32", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    doc = parse(result["stored"])  # a valid stored form
    assert result["text"] == doc.stripped and result["mode"] == "pasta"
    assert [b.promise.topic for b in doc.blocks] == [b.promise.topic for b in parse(STORED).blocks]
    assert result["threads"] == 2 and result["requests"] == 4  # --model left out: the engine's only model


def test_generate_command_says_in_one_line_when_the_engine_is_unreachable():
    url = f"http://127.0.0.1:{free_port()}/v1"
    out = subprocess.run([sys.executable, "-m", "interpreter", "generate", "--backend", "openai", "--base-url", url,
                          "--prompt", "Hi"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"error: cannot reach the serving engine at {url}: ")
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--backend", "openai"], "--backend openai needs --base-url"),
    (["--base_url", "http://x/v1"], "--base-url: only with --backend openai"),
    (["--backend", "openai", "--base_url", "http://x/v1", "--dtype", "float16", "--stop-loops"],
     "--dtype, --stop-loops: for the local engine only"),
])
def test_backend_flags_are_checked_before_anything_loads(capsys, argv, message):
    from interpreter.cli import main

    assert main(["generate", "--prompt", "x", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message) and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("served", ["plain"], indirect=True)
def test_wrong_model_or_key_variable_is_one_line(served, capsys, monkeypatch):
    from interpreter.cli import main

    _, url, _ = served
    assert main(["generate", "--backend", "openai", "--base_url", url, "--model", "nope", "--prompt", "x"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: the serving engine at {url} does not serve 'nope' "
                                               "(it serves: tiny)")
    monkeypatch.delenv("PASTA_TEST_NO_KEY", raising=False)
    assert main(["serve", "--backend", "openai", "--base_url", url, "--api_key_env", "PASTA_TEST_NO_KEY"]) == 2
    assert "PASTA_TEST_NO_KEY" in capsys.readouterr().err


@pytest.mark.parametrize("served", ["plain"], indirect=True)
def test_serve_command_answers_through_a_serving_engine(served, tokenizer_dir, monkeypatch):
    """`serve --backend openai`: the server decodes through RemoteBackend; one chat request goes through it."""
    import interpreter.server
    from interpreter.cli import main

    _, url, engine_app = served
    replies = []

    def serve(backend, name, host, port, mode, api_key, defaults, **limits):  # in place of uvicorn.run
        app = interpreter.server.create_app(backend, name, mode, api_key, defaults, **limits)
        with serving(app) as (front, _):
            replies.append(httpx.post(front + "/v1/chat/completions", timeout=60, json={
                "model": name, "messages": [{"role": "user", "content": "List"}], "max_tokens": 64}))
            replies.append(httpx.get(front + "/health").json())

    monkeypatch.setattr(interpreter.server, "serve", serve)
    before = engine_app.state.stats["requests"]
    assert main(["serve", "--backend", "openai", "--base_url", url, "--tokenizer", tokenizer_dir,
                 "--max_thread_tokens", "32"]) == 0
    reply, health = replies
    assert reply.status_code == 200, reply.text
    body = reply.json()
    doc = parse(body["pasta"]["stored"])
    assert body["model"] == "tiny" and body["choices"][0]["message"]["content"] == doc.stripped
    assert [b.promise.topic for b in doc.blocks] == [b.promise.topic for b in parse(STORED).blocks]
    assert body["usage"]["threads"] == 2 and body["usage"]["completion_tokens"] > 0
    assert engine_app.state.stats["requests"] - before == 4  # main, 2 blocks, main after the sync
    assert health["running"] == 0 and health["waiting"] == 0 and health["requests"] == 1
