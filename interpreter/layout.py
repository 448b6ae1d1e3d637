"""Threads, position ids and visibility: the single source of masks.

`ThreadLayout` assigns each token a position and the set of cache slots it may attend to
as tokens enter one shared KV cache, thread by thread. The engine feeds it tokens in
arrival order while decoding; `build_layout` feeds it a stored sequence in stored order
for training. Both therefore agree by construction with PASTA-LANG.md's rules:

- main tokens count up by one; the first main token after a promise jumps over the N
  positions the promise reserves; a block starts right after its promise;
- a block sees what its promise saw plus its own tokens; main sees a block only after a
  sync (the sync's own tokens do not), and a sync moves main past every synced block.

Visibility is kept as Python int bitsets over cache slots: forking is a copy, a sync an
OR, and a mask row is produced only for each new token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .parser import Block, Document, MainText, Sync, parse

MAIN = 0
PROMPT = -1
IGNORE = -100


class SlotCounter:
    """Cache slots in arrival order. Layouts that share one counter share one cache: their bitsets
    index the same slots, so answers decoded together (`Engine.generate_many`) need no remapping."""

    def __init__(self) -> None:
        self.count = 0

    def take(self) -> int:
        self.count += 1
        return self.count - 1

    def skip_to(self, count: int) -> None:
        """Slots up to `count` are taken by others (padding in a batch row): the next one is `count`."""
        self.count = count


class ThreadLayout:
    """Positions and visibility of tokens entering one shared KV cache. Thread 0 is main."""

    def __init__(self, counter: SlotCounter | None = None) -> None:
        self.counter = counter or SlotCounter()
        self.next_pos = {MAIN: 0}
        self.vis = {MAIN: 0}  # bitset of slots each thread sees
        self.own = {MAIN: 0}  # bitset of slots each thread wrote
        self.unsynced: list[int] = []  # blocks forked since the last sync

    def append(self, thread: int) -> tuple[int, int, int]:
        """Adds one token of `thread`; returns (slot, position, visibility bitset incl. itself)."""
        slot, pos = self.counter.take(), self.next_pos[thread]
        self.next_pos[thread] = pos + 1
        bit = 1 << slot
        self.vis[thread] |= bit
        self.own[thread] |= bit
        return slot, pos, self.vis[thread]

    @property
    def slots(self) -> int:
        """The cache's length: every slot handed out, by this layout or one sharing its counter."""
        return self.counter.count

    def see_prompt(self, n: int) -> None:
        """Main starts after a prompt of `n` tokens already in the first slots of the shared cache."""
        self.vis[MAIN] |= (1 << n) - 1
        self.next_pos[MAIN] = max(self.next_pos[MAIN], n)

    def fork(self, tokens: int) -> int:
        """Forks a block for a promise whose last token main appended just now; returns its thread id."""
        thread = len(self.next_pos)
        base = self.next_pos[MAIN]
        self.next_pos[thread] = base
        self.vis[thread] = self.vis[MAIN]
        self.own[thread] = 0
        self.next_pos[MAIN] = base + tokens
        self.unsynced.append(thread)
        return thread

    def sync(self) -> list[int]:
        """Main now sees every block forked so far (call once they have ended); returns them."""
        for t in self.unsynced:
            self.merge(t)
        synced, self.unsynced = self.unsynced, []
        return synced

    def shift(self, k: int) -> None:
        """Every slot moves by `k` (> 0: padding went in front of them; < 0: slots in front were dropped)."""
        move = (lambda b: b << k) if k >= 0 else (lambda b: b >> -k)
        self.vis = {t: move(b) for t, b in self.vis.items()}
        self.own = {t: move(b) for t, b in self.own.items()}
        self.counter.count += k

    @property
    def first_slot(self) -> int:
        """The first slot main sees (its prompt's first token); -1 before it sees any."""
        v = self.vis[MAIN]
        return (v & -v).bit_length() - 1

    # For decoders that split by other rules than Pasta-Lang's (the pattern baseline):
    def branch(self, vis: int, position: int) -> int:
        """A thread that sees the slots in `vis` and starts at `position`."""
        thread = len(self.next_pos)
        self.next_pos[thread], self.vis[thread], self.own[thread] = position, vis, 0
        return thread

    def merge(self, thread: int) -> None:
        """Main sees everything `thread` wrote and moves past it."""
        self.vis[MAIN] |= self.own[thread]
        self.next_pos[MAIN] = max(self.next_pos[MAIN], self.next_pos[thread])


def bits_to_rows(bitsets: list[int], width: int) -> np.ndarray:
    """Bitsets to a bool matrix (rows × width), bit j of row i → [i, j]."""
    nbytes = (width + 7) // 8
    raw = b"".join(b.to_bytes(nbytes, "little") for b in bitsets)
    flat = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    return flat.reshape(len(bitsets), nbytes * 8)[:, :width].astype(bool)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def prompt_ids(tokenizer, prompt: str | list[dict] | list[int]) -> list[int]:
    """Token ids of a prompt: ids as given, or messages (a string is one user message) through the
    chat template with the generation prompt, when the tokenizer has a template."""
    if isinstance(prompt, list) and (not prompt or isinstance(prompt[0], int)):
        return list(prompt)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(out["input_ids"])
    return encode(tokenizer, "\n".join(m["content"] for m in messages))


def turn_end_id(tokenizer) -> int:
    """The token that ends an assistant turn in the chat template (<|im_end|>, <end_of_turn>, ...),
    else the tokenizer's eos: what training appends and what decoding stops at."""
    sentinel = "§PASTA§"
    if getattr(tokenizer, "chat_template", None):
        chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}]
        text = tokenizer.apply_chat_template(chat, tokenize=False)
        after = text[text.find(sentinel) + len(sentinel):] if sentinel in text else ""
        ids = encode(tokenizer, after)
        special = set(tokenizer.all_special_ids)
        for token in ids:
            if token in special or tokenizer.convert_ids_to_tokens(token) in tokenizer.get_added_vocab():
                return token
    return tokenizer.eos_token_id


@dataclass(frozen=True)
class Piece:
    """A run of a stored sequence that belongs to one thread and is tokenized on its own."""

    kind: str  # "text", "promise", "open", "close", "sync"
    thread: int  # 0 main, k for the k-th block
    text: str
    tokens: int = 0  # a promise's N


def pieces(doc: Document) -> list[Piece]:
    """Cuts a stored sequence into thread pieces; tags are tokenized apart from text."""
    out: list[Piece] = []
    block = 0
    for seg in doc.segments:
        if isinstance(seg, MainText):
            out.append(Piece("text", MAIN, seg.text))
        elif isinstance(seg, Sync):
            out.append(Piece("sync", MAIN, seg.raw))
        elif isinstance(seg, Block):
            block += 1
            out.append(Piece("promise", MAIN, seg.promise.raw, seg.promise.tokens))
            out.append(Piece("open", block, seg.open.raw))
            if seg.text:
                out.append(Piece("text", block, seg.text))
            out.append(Piece("close", block, seg.close.raw))
    return out


@dataclass
class Layout:
    """A stored sequence (after its prompt) laid out for one training forward pass."""

    input_ids: list[int]
    thread: list[int]  # PROMPT, MAIN or the block number
    position_ids: list[int]
    visibility: list[int]  # bitset over earlier tokens (stored order), self included
    targets: list[int]  # the next token of the same thread, IGNORE where there is no loss
    prompt_len: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def visible(self, i: int, j: int) -> bool:
        return bool(self.visibility[i] >> j & 1)

    def bool_mask(self) -> np.ndarray:
        return bits_to_rows(self.visibility, len(self))

    def to_dict(self) -> dict:
        """JSON-safe (visibility bitsets as hex strings)."""
        return {"input_ids": self.input_ids, "thread": self.thread, "position_ids": self.position_ids,
                "visibility": [format(v, "x") for v in self.visibility], "targets": self.targets,
                "prompt_len": self.prompt_len}

    @classmethod
    def from_dict(cls, d: dict) -> Layout:
        return cls(d["input_ids"], d["thread"], d["position_ids"], [int(v, 16) for v in d["visibility"]],
                   d["targets"], d["prompt_len"])

    def additive_mask(self, dtype=None):
        """The L×L float mask (0 where visible, -inf elsewhere) that HF models take as 4D."""
        import torch

        dtype = dtype or torch.float32
        allowed = torch.from_numpy(self.bool_mask())
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)


class LayoutRecorder:
    """A decode as it happened, for training on it: every token a request fed, in arrival order, with the
    position and visibility a `ThreadLayout` of its own gives it (the engine's calls mirrored, over this
    request's tokens only), and as target the token its logits row drew. `Layout` of it scores exactly the
    tokens the model drew, not a re-tokenization of their text."""

    def __init__(self, prompt_ids: list[int]) -> None:
        self.lay = ThreadLayout()
        self.ids: list[int] = []
        self.thread: list[int] = []
        self.pos: list[int] = []
        self.vis: list[int] = []
        self.targets: list[int] = []
        self.prompt_len = len(prompt_ids)
        for token in prompt_ids:
            self.feed(token, MAIN, PROMPT)

    def feed(self, token: int, thread: int, label: int | None = None) -> int:
        """A token enters; returns its index."""
        _, p, v = self.lay.append(thread)
        self.ids.append(token)
        self.thread.append(thread if label is None else label)
        self.pos.append(p)
        self.vis.append(v)
        self.targets.append(IGNORE)
        return len(self.ids) - 1

    def drew(self, index: int, token: int) -> None:
        """The logits row of token `index` drew `token`."""
        self.targets[index] = token

    def fork(self, tokens: int) -> None:
        self.lay.fork(tokens)

    def sync(self) -> None:
        self.lay.sync()

    def layout(self) -> Layout:
        return Layout(list(self.ids), list(self.thread), list(self.pos), list(self.vis), list(self.targets),
                      self.prompt_len)


def build_layout(stored: str | Document, tokenizer, prompt_ids: list[int], end_id: int | None = None) -> Layout:
    """Lays out prompt + stored response (+ the end token) exactly as the engine will decode it.

    Loss: every response token is the target of the previous token of its own thread,
    except the `<async>` that opens a block, which the interpreter forces.
    """
    doc = parse(stored) if isinstance(stored, str) else stored
    rec = LayoutRecorder(prompt_ids)
    last = {MAIN: len(prompt_ids) - 1} if prompt_ids else {}  # thread -> index of its latest token

    def add(token: int, t: int, forced: bool = False) -> None:
        i = rec.feed(token, t)
        if t in last and not forced:
            rec.drew(last[t], token)  # a thread's next token is the target of its previous one
        last[t] = i

    for piece in pieces(doc):
        for token in encode(tokenizer, piece.text):
            add(token, piece.thread, forced=piece.kind == "open")
        if piece.kind == "promise":
            rec.fork(piece.tokens)
        elif piece.kind == "sync":
            rec.sync()
    if end_id is not None:
        add(end_id, MAIN)  # the end is an implicit sync: main's last token predicts it
    return rec.layout()
