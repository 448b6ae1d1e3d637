"""`python -m interpreter …`: validate and strip stored sequences; generate, serve and benchmark."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .models import DTYPE_HELP, DTYPES, EMBEDDED_MODEL, ModelNotFound
from .parser import PastaSyntaxError, parse
from .remote import RemoteError


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except OSError as err:
        raise OSError(f"cannot read {path}: {err.strerror or err}") from None


def _validate(args) -> int:
    doc = parse(_read(args.file))
    stats = doc.stats()
    if args.tokenizer:
        from .cost import measure
        from .models import load_tokenizer

        stats.update(measure(doc, load_tokenizer(args.tokenizer)).as_dict())
    print(json.dumps(stats))
    return 0


def _strip(args) -> int:
    sys.stdout.write(parse(_read(args.file)).stripped)
    return 0


def _engine(args):
    from .engine import Engine
    from .models import load_model

    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    return Engine(model, tokenizer, max_batch=getattr(args, "max_batch", 16))


def _options(args):
    from .options import Options

    return Options(max_new_tokens=args.max_new_tokens, max_thread_tokens=args.max_thread_tokens,
                   max_threads=args.max_threads, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                   seed=args.seed, stop=tuple(args.stop or ()), stop_loops=args.stop_loops,
                   repetition_penalty=args.repetition_penalty)


def _remote(args, tokenizer: bool, timeout: float = 120.0):
    """--backend openai: (RemoteInterpreter, the tokenizer or None, the engine's context or None). Asks the engine
    which models it serves first, so that a wrong URL, key or model is one clear line before anything loads."""
    from .models import load_tokenizer
    from .remote import RemoteInterpreter, served_models

    api_key = "none"  # local engines (vLLM, SGLang) need none; nobody's key is sent unless asked
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env, "")
        if not api_key:
            raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    served = served_models(args.base_url, api_key)
    ids = [m.get("id") for m in served]
    model = args.model or (ids[0] if ids else None)
    if model not in ids:
        raise RemoteError(f"the serving engine at {args.base_url} does not serve {model!r} "
                          f"(it serves: {', '.join(map(str, ids)) or 'nothing'})")
    tok = None
    if tokenizer:
        try:
            tok = load_tokenizer(args.tokenizer or model)
        except ModelNotFound as err:
            raw = ", or --raw-prompt sends the prompt as it is" if hasattr(args, "raw_prompt") else ""
            raise ModelNotFound(f"{err}; --tokenizer names the served model's tokenizer (its chat template builds "
                                f"the prompt){raw}") from None
    context = next(m for m in served if m.get("id") == model).get("max_model_len")  # vLLM says it
    return RemoteInterpreter(args.base_url, model, api_key, timeout=timeout), tok, context


def _generate_remote(args) -> int:
    from .remote import prompt_text

    remote, tok, _ = _remote(args, tokenizer=not args.raw_prompt)
    prompt = args.prompt if args.raw_prompt else prompt_text(tok, args.prompt)
    result = remote.generate(prompt, _options(args), args.mode)
    if args.json:
        print(json.dumps(result.summary(), ensure_ascii=False))
    else:
        sys.stdout.write(result.text + "\n")
        print(f"[{result.mode} over {args.base_url}: {result.threads} threads, {result.requests} requests, "
              f"{result.wall_time:.2f} s{'; repaired: ' + '; '.join(result.repairs) if result.repairs else ''}]",
              file=sys.stderr)
    return 0


def _generate(args) -> int:
    if args.backend == "openai":
        return _generate_remote(args)
    engine = _engine(args)
    stream = engine.stream(args.prompt, args.mode, _options(args), watch=args.show_threads)
    if args.show_threads and sys.stdout.isatty():
        from .live import show_threads

        result = show_threads(stream)
    else:
        result = None
        for update in stream:
            if "delta" in update and not args.json:
                sys.stdout.write(update["delta"])
                sys.stdout.flush()
            result = update.get("result", result)
    if args.json:
        print(json.dumps(result.summary(), ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        print(f"[{result.mode}: {sum(result.thread_tokens)} tokens in {result.steps} steps, {result.threads} threads, "
              f"{result.wall_time:.2f} s{'; repaired: ' + '; '.join(result.repairs) if result.repairs else ''}]",
              file=sys.stderr)
    return 0


def _serve(args) -> int:
    from .server import LOOPBACK, serve

    api_key = args.api_key or os.environ.get("PASTA_API_KEY") or None
    if args.host not in LOOPBACK and not api_key:  # say so before loading anything
        raise SystemExit(f"refusing to serve on {args.host} without --api-key: anyone who can reach it could use it")
    if args.backend == "openai":
        from .remote import RemoteBackend

        remote, tok, context = _remote(args, tokenizer=True, timeout=args.timeout)
        engine = RemoteBackend(remote, tok, context, max_batch=args.max_batch, max_queue=args.max_queue)
        model = remote.model
    else:
        engine, model = _engine(args), args.model
    # a local folder is served under its name: its path would tell clients about this machine
    name = args.served_name or (os.path.basename(os.path.normpath(model))
                                if os.path.exists(model) or os.path.isabs(model) else model)
    serve(engine, name, args.host, args.port, args.mode, api_key, _options(args),
          max_body_bytes=args.max_body_bytes, max_queue=args.max_queue, max_tokens_limit=args.max_tokens_limit,
          timeout=args.timeout)
    return 0


def _bench(args) -> int:
    from . import bench

    rows = bench.load_sequences(args.data, args.limit)
    engine = _engine(args)
    report = bench.run(engine, rows, repeats=args.repeats, warmup=args.warmup)
    report.update(model=args.model, dtype=args.dtype or "default dtype", data=args.data)
    print(json.dumps(report["summary"], indent=1))
    print(json.dumps(report["generate"]))
    print("per step (ms):", json.dumps(report["per_step_ms"]))
    if args.out:
        bench.write(report, args.out, f"Engine benchmark: {args.model} on {args.data}")
        print(f"wrote {args.out}.md and .json", file=sys.stderr)
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help=f"embedded alias, local folder or HF id (default {EMBEDDED_MODEL}); with "
                   "--backend openai the served model's id (default: the first the engine lists)")
    p.add_argument("--dtype", choices=DTYPES, help=DTYPE_HELP)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["local", "openai"], default="local", help="local: decode in this process "
                   "(default); openai: PASTA over an OpenAI-compatible serving engine with prefix caching (vLLM, "
                   "SGLang) at --base-url, through interpreter.remote")
    p.add_argument("--base-url", help="--backend openai: the engine's API root, e.g. http://127.0.0.1:8001/v1")
    p.add_argument("--api-key-env", help="--backend openai: the environment variable holding the engine's key "
                   "(default: no key is sent)")
    p.add_argument("--tokenizer", help="--backend openai: the tokenizer whose chat template builds the prompt "
                   "(default: --model; a local folder, HF id or embedded alias)")


LOCAL_ONLY = ("dtype", "device", "stop_loops", "show_threads")  # what only the in-process engine does
REMOTE_ONLY = ("base_url", "api_key_env", "tokenizer", "raw_prompt")


def _check_backend(args) -> str | None:
    """What is wrong with the backend flags (one line), or None; fills in the local default model."""
    backend = getattr(args, "backend", None)
    flag = lambda name: "--" + name.replace("_", "-")
    if backend == "openai":
        if not args.base_url:
            return "--backend openai needs --base-url (e.g. http://127.0.0.1:8001/v1)"
        given = [flag(n) for n in LOCAL_ONLY if getattr(args, n, None)]
        if given:
            return f"{', '.join(given)}: for the local engine only, not with --backend openai"
        return None
    if backend == "local":
        given = [flag(n) for n in REMOTE_ONLY if getattr(args, n, None)]
        if given:
            return f"{', '.join(given)}: only with --backend openai"
    if hasattr(args, "model") and args.model is None:
        args.model = EMBEDDED_MODEL
    return None


def _decoding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["pasta", "sequential"], default="pasta")
    p.add_argument("--max-new-tokens", type=int, default=512, help="all threads together")
    p.add_argument("--max-thread-tokens", type=int, default=256, help="one async thread")
    p.add_argument("--max-threads", type=int, default=8, help="async threads decoding at once")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int)
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="HF's and vLLM's (1 = off; 1.15 keeps a "
                   "135M model out of most loops): what a thread has seen is made less likely, tags and the end spared")
    p.add_argument("--stop", action="append", help="stop string for the main thread (repeatable)")
    p.add_argument("--stop-loops", action="store_true", help="end a thread whose text falls into a loop "
                   "(its last 48 words repeat themselves); small models loop under greedy decoding")


class _Parser(argparse.ArgumentParser):
    """Takes every --dashed-flag also as --underscored_flag, the spelling of the other stages' CLIs (TRL's)."""

    def add_argument(self, *names, **kwargs):
        extra = tuple("--" + n[2:].replace("-", "_") for n in names if n.startswith("--") and "-" in n[2:])
        return super().add_argument(*names, *extra, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m interpreter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a stored sequence; print its stats as one JSON line")
    p.add_argument("file", help="a file holding one stored sequence, or - for stdin")
    p.add_argument("--tokenizer", help="also report the cost measures under this model's tokenizer "
                   f"(e.g. {EMBEDDED_MODEL})")
    p.set_defaults(run=_validate)
    p = sub.add_parser("strip", help="print the stitched form (every tag removed)")
    p.add_argument("file", help="a file holding one stored sequence, or - for stdin")
    p.set_defaults(run=_strip)

    p = sub.add_parser("generate", help="answer one prompt (chat template applied)")
    _model_args(p)
    _backend_args(p)
    _decoding_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--raw-prompt", action="store_true", help="--backend openai: send --prompt as it is, without "
                   "the chat template (a base model, or a prompt already templated); no tokenizer is loaded")
    p.add_argument("--json", action="store_true", help="print one JSON object: text, stored form, tokens, steps ...")
    p.add_argument("--show-threads", action="store_true", help="in a terminal, show the threads growing live")
    p.set_defaults(run=_generate)

    p = sub.add_parser("serve", help="OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models)")
    _model_args(p)
    _backend_args(p)
    _decoding_args(p)
    p.add_argument("--host", default="127.0.0.1", help="anything but loopback needs --api-key")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/ routes (default: the "
                   "PASTA_API_KEY environment variable; the flag wins)")
    p.add_argument("--served-name", help="the model id clients use (default: --model; a local folder's name)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get a 413 "
                   "(default 1 MiB)")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoding together (default 16; --backend "
                   "openai: answers in flight at the engine)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a place; more get a 503 "
                   "(default 64)")
    p.add_argument("--max-tokens-limit", type=int, help="the largest max_tokens a request may ask for "
                   "(default: the model's context)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take before it ends with "
                   "what it has, finish_reason length (default 600)")
    p.set_defaults(run=_serve)

    p = sub.add_parser("bench", help="replay stored sequences sequentially and with PASTA; report speedups")
    _model_args(p)
    p.add_argument("--data", required=True, help="JSONL with 'annotated' (or 'stored') and 'messages'/'prompt'")
    p.add_argument("--limit", type=int, help="first N sequences only")
    p.add_argument("--repeats", type=int, default=3, help="best of N runs per sequence and mode")
    p.add_argument("--warmup", type=int, default=2, help="sequences replayed untimed first")
    p.add_argument("--out", help="write OUT.json and OUT.md (e.g. benchmarks/engine-smollm2-cpu)")
    p.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    wrong = _check_backend(args)
    if wrong:
        print(f"error: {wrong}", file=sys.stderr)
        return 2
    if getattr(args, "max_threads", 1) < 1:  # 0 would cut every answer at its first promise, silently
        print("error: --max-threads must be at least 1 (use --mode sequential for no threads)", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except PastaSyntaxError as err:
        print(f"{getattr(args, 'file', getattr(args, 'data', ''))}:{err}", file=sys.stderr)
        return 1
    except (ModelNotFound, RemoteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
