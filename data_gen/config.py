"""The arguments of `python -m data_gen`: YAML keys and command-line flags are the same names."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from interpreter import DTYPES, EMBEDDED_MODEL, LOOPING
from interpreter.models import DTYPE_HELP

TEACHERS = ("structural", "openai")
SEED_LICENSE = "apache-2.0"  # the seed instructions are this project's, answered by the embedded SmolLM2 (apache-2.0)


def _help(text: str, default=None, **kw):
    return field(default=default, metadata={"help": text, **kw})


@dataclass
class DataGenConfig:
    # Run folder: everything lands under <run_dir>/ (dataset/, cache/)
    run_dir: str = _help("run folder; finetune and eval read the same one", "runs/demo")
    cache_dir: str | None = _help("caches of answers and teacher replies (default: <run folder>/cache)")

    # Source: instructions, with or without answers
    source: str = _help("'seed' (the embedded instruction set), a JSON/JSONL/parquet file, a save_to_disk folder, "
                        "or a hub dataset id such as Open-Orca/SlimOrca", "seed")
    source_format: str = _help("auto, sharegpt, alpaca, instruction_response, messages or instructions", "auto")
    source_split: str = _help("split to read from a hub dataset or DatasetDict folder", "train")
    source_categories: list[str] | None = _help("keep only rows whose 'category' is one of these (the seed set's: "
                                                "list, steps, comparison, pros-and-cons, explanation, short-fact, "
                                                "code, rewriting)")
    max_examples: int | None = _help("use this many records, drawn at random with shuffle_seed (default: all)")
    shuffle_seed: int = _help("seed of that draw", 0)

    # Answers for instructions that have none (the seed set): the base model, sequential mode, batched
    answer_model: str = _help("model that answers instructions without an answer", EMBEDDED_MODEL)
    answer_max_new_tokens: int = _help("answer length cap; a cut answer is trimmed back to its last full line", 200)
    answer_batch_size: int = _help("prompts per generate_batch call", 16)
    answer_dtype: str = _help(DTYPE_HELP, "float32")
    # greedy decoding makes the 135M model loop on about a third of the seed prompts; sampling does not
    answer_temperature: float = _help("sampling temperature of the answers (0 = greedy)", 0.7)
    answer_top_p: float = _help("nucleus sampling of the answers", 0.9)
    answers_per_instruction: int = _help("answers drawn for each instruction without one, each its own example "
                                         "(an instruction's answers share a split)", 1)

    # Teacher
    teacher: str = _help("structural (offline, rule-based) or openai (any OpenAI-compatible endpoint)", "structural")
    openai_base_url: str = _help("endpoint of the openai teacher (OpenAI, vLLM, SGLang, this project's server)",
                                 "http://127.0.0.1:8000/v1")
    openai_model: str | None = _help("model name the endpoint serves (required for the openai teacher)")
    openai_api_key_env: str = _help("environment variable that holds the API key", "OPENAI_API_KEY")
    openai_concurrency: int = _help("requests in flight at once", 32)
    openai_timeout: float = _help("seconds one request may take", 120.0)
    openai_max_retries: int = _help("retries of a request after a 429, a 5xx, a timeout or a broken reply", 6)
    openai_backoff: float = _help("first retry waits this many seconds, doubling each time", 1.0)
    openai_max_backoff: float = _help("longest wait between retries", 60.0)
    openai_temperature: float = _help("sampling temperature of the teacher", 0.0)
    openai_max_tokens: int = _help("longest reply the teacher may write", 4096)
    openai_reply_tries: int = _help("replies a record may get over successive runs while the filters reject them: "
                                    "a rejected reply is cached as such and asked again by the next run", 3)

    # Filters and the student's measures
    student: str = _help("tokenizer of the model that will learn from this set: promise lengths and cost measures",
                         EMBEDDED_MODEL)
    tag_tokens: bool = _help("measure with the tag pieces added as tokens (interpreter.add_tag_tokens), as the "
                             "student is trained", True)
    tokens_granularity: int = _help("a promise's tokens is its block's true length rounded up to this", 10)
    min_blocks: int = _help("fewest blocks an annotated answer may have (answers with none are counted apart)", 1)
    max_blocks: int = _help("most blocks an annotated answer may have", 12)
    no_parallel_share: float = _help("largest share of the kept set that may have no blocks at all", 0.2)
    max_repetition: float = _help("drop answers whose share of repeated word 4-grams is above this", LOOPING)
    max_block_repetition: float = _help("drop annotations whose blocks repeat one another: a topic given twice, or a "
                                        "share of the blocks' word 3-grams held by a sibling block above this "
                                        "(1: keep them)", 1.0)

    # Output
    test_size: float = _help("share of the kept examples in the test split", 0.05)
    push_to_hub: bool = _help("also push the dataset and its card to the hub", False)
    hub_repo_id: str | None = _help("hub dataset repo for --push_to_hub, e.g. you/pasta-slimorca")
    hub_private: bool = _help("create the hub repo private", True)
    hub_license: str | None = _help("license on the dataset card, e.g. mit for Open-Orca/SlimOrca: the source's terms "
                                    f"carry over (default: {SEED_LICENSE} for the seed set; required to push another)")

    # Many workers: each annotates its share into <run_dir>/dataset-shards, then one merge writes the dataset
    shard: str | None = _help("i/n: annotate only every n-th record from the i-th on, with this worker's own caches, "
                              "into dataset-shards/records.shard-i-of-n.jsonl; no dataset is written")
    merge_shards: int | None = _help("n: build the dataset from the n workers' shard files (each record exactly "
                                     "once) instead of annotating; run with the workers' other flags")

    @property
    def dataset_dir(self) -> Path:
        return Path(self.run_dir) / "dataset"

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.run_dir) / "cache"

    def check(self) -> None:
        """Raises ValueError naming the first argument that cannot work."""
        if self.teacher not in TEACHERS:
            raise ValueError(f"--teacher must be one of {', '.join(TEACHERS)}, not {self.teacher!r}")
        if self.teacher == "openai" and not self.openai_model:
            raise ValueError("--teacher openai needs --openai_model (the model name the endpoint serves)")
        if self.push_to_hub and not self.hub_repo_id:
            raise ValueError("--push_to_hub needs --hub_repo_id (e.g. you/pasta-dataset)")
        if self.push_to_hub and not self.hub_license and self.source != "seed":
            raise ValueError(f"--push_to_hub of a dataset built from {self.source} needs --hub_license (the source's "
                             "license, e.g. mit for Open-Orca/SlimOrca)")
        if self.answer_dtype not in DTYPES:
            raise ValueError(f"--answer_dtype must be one of {', '.join(DTYPES)}, not {self.answer_dtype!r}")
        for name in ("tokens_granularity", "max_blocks", "answer_batch_size", "openai_concurrency",
                     "answer_max_new_tokens", "openai_reply_tries", "answers_per_instruction"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, not {getattr(self, name)}")
        if not 0 <= self.min_blocks <= self.max_blocks:
            raise ValueError(f"--min_blocks ({self.min_blocks}) must be between 0 and --max_blocks ({self.max_blocks})")
        for name in ("no_parallel_share", "test_size", "max_repetition", "max_block_repetition", "answer_top_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name} must be between 0 and 1, not {getattr(self, name)}")
        if self.answers_per_instruction > 1 and self.answer_temperature == 0:
            raise ValueError("--answers_per_instruction above 1 needs --answer_temperature above 0: greedy decoding "
                             "writes one answer again")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"--max_examples must be at least 1, not {self.max_examples}")
        if self.shard and self.merge_shards:
            raise ValueError("--shard and --merge_shards exclude each other: workers run --shard i/n, then one "
                             "--merge_shards n joins them")
        if self.shard:
            from pipeline.shards import parse_shard

            parse_shard(self.shard)
        if self.merge_shards is not None and self.merge_shards < 1:
            raise ValueError(f"--merge_shards must be at least 1, not {self.merge_shards}")

    def as_dict(self) -> dict:
        return asdict(self)
