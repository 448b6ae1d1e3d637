"""Pasta-Lang: the language (parser, layout, costs) and the asynchronous decoding engine."""

from .async_engine import AsyncEngine, Overloaded
from .cost import Costs, block_lengths, measure
from .engine import Engine
from .layout import IGNORE, MAIN, PROMPT, Layout, ThreadLayout, build_layout, encode, pieces, prompt_ids, turn_end_id
from .models import DTYPES, EMBEDDED_MODEL, ModelNotFound, load_model, load_tokenizer
from .options import Options, Result
from .parser import (
    Document,
    PastaSyntaxError,
    StreamParser,
    make_block,
    make_document,
    make_sync,
    parse,
    render,
    strip,
    validate,
)
from .repetition import LOOPING, cross_block_repetition, repetition
from .sampling import Script
from .tag_tokens import TAG_PIECES, add_tag_tokens, has_tag_tokens, tag_cost
from .tags import CLOSE_TAG, OPEN_TAG, SYNC_TAG, check_topic, promise_tag

__all__ = [
    "Engine", "AsyncEngine", "Overloaded", "Options", "Result", "Script", "encode", "prompt_ids", "turn_end_id",
    "Costs", "measure", "block_lengths", "IGNORE", "MAIN", "PROMPT", "Layout", "ThreadLayout", "build_layout", "pieces",
    "DTYPES", "EMBEDDED_MODEL", "ModelNotFound", "load_model", "load_tokenizer", "Document", "PastaSyntaxError",
    "StreamParser", "parse", "render", "make_document", "make_block", "make_sync", "strip", "validate", "LOOPING",
    "repetition", "cross_block_repetition",
    "TAG_PIECES", "add_tag_tokens", "has_tag_tokens", "tag_cost", "check_topic", "promise_tag", "OPEN_TAG",
    "CLOSE_TAG", "SYNC_TAG",
]
