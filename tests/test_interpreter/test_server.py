"""The OpenAI-compatible server, driven by the official openai client over loopback."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serving import serving
from tiny import bpe_tokenizer, tiny_model

from interpreter import Engine, Options
from interpreter.server import create_app

KEY = "sk-test"


@pytest.fixture(scope="module")
def server():
    tok = bpe_tokenizer()
    engine = Engine(tiny_model("llama", len(tok)), tok)
    app = create_app(engine, "tiny-pasta", api_key=KEY, defaults=Options(max_new_tokens=24))
    with serving(app) as (url, _):
        # answers to compare with come from another engine over the same model: the app's thread owns its own
        yield {"url": url, "engine": Engine(engine.model, tok), "app": app}


def client(server, key=KEY):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=key, max_retries=0, timeout=60)


def test_chat_completion_and_usage(server):
    r = client(server).chat.completions.create(model="tiny-pasta", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=10)
    expected = server["engine"].generate("Hi", options=Options(max_new_tokens=10))
    assert r.choices[0].message.content == expected.text
    assert r.usage.completion_tokens == sum(expected.thread_tokens)
    assert r.model_extra["pasta"]["stored"] == expected.stored
    assert r.usage.model_extra["parallel_steps"] == expected.steps and "threads" in r.usage.model_extra


def test_streaming_chat_adds_up(server):
    stream = client(server).chat.completions.create(model="tiny-pasta", messages=[{"role": "user", "content": "Hi"}],
                                                    max_tokens=10, stream=True,
                                                    stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == server["engine"].generate("Hi", options=Options(max_new_tokens=10)).text
    assert chunks[-1].usage is not None and chunks[-1].choices == []  # as OpenAI: usage in a chunk of its own
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")


def test_completions_models_and_health(server):
    c = client(server)
    r = c.completions.create(model="tiny-pasta", prompt="Once upon", max_tokens=5,
                             extra_body={"mode": "sequential"})
    assert isinstance(r.choices[0].text, str) and r.usage.completion_tokens <= 5
    assert [m.id for m in c.models.list()] == ["tiny-pasta"]
    assert httpx.get(server["url"] + "/health").json()["status"] == "ok"



def test_repetition_penalty_is_taken_as_vllm_takes_it(server):
    r = client(server).chat.completions.create(model="tiny-pasta", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=16, extra_body={"repetition_penalty": 2.0})
    expected = server["engine"].generate("Hi", options=Options(max_new_tokens=16, repetition_penalty=2.0))
    assert r.choices[0].message.content == expected.text
    assert expected.text != server["engine"].generate("Hi", options=Options(max_new_tokens=16)).text


@pytest.mark.parametrize("kwargs, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 5}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 17}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
])
def test_bad_requests_get_openai_style_400(server, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(model="tiny-pasta", **kwargs)
    assert info.value.body["param"] == param and info.value.body["message"]


def test_unknown_model_and_wrong_key(server):
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()


def test_concurrent_requests_decode_together_and_answer_as_alone(server):
    prompts = ["a", "tips please", "b c d", "a longer question about many things", "e"] * 2
    steps_before = server["app"].state.core.steps
    with ThreadPoolExecutor(len(prompts)) as pool:
        replies = list(pool.map(lambda p: client(server).chat.completions.create(
            model="tiny-pasta", messages=[{"role": "user", "content": p}], max_tokens=12), prompts))
    for p, r in zip(prompts, replies):
        assert r.choices[0].message.content == server["engine"].generate(p, options=Options(max_new_tokens=12)).text
    assert server["app"].state.core.steps - steps_before < 12 * len(prompts) / 2  # they shared forward passes


def test_n_choices_and_their_stream(server):
    kwargs = dict(model="tiny-pasta", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, n=3,
                  temperature=1.0, seed=5)
    r = client(server).chat.completions.create(**kwargs)
    assert [c.index for c in r.choices] == [0, 1, 2]
    expected = [server["engine"].generate("Hi", options=Options(max_new_tokens=8, temperature=1.0, seed=5 + i)).text
                for i in range(3)]
    assert [c.message.content for c in r.choices] == expected
    texts = ["", "", ""]
    for chunk in client(server).chat.completions.create(**kwargs, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == expected


def test_client_that_disconnects_frees_its_work(server):
    stats = server["app"].state.stats
    before = stats["cancelled"]
    with httpx.stream("POST", server["url"] + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 2000, "stream": True,
                            "mode": "sequential"}, timeout=30) as response:
        for _ in response.iter_lines():
            break  # read one line, then hang up
    deadline = time.time() + 30
    while stats["cancelled"] == before and time.time() < deadline:
        time.sleep(0.1)
    assert stats["cancelled"] == before + 1
    # the turn is free again: a new request is served at once
    r = client(server).chat.completions.create(model="tiny-pasta", messages=[{"role": "user", "content": "y"}],
                                               max_tokens=3)
    assert r.choices[0].finish_reason in ("stop", "length")
