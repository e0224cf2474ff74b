# The two commands of the README. Each sets itself up (scripts/setup.sh is idempotent and fast when nothing changed).
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
VENV ?= .venv
OUT ?= runs/demo
PYTEST_ARGS ?=
# transformers releases the fast suite also runs against (LLaDA pins 4.38.2, Dream 4.46.2), each in a cached
# environment outside the checkout (scripts/setup_compat.sh); `make test COMPAT_TRANSFORMERS=` skips them.
COMPAT_TRANSFORMERS ?= 4.38.2 4.46.3

.PHONY: setup test test-compat test-all demo demo-quick bench

setup:
	@bash scripts/setup.sh

# CI's command: lint, then side by side the whole suite except GPU-only tests and the fast tests that touch
# transformers (scripts/compat/tests.txt) under each COMPAT_TRANSFORMERS release (scripts/test_all.sh).
test: setup
	@VENV=$(VENV) bash scripts/test_all.sh "$(COMPAT_TRANSFORMERS)" $(PYTEST_ARGS)

# Only the fast suite under the older transformers releases (PYTEST_ARGS go to each run).
test-compat:
	@for v in $(COMPAT_TRANSFORMERS); do bash scripts/test_compat.sh $$v $(PYTEST_ARGS) || exit 1; done

# The main job: profile AntiBERTy on human VH germlines, build schedules, generate, evaluate, report.
demo: setup
	$(OFFLINE) $(VENV)/bin/mdm-sched demo --out $(OUT)

demo-quick: setup
	$(OFFLINE) $(VENV)/bin/mdm-sched demo --quick --out runs/demo-quick

bench: setup
	$(OFFLINE) $(VENV)/bin/python eval/bench_schedules.py
	$(OFFLINE) $(VENV)/bin/python eval/bench_generate.py
	$(OFFLINE) $(VENV)/bin/python eval/bench_profile.py
