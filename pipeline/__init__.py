"""What every stage needs and none owns, below data_gen, finetune and eval (which never import each other):

- `errors`: PipelineError, the typed errors' base, and `cli`, the one way an entry point fails (one line, exit 2);
- `jsonl`: the append-only JSONL caches; `runfolder`: run-folder locks, write errors that name their file, slugs;
- `shards`: `--shard i/n` specs and shard file names; `dataset`: a run's dataset, read one way (or a hub id);
- `prompts`: instruction files; `judges`: the pairwise judges (OpenAI-compatible, or the offline proxy);
- `preference`: best-of-N preference sampling for BoNBoN, with the arguments eval.pairs and finetune.prefopt extend.
"""
