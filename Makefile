# The two commands of the README. Each sets itself up (scripts/setup.sh is idempotent and fast when nothing changed).
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
VENV ?= .venv
OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup test test-all demo demo-quick bench

setup:
	@bash scripts/setup.sh

# CI's command: the whole suite except GPU-only tests.
test: setup
	$(VENV)/bin/ruff check .
	$(OFFLINE) $(VENV)/bin/python -m pytest -m "not gpu" $(PYTEST_ARGS)

# The main job: profile AntiBERTy on human VH germlines, build schedules, generate, evaluate, report.
demo: setup
	$(OFFLINE) $(VENV)/bin/mdm-sched demo --out $(OUT)

demo-quick: setup
	$(OFFLINE) $(VENV)/bin/mdm-sched demo --quick --out runs/demo-quick

bench: setup
	$(OFFLINE) $(VENV)/bin/python eval/bench_schedules.py
	$(OFFLINE) $(VENV)/bin/python eval/bench_generate.py
	$(OFFLINE) $(VENV)/bin/python eval/bench_profile.py
