"""The serving-engine backend: Pasta-Lang over /v1/completions, against the project's own server."""


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
