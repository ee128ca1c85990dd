# mlc: every target builds what it needs from nothing (a fresh clone with Python 3.11+ and make).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    := out

.PHONY: demo test test-fast conformance wheel-check bench bench-gpu bench-train lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e '.[test,distributed]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

demo: $(VENV)/.installed
	@mkdir -p $(OUT)
	$(BIN)/mlc zoo default -o $(OUT)
	$(BIN)/mlc import $(OUT)/default.onnx -o $(OUT)/default.ir
	$(BIN)/mlc opt $(OUT)/default.ir -p configs/pipelines/build-cpu.yaml --timing -o $(OUT)/default.opt.ir
	$(BIN)/mlc codegen $(OUT)/default.opt.ir --target cpu --emit llvm,asm -o $(OUT)/default.mlc
	$(BIN)/python -c "import numpy as np; np.savez('$(OUT)/in.npz', x=np.random.default_rng(0).standard_normal((32, 64)).astype('float32'))"
	$(BIN)/mlc run $(OUT)/default.mlc --inputs $(OUT)/in.npz -o $(OUT)/out.npz
	$(BIN)/mlc run $(OUT)/default.ir --inputs $(OUT)/in.npz -o $(OUT)/ref.npz
	$(BIN)/python -c "import numpy as np; a, b = np.load('$(OUT)/out.npz'), np.load('$(OUT)/ref.npz'); \
	  [np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in b.files]; \
	  print('demo: compiled output matches the reference interpreter:', ', '.join(f'{k}{a[k].shape}' for k in a.files))"
	$(BIN)/mlc bench $(OUT)/default.mlc --shape N=32 --onnx $(OUT)/default.onnx

# The ONNX backend conformance suite is long: `make conformance`, not part of `make test`.
test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/pytest -q -m "not conformance" tests

test-fast: $(VENV)/.installed
	$(BIN)/pytest -q -m "not slow and not conformance" tests

# MLC_FUZZ_EXAMPLES: how many random graphs the differential fuzzer tries here (about 4 minutes for 1500).
MLC_FUZZ_EXAMPLES ?= 1500
conformance: $(VENV)/.installed
	MLC_FUZZ_EXAMPLES=$(MLC_FUZZ_EXAMPLES) $(BIN)/pytest -q -m conformance tests

# A real wheel of this checkout, installed in a fresh venv under a temp dir (removed afterwards) and used
# from outside the source tree: zoo, build, run, compared with the reference interpreter. Needs PyPI.
# REF=HEAD builds that commit instead of the working tree.
wheel-check:
	PYTHON=$(PYTHON) REF=$(REF) .ci/wheel-check

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run_all.py

bench-sparse: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_sparse.py

bench-sparse-gpu: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_sparse_gpu.py

$(VENV)/.installed-train: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,train]'
	touch $@

bench-train: $(VENV)/.installed-train
	$(BIN)/python benchmarks/bench_train.py

bench-gpu: $(VENV)/.installed-bench
	$(BIN)/pytest -q -m gpu tests
	$(BIN)/python benchmarks/bench_gpu.py

lint: $(VENV)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache .hypothesis
