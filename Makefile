# Two commands matter: `make demo` and `make test`. Each sets up what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench bench-train bench-load clean

# pip byte-compiles on one core (63 s of a 129 s install here); compileall -j 0 uses every core (43 s). A few
# files that packages ship are not Python 3 (pip skips them too), hence `|| true`.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile torch==2.13.0
	$(BIN)/python -m pip install -q --no-compile -e '.[test]'
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -x tests

demo: setup
	$(BIN)/starflow demo

bench: setup
	$(BIN)/starflow bench --model $(or $(BENCH_MODEL),../shared/bench/bench_t2i_small.pt) --json

bench-train: setup
	$(BIN)/starflow bench-train

# peak memory while loading a checkpoint of the 3B shape (writes 2 x 7.7 GB to /tmp, deleted after)
bench-load: setup
	$(BIN)/python benchmarks/load_memory.py

clean:
	rm -rf $(VENV) build src/*.egg-info
