# mlc: every target builds what it needs from nothing (a fresh clone with Python 3.11+ and make).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    := out

.PHONY: demo test test-fast bench bench-gpu lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

demo: $(VENV)/.installed
	@mkdir -p $(OUT)
	$(BIN)/mlc zoo default -o $(OUT)
	$(BIN)/mlc import $(OUT)/default.onnx -o $(OUT)/default.ir
	$(BIN)/mlc opt $(OUT)/default.ir --pipeline configs/pipelines/default.yaml --timing -o $(OUT)/default.opt.ir
	$(BIN)/python -c "import numpy as np; np.savez('$(OUT)/in.npz', x=np.random.default_rng(0).standard_normal((4, 64)).astype('float32'))"
	$(BIN)/mlc run $(OUT)/default.opt.ir --inputs $(OUT)/in.npz -o $(OUT)/out.npz
	@echo "demo: wrote $(OUT)/out.npz"

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/pytest -q tests

test-fast: $(VENV)/.installed
	$(BIN)/pytest -q -m "not slow" tests

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run_all.py

bench-gpu: $(VENV)/.installed-bench
	$(BIN)/pytest -q -m gpu tests

lint: $(VENV)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache .hypothesis
