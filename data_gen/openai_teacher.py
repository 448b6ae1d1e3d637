"""The openai teacher: any OpenAI-compatible chat endpoint (OpenAI, vLLM, SGLang, this project's server).

Requests run concurrently (bounded), each with a timeout and retries with exponential backoff on
429, 5xx, timeouts, dropped connections and broken replies. Every reply is appended to a cache
keyed by a hash of (source record, teacher, prompt version) the moment it arrives, so a run
killed at any point and started again repeats no answered request and writes each record once.
Failed requests are not cached: the next run tries them again. A reply the filters reject is marked
so in the cache, and later runs ask again until the record has had `openai_reply_tries` replies.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import sys
from collections import Counter

from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.jsonl import JsonlCache, key_of
from pipeline.runfolder import slug

from . import prompt


class TeacherError(PipelineError, RuntimeError):
    """The endpoint cannot serve this run at all (unreachable, wrong key, unknown model)."""


class _BrokenReply(ValueError):
    pass


class OpenAITeacher:
    def __init__(self, cfg, cache_dir):
        self.cfg = cfg
        self.name = f"openai:{cfg.openai_model}"
        self.cache = JsonlCache(cache_dir / f"teacher-{slug(self.name)}.jsonl")
        self.tally: Counter = Counter()

    def key(self, record) -> str:
        c = self.cfg
        return key_of({"messages": record.messages, "answer": record.answer}, self.name, c.openai_temperature,
                      c.openai_max_tokens, prompt.version())

    def _ask(self, record) -> bool:
        entry = self.cache.get(self.key(record))
        return entry is None or (bool(entry.get("rejected")) and entry.get("tries", 1) < self.cfg.openai_reply_tries)

    def annotate_all(self, records) -> dict[str, str | None]:
        """Reply of the teacher per record id (None where every try failed)."""
        todo = [r for r in records if self._ask(r)]
        self.tally["cached"] = len(records) - len(todo)
        self.tally["asked_again"] = sum(self.key(r) in self.cache for r in todo)
        if todo:
            asyncio.run(self._run(todo))
            t = self.tally
            print(f"data_gen: {self.name}: {t['requests']} requests ({t['retries']} retries), {t['answered']} "
                  f"answered, {t['failed']} records failed, {t['prompt_tokens']} prompt and {t['completion_tokens']} "
                  f"completion tokens; {t['cached']} from the cache, {t['asked_again']} asked again after a "
                  "rejected reply", file=sys.stderr)
        out = {}
        for r in records:
            entry = self.cache.get(self.key(r))
            out[r.id] = entry["reply"] if entry else None
        return out

    def record_verdict(self, record, rule: str | None) -> None:
        """Marks the record's cached reply as rejected by filter `rule` (None: kept), so a later run asks again."""
        entry = self.cache.get(self.key(record))
        if entry is not None and entry.get("rejected") != rule:
            self.cache.update(**{**entry, "rejected": rule})

    def summary(self) -> dict:
        t = self.tally
        return {"teacher": self.name, "base_url": self.cfg.openai_base_url, "prompt_version": prompt.version(),
                "records_from_cache": t["cached"], "asked_again_after_rejection": t["asked_again"],
                "requests": t["requests"], "answered": t["answered"],
                "retries": t["retries"], "failed_records": t["failed"],
                "errors": {k[6:]: v for k, v in sorted(t.items()) if k.startswith("error:")},
                "prompt_tokens": t["prompt_tokens"], "completion_tokens": t["completion_tokens"]}

    # -- the requests ------------------------------------------------------------------------------
    def _client(self):
        import openai

        c = self.cfg
        key = os.environ.get(c.openai_api_key_env)
        if not key:
            print(f"data_gen: ${c.openai_api_key_env} is not set; sending no key (fine for a local vLLM, SGLang or "
                  "this project's server)", file=sys.stderr)
        return openai.AsyncOpenAI(base_url=c.openai_base_url, api_key=key or "EMPTY", timeout=c.openai_timeout,
                                  max_retries=0)

    def _fatal(self, err) -> TeacherError:
        c = self.cfg
        status = getattr(err, "status_code", None)
        why = {401: f"rejected the API key (set ${c.openai_api_key_env})", 403: "refused access",
               404: f"does not know model {c.openai_model!r} (check --openai_model)"}.get(status, str(err)[:200])
        return TeacherError(f"the teacher endpoint {c.openai_base_url} {why} [{status or type(err).__name__}]")

    async def _probe(self, client) -> None:
        """One cheap request first, so an endpoint that is down or refuses the key fails the run at once."""
        import openai

        try:
            await client.models.list()
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            raise self._fatal(err) from None
        except (openai.APIConnectionError, openai.InternalServerError) as err:
            raise TeacherError(f"cannot reach the teacher endpoint {self.cfg.openai_base_url} ({err}); start the "
                               "server or fix --openai_base_url") from None
        except openai.APIError:
            pass  # an endpoint without /models can still serve chat completions

    async def _run(self, todo) -> None:
        client = self._client()
        try:
            await self._probe(client)
            bar = tqdm(total=len(todo), desc=f"teacher {self.name}", unit="req", dynamic_ncols=True)
            pending = iter(todo)

            async def worker():
                for record in pending:  # one shared iterator: each record goes to exactly one worker
                    await self._one(client, record)
                    bar.set_postfix(failed=self.tally["failed"], retries=self.tally["retries"], refresh=False)
                    bar.update(1)

            try:
                await asyncio.gather(*(worker() for _ in range(min(self.cfg.openai_concurrency, len(todo)))))
            finally:
                bar.close()
        finally:
            await client.close()
        if self.tally["failed"] == len(todo):
            raise TeacherError(f"every request to {self.cfg.openai_base_url} failed "
                               f"({dict(self.summary()['errors'])}); nothing to annotate with")

    async def _one(self, client, record) -> None:
        import openai

        c = self.cfg
        messages = prompt.messages_for(record.messages, record.answer)
        for attempt in range(c.openai_max_retries + 1):
            self.tally["requests"] += 1
            self.tally["retries"] += attempt > 0
            try:
                resp = await client.chat.completions.create(model=c.openai_model, messages=messages,
                                                            temperature=c.openai_temperature,
                                                            max_tokens=c.openai_max_tokens)
                reply = _reply_text(resp)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
                raise self._fatal(err) from None
            except (openai.APIStatusError, openai.APIConnectionError, openai.APIResponseValidationError,
                    _BrokenReply) as err:
                kind = _kind(err)
                self.tally[f"error:{kind}"] += 1
                if not _retryable(err) or attempt == c.openai_max_retries:
                    self.tally["failed"] += 1
                    return
                await asyncio.sleep(self._wait(attempt, err))
                continue
            usage = getattr(resp, "usage", None)
            tokens = {"prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
                      "completion_tokens": getattr(usage, "completion_tokens", 0) or 0}
            self.tally.update(tokens)
            self.tally["answered"] += 1
            before = self.cache.get(self.key(record))  # a rejected reply asked again
            self.cache.update(self.key(record), id=record.id, reply=reply, finish_reason=resp.choices[0].finish_reason,
                              **tokens, tries=(before.get("tries", 1) if before else 0) + 1)
            return

    def _wait(self, attempt: int, err) -> float:
        c = self.cfg
        wait = c.openai_backoff * 2 ** attempt * random.uniform(0.5, 1.0)
        response = getattr(err, "response", None)
        after = response.headers.get("retry-after") if response is not None else None
        if after and re.fullmatch(r"\d+(\.\d+)?", after.strip()):
            wait = max(wait, float(after))
        return min(wait, c.openai_max_backoff)


def _reply_text(resp) -> str:
    """The reply's text; a body that is not a chat completion raises _BrokenReply."""
    try:
        text = resp.choices[0].message.content
    except (AttributeError, IndexError, TypeError) as err:
        raise _BrokenReply(f"not a chat completion ({type(err).__name__})") from None
    if not isinstance(text, str):
        raise _BrokenReply("a chat completion without text")
    return text


def _kind(err) -> str:
    import openai

    if isinstance(err, openai.APITimeoutError):
        return "timeout"
    if isinstance(err, openai.APIConnectionError):
        return "connection"
    if isinstance(err, openai.APIStatusError):
        return str(err.status_code)
    return "broken-reply"


def _retryable(err) -> bool:
    import openai

    if isinstance(err, openai.APIStatusError):
        return err.status_code in (408, 409, 429) or err.status_code >= 500
    return True
