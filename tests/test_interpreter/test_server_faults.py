"""The server's faults, one test each: disconnects behind the key, body limit, error shape, input checks,
unsupported fields, /health, the cancelled counter, and the CLI's serve/generate flags."""

import contextlib
import time

import httpx
import openai
import pytest
from serving import serving as serve_in_thread
from tiny import bpe_tokenizer, tiny_model

from interpreter import Engine, Options, cli
from interpreter.server import create_app

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "Hi"}]
X = [{"role": "user", "content": "x"}]  # the tiny model's answer to this runs past 2000 tokens


@contextlib.contextmanager
def serving(app):
    with serve_in_thread(app) as (url, _):
        yield url


@pytest.fixture(scope="module")
def engine():
    tok = bpe_tokenizer()
    return Engine(tiny_model("llama", len(tok)), tok)


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(engine, "tiny-pasta", api_key=KEY, defaults=Options(max_new_tokens=24))
    with serving(app) as url:
        yield {"url": url, "engine": engine, "app": app}


def alone(engine):
    """Another engine over the same model: an app's engine thread owns its engine."""
    return Engine(engine.model, engine.tokenizer)


def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def post(server, path, body, **kwargs):
    """POSTs raw bytes (JSON escapes such as a lone \\ud800 reach the server as written)."""
    headers = {**AUTH, "Content-Type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(server["url"] + path, content=body, headers=headers, timeout=30, **kwargs)


def assert_openai_error(response, status, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert error["param"] == param
    return error


def settle(server):
    """Waits until every earlier request has left the engine (a request only starts once they have)."""
    client(server).completions.create(model="tiny-pasta", prompt="a", max_tokens=1)


# 1 ------------------------------------------------------------------------------------------------------
def test_non_streaming_client_that_goes_away_cancels_its_decode(server):
    stats = server["app"].state.stats
    settle(server)
    before = stats["cancelled"]
    with pytest.raises(httpx.TimeoutException):  # 2000 tokens take several seconds here
        httpx.post(server["url"] + "/v1/chat/completions", headers=AUTH, timeout=1,
                   json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 2000, "mode": "sequential"})
    deadline = time.time() + 5
    while stats["cancelled"] == before and time.time() < deadline:
        time.sleep(0.05)
    assert stats["cancelled"] == before + 1
    started = time.time()
    r = client(server).chat.completions.create(model="tiny-pasta", messages=HI, max_tokens=3)
    assert r.choices[0].finish_reason in ("stop", "length") and time.time() - started < 3


# 2 ------------------------------------------------------------------------------------------------------
def test_body_over_the_limit_is_413(server, engine):
    big = b'{"prompt": "' + b"a" * (1 << 20) + b'"}'  # the default limit is 1 MiB
    assert_openai_error(post(server, "/v1/completions", big), 413)

    def chunked():  # no Content-Length: the bytes received are counted
        for i in range(0, len(big), 64 << 10):
            yield big[i:i + (64 << 10)]
    assert_openai_error(post(server, "/v1/completions", chunked()), 413)
    with serving(create_app(alone(engine), "tiny-pasta", max_body_bytes=100)) as url:
        small = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 1})
        assert small.status_code == 200
        assert_openai_error(httpx.post(url + "/v1/completions", json={"prompt": "a" * 100, "max_tokens": 1}), 413)


# 3 ------------------------------------------------------------------------------------------------------
def test_malformed_json_is_a_400(server):
    error = assert_openai_error(post(server, "/v1/chat/completions", b'{"messages": [}'), 400)
    assert "JSON" in error["message"] and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/nothing", 404), ("POST", "/nothing", 404),
                                                  ("GET", "/v1/chat/completions", 405)])
def test_unknown_route_and_wrong_method(server, method, path, status):
    assert_openai_error(httpx.request(method, server["url"] + path, headers=AUTH), status)


def test_validation_error_names_the_field_path(server):
    body = b'{"messages": [{"role": "user", "content": "x"}, {"role": "wizard", "content": "y"}]}'
    assert_openai_error(post(server, "/v1/chat/completions", body), 400, "messages.1.role")


def test_unhandled_exception_is_a_one_line_500(server, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("secret /home/me/model\n  File engine.py, line 3")
    monkeypatch.setattr(server["engine"], "prompt_ids", boom)
    r = post(server, "/v1/completions", b'{"prompt": "a", "max_tokens": 2}')
    error = assert_openai_error(r, 500)
    assert error["type"] == "server_error" and "\n" not in error["message"]
    assert "secret" not in r.text and "Traceback" not in r.text and "File" not in r.text


# 4 ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [2**63, -1])
def test_seed_out_of_range_is_400(server, seed):
    body = f'{{"prompt": "a", "max_tokens": 2, "temperature": 1, "seed": {seed}}}'.encode()
    assert_openai_error(post(server, "/v1/completions", body), 400, "seed")
    ok = f'{{"prompt": "a", "max_tokens": 2, "temperature": 1, "seed": {2**63 - 1}}}'.encode()
    assert post(server, "/v1/completions", ok).status_code == 200


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages.0.content"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
     "messages.0.content"),
    ("/v1/completions", b'{"prompt": "a\\ud800"}', "prompt"),
    ("/v1/completions", b'{"prompt": "a", "stop": "\\ud800"}', "stop"),
    ("/v1/completions", b'{"prompt": "a", "stop": ["ok", "\\udc00"]}', "stop"),
])
def test_lone_surrogate_is_400(server, path, body, param):
    error = assert_openai_error(post(server, path, body), 400, param)
    assert "surrogate" in error["message"]


# 5 ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("logprobs", True), ("top_logprobs", 2), ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "auto"), ("functions", [{"name": "f"}]), ("function_call", "auto"),
    ("response_format", {"type": "json_object"}), ("presence_penalty", 0.5), ("frequency_penalty", -1),
    ("logit_bias", {"42": 10}), ("echo", True), ("suffix", "end"), ("best_of", 3),
])
def test_unsupported_fields_are_refused_by_name(server, field, value):
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(model="tiny-pasta", messages=HI, max_tokens=2,
                                               extra_body={field: value})
    assert info.value.body["param"] == field and field in info.value.body["message"]


def test_default_values_and_unknown_fields_are_accepted(server):
    r = client(server).chat.completions.create(
        model="tiny-pasta", messages=HI, max_tokens=2, presence_penalty=0, frequency_penalty=0, logit_bias={},
        tool_choice="none", response_format={"type": "text"}, logprobs=False, user="u", metadata={"a": "b"},
        store=False, extra_body={"repetition_penalty": 1, "best_of": 1, "echo": False, "some_extension": 1})
    assert r.choices[0].finish_reason in ("stop", "length")


def test_top_k_is_honoured(server):
    def complete(temperature=1.5, **extra):
        return client(server).completions.create(model="tiny-pasta", prompt="Once upon", max_tokens=12,
                                                  temperature=temperature, seed=3, extra_body=extra).choices[0].text
    greedy = complete(temperature=0)
    assert complete() != greedy  # sampling at this temperature leaves the greedy path ...
    assert complete(top_k=1) == greedy  # ... unless only the best token may be drawn
    with pytest.raises(openai.BadRequestError) as info:
        complete(top_k=-1)
    assert info.value.body["param"] == "top_k"


# 6 ------------------------------------------------------------------------------------------------------
def test_health_does_not_show_a_local_model_path(engine, tmp_path):
    with serving(create_app(alone(engine), str(tmp_path / "secret-model"))) as url:
        health = httpx.get(url + "/health").json()
    assert str(tmp_path) not in str(health) and health["status"] == "ok"
    assert {"requests", "cancelled"} <= set(health)
    with serving(create_app(alone(engine), "tiny-pasta")) as url:
        assert httpx.get(url + "/health").json()["model"] == "tiny-pasta"


# 7 ------------------------------------------------------------------------------------------------------
def test_complete_streams_are_not_counted_as_cancelled(server):
    stats = server["app"].state.stats
    settle(server)
    before = stats["cancelled"]
    for _ in range(10):  # the miscount was a race: about one stream in three
        chunks = list(client(server).chat.completions.create(model="tiny-pasta", messages=HI, max_tokens=4,
                                                             stream=True))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    settle(server)
    assert stats["cancelled"] == before


# 8 and the serve command -------------------------------------------------------------------------------
@pytest.fixture
def fake_serve(monkeypatch):
    """Runs the CLI's generate/serve without a model: records what serve would have been given."""
    calls = []
    monkeypatch.setattr(cli, "_engine", lambda args: calls.append("engine") or object())
    monkeypatch.setattr("interpreter.server.serve", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.delenv("PASTA_API_KEY", raising=False)
    return calls


@pytest.mark.parametrize("command", [["generate", "--prompt", "hi"], ["serve"]])
def test_cli_refuses_zero_threads(fake_serve, capsys, command):
    assert cli.main([*command, "--max-threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: --max-threads must be at least 1 (use --mode sequential for no threads)"]
    assert fake_serve == []  # refused before loading a model


def test_cli_serve_takes_the_key_from_the_environment_and_names_a_folder_by_its_basename(
        fake_serve, monkeypatch, tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    monkeypatch.setenv("PASTA_API_KEY", "from-env")
    assert cli.main(["serve", "--model", str(folder), "--max-body-bytes", "4096"]) == 0
    args, kwargs = fake_serve[-1]
    given = dict(zip(["engine", "model_name", "host", "port", "mode", "api_key", "defaults"], args)) | kwargs
    assert given["model_name"] == "my-model" and given["api_key"] == "from-env"
    assert given["max_body_bytes"] == 4096
    assert cli.main(["serve", "--model", str(folder), "--api-key", "flag", "--served-name", "x"]) == 0
    args, kwargs = fake_serve[-1]
    given = dict(zip(["engine", "model_name", "host", "port", "mode", "api_key", "defaults"], args)) | kwargs
    assert given["api_key"] == "flag" and given["model_name"] == "x"
    assert given["max_body_bytes"] == 1 << 20


# limits: queue, context, tokens, deadline, shutdown ----------------------------------------------------
def test_a_full_queue_answers_503(engine):
    app = create_app(Engine(engine.model, engine.tokenizer, max_batch=1), "tiny-pasta", max_queue=1)
    long = {"messages": X, "max_tokens": 1500, "mode": "sequential"}
    with serving(app) as url, httpx.Client(timeout=60) as http:
        with http.stream("POST", url + "/v1/chat/completions", json={**long, "stream": True}) as first:
            lines = first.iter_lines()  # kept: a dropped iterator closes the response, which cancels it
            next(lines)
            while app.state.core.running == 0:  # decoding: the batch (of one) is full
                time.sleep(0.01)
            with http.stream("POST", url + "/v1/chat/completions", json={**long, "stream": True}) as second:
                assert second.status_code == 200  # waits in the queue (of one)
                third = httpx.post(url + "/v1/chat/completions", json=long, timeout=60)
                error = assert_openai_error(third, 503)
                assert error["code"] == "overloaded" and third.headers["retry-after"]
        assert app.state.stats["rejected"] == 1


def test_prompt_and_max_tokens_beyond_the_context_are_400(server):
    context = server["engine"].context_length  # 2048 for the tiny model
    error = assert_openai_error(post(server, "/v1/completions", b'{"prompt": "a b c", "max_tokens": 2047}'), 400,
                                "prompt")
    assert error["code"] == "context_length_exceeded" and str(context) in error["message"]
    huge = ('{"prompt": "' + "word " * 3000 + '", "max_tokens": 1}').encode()
    assert assert_openai_error(post(server, "/v1/completions", huge), 400, "prompt")["code"] == \
        "context_length_exceeded"
    assert_openai_error(post(server, "/v1/completions", b'{"prompt": "a", "max_tokens": 100000}'), 400, "max_tokens")


def test_a_request_past_its_deadline_ends_with_what_it_has(engine):
    app = create_app(alone(engine), "tiny-pasta", timeout=0.5)
    with serving(app) as url:
        r = httpx.post(url + "/v1/chat/completions", timeout=60,
                       json={"messages": X, "max_tokens": 2000, "mode": "sequential"}).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["pasta"]["finish_reason"] == "timeout"
    assert 0 < r["usage"]["completion_tokens"] < 2000 and app.state.stats["timeouts"] == 1


def test_shutdown_does_not_wait_for_a_decode(engine):
    app = create_app(alone(engine), "tiny-pasta")
    body = {"messages": X, "max_tokens": 2000, "mode": "sequential", "stream": True}
    with serve_in_thread(app, timeout_graceful_shutdown=5) as (url, srv), \
            httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        next(lines)
        while app.state.core.running == 0:
            time.sleep(0.01)
        started = time.time()
        srv.should_exit = True  # what SIGTERM does
        srv.thread.join(15)
        assert not srv.thread.is_alive() and time.time() - started < 8
    assert app.state.core.running == 0
