"""Tag tokenization: tags as plain text (works with any tokenizer) or as added tokens.

Plain text costs about 18 tokens per promise with SmolLM2's tokenizer (promise tag,
`<async>`, `</async>`); with the pieces below added as tokens it costs 4 and the topic's tokens.
Every token of a tag sits on the critical path, so the cheap form raises the speedup cap.

A promise's close with its length is one piece for each multiple of 10 up to 300 (the paper's best
position setting writes lengths rounded to tens): the student picks its estimate in one step, where
`" tokens="`, two digits and `"/>` take four. Other lengths are written with the general pieces.
"""

from __future__ import annotations

from .layout import encode
from .tags import CLOSE_TAG, OPEN_TAG, PROMISE_OPENING, SYNC_TAG, promise_tag

LENGTH_PIECES = tuple(f'" tokens="{n}"/>' for n in range(10, 301, 10))
TAG_PIECES = (PROMISE_OPENING, '" tokens="', '"/>', OPEN_TAG, CLOSE_TAG, SYNC_TAG, *LENGTH_PIECES)


def has_tag_tokens(tokenizer) -> bool:
    vocab = tokenizer.get_vocab()
    return all(p in vocab for p in TAG_PIECES)


def add_tag_tokens(tokenizer, model=None) -> int:
    """Adds the tag pieces as tokens; resizes `model` and starts each new embedding at the
    mean of the embeddings of the piece's plain-text tokens (the model already reads those).
    Returns how many tokens were added."""
    from tokenizers import AddedToken

    new_pieces = [p for p in TAG_PIECES if p not in tokenizer.get_vocab()]
    plain = {p: encode(tokenizer, p) for p in new_pieces}
    added = tokenizer.add_tokens([AddedToken(p, normalized=False, lstrip=False, rstrip=False) for p in new_pieces])
    if model is not None and added:
        import torch

        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        emb = model.get_input_embeddings().weight
        out = model.get_output_embeddings()
        with torch.no_grad():
            for piece, ids in plain.items():
                new = tokenizer.convert_tokens_to_ids(piece)
                emb[new] = emb[ids].mean(0)
                if out is not None and out.weight is not emb:
                    out.weight[new] = out.weight[ids].mean(0)
    return added


def tag_cost(tokenizer, topic: str = "sleep", tokens: int = 20) -> dict:
    """Tokens one promise with its block's tags costs, and one sync."""
    parts = {"promise": promise_tag(topic, tokens), "open": OPEN_TAG, "close": CLOSE_TAG, "sync": SYNC_TAG}
    cost = {name: len(encode(tokenizer, text)) for name, text in parts.items()}
    cost["per_promise"] = cost["promise"] + cost["open"] + cost["close"]
    return cost
