# The front door. `make setup` is idempotent: it re-installs only when a requirements file changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pasta-setup
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint dataset finetune finetune-pair check check-full eval prefopt prefopt-full demo demo-full bench

# Each stage's recipe and extra flags (flags override the recipe), e.g. make finetune FINETUNE_ARGS="--num_train_epochs 2"
DATASET_CONFIG ?= configs/demo/dataset.yaml
DATASET_ARGS ?=
FINETUNE_CONFIG ?= configs/demo/smollm2-sft.yaml
FINETUNE_ARGS ?=
PREFOPT_CONFIG ?= configs/demo/smollm2-prefopt.yaml
PREFOPT_ARGS ?=
EVAL_CONFIG ?= configs/demo/eval.yaml
EVAL_ARGS ?=
RUN_DIR ?= runs/demo

setup: $(STAMP)

$(STAMP): requirements.txt requirements.lock requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned by the lock, so that no other package can pull a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

dataset: setup
	$(PY) -m data_gen --config $(DATASET_CONFIG) $(DATASET_ARGS)

finetune: setup
	$(PY) -m finetune --config $(FINETUNE_CONFIG) $(FINETUNE_ARGS)

# both variants side by side, a thread each: 1.5x the throughput of one after the other on 2 cores
finetune-pair: setup
	OMP_NUM_THREADS=1 $(PY) -m finetune --config $(FINETUNE_CONFIG) --variant pasta $(FINETUNE_ARGS) & pid=$$!; \
	OMP_NUM_THREADS=1 $(PY) -m finetune --config $(FINETUNE_CONFIG) --variant baseline $(FINETUNE_ARGS) && wait $$pid

# does the PASTA model write tags the engine runs as written? (held-out prompts of the dataset; the repetition
# penalty of the demos' evaluations)
CHECK_ARGS ?=
check: setup
	$(PY) -m finetune.check --run_dir $(RUN_DIR) --model $(RUN_DIR)/models/pasta-sft --repetition_penalty 1.15 \
		--dtype auto --stop_loops true $(CHECK_ARGS)

prefopt: setup
	$(PY) -m finetune.prefopt --config $(PREFOPT_CONFIG) $(PREFOPT_ARGS)

eval: setup
	$(PY) -m eval --config $(EVAL_CONFIG) $(EVAL_ARGS)

# the main job on the embedded defaults (the two variants train side by side, a thread each): every stage resumes,
# so a rerun redoes only what is missing
demo: setup
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory dataset finetune-pair eval && \
	echo "make demo: done in $$(( $$(date +%s) - start )) s"

# the longer recipe (docs/finetune.md, the full demo): the demo's dataset and training recipe in its own run folder,
# three epochs (the demo trains two) with the passes in float32 (a third longer each), sequential and PASTA timed on
# all 32 held-out prompts and MT-Bench's 16
FULL := configs/demo-full
demo-full: setup
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory dataset DATASET_ARGS="--run_dir runs/demo-full $(DATASET_ARGS)" && \
	$(MAKE) --no-print-directory finetune-pair FINETUNE_ARGS="--run_dir runs/demo-full --bf16 false --num_train_epochs 3 $(FINETUNE_ARGS)" && \
	$(MAKE) --no-print-directory eval EVAL_CONFIG=$(FULL)/eval.yaml && \
	echo "make demo-full: done in $$(( $$(date +%s) - start )) s"

# the short demo's BoNBoN recipe from the full demo's student (tag tokens); `make eval
# EVAL_CONFIG=configs/demo-full/eval.yaml` then evaluates the prefopt models beside it. A second round from
# λ=1's model (docs/finetune.md): make prefopt-full PREFOPT_ARGS="--rounds 2 --lambdas 1"; the README's fourth:
# PREFOPT_ARGS="--rounds 4 --lambdas 1 --num_prompts 96 --repaired slower" after the third
prefopt-full: setup
	$(MAKE) --no-print-directory prefopt \
		PREFOPT_ARGS="--model_name_or_path runs/demo-full/models/pasta-sft --run_dir runs/demo-full $(PREFOPT_ARGS)"

# the full demo's student on its dataset's test split, decoded as the full demo's evaluation decodes
check-full: setup
	$(MAKE) --no-print-directory check RUN_DIR=runs/demo-full

# in the dtype the demo decodes in on this CPU (auto: bfloat16 with bf16 units, else float16-weights), named for it
bench: setup
	@dtype=$$($(PY) -c "from interpreter.models import resolve_dtype; print(resolve_dtype('auto', 'cpu'))"); \
	name=$$(case $$dtype in bfloat16) echo bf16;; float16-weights) echo fp16w;; *) echo f32;; esac); \
	echo "make bench: $$dtype"; \
	$(PY) -m interpreter bench --model smollm2-135m-instruct --dtype $$dtype --repeats 1 --warmup 1 \
		--data benchmarks/engine-bench-sequences.jsonl --out benchmarks/engine-smollm2-cpu-$$name-top
