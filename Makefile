# mobilevlm_export: `make setup demo` on a fresh machine, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_IMAGE ?= $(shell cd mobilevlm_export/demo/samples 2>/dev/null && ls *.png | head -n 1)

.PHONY: setup demo test test-slow lint train-demo bench clean

setup: $(STAMP)

# torch is pinned and installed first: 2.13.0 is a local CPU wheel here, a newer one is a multi-GB CUDA build.
# The host toolchain is the `build` extra (the base install is the torch-free artifact side, as on a Jetson).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet torch==2.13.0 -e '.[build,onnx,executorch,dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/python -m mobilevlm_export.demo
	mkdir -p build
	$(BIN)/mvlm-export export -o build/demo-onnx --force
	$(BIN)/mvlm-export run build/demo-onnx --image mobilevlm_export/demo/samples/$(DEMO_IMAGE) \
		--prompt "What color is the shape?"
	$(BIN)/mvlm-export build --target orin -o build/demo-orin --force
	$(BIN)/mvlm-export run build/demo-orin --image mobilevlm_export/demo/samples/$(DEMO_IMAGE) \
		--prompt "What color is the shape?"
	$(BIN)/mvlm-export build --target snapdragon -o build/demo-snapdragon --force
	$(BIN)/mvlm-export run build/demo-snapdragon --image mobilevlm_export/demo/samples/$(DEMO_IMAGE) \
		--prompt "What color is the shape?"

# Two pytest-xdist workers (one per core of a 2-core CI box), a test file per worker at a time (its module fixtures
# made once); the demo builds are shared by both (tests/conftest.py).
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20

test-slow: setup
	$(BIN)/python -m pytest -q -m slow -s
	MVLM_PROPERTY_SLOW=1 $(BIN)/python -m pytest -q tests/test_cli_property.py

lint: setup
	$(BIN)/ruff check mobilevlm_export tests

# The benchmark suite (not part of `test`): every backend x recipe at MobileVLM_V2-1.7B dims, random weights (hours,
# >10 GB of RAM; builds are cached in BENCH_OUT and resume). Writes BENCH_OUT/BENCHMARKS.md, copied here.
BENCH_OUT  ?= build/bench
BENCH_ARGS ?= --shape 1.7b --ab
bench: setup
	$(BIN)/python -m mobilevlm_export.benchsuite --out $(BENCH_OUT) $(BENCH_ARGS)
	cp $(BENCH_OUT)/BENCHMARKS.md BENCHMARKS.md
	if ls $(BENCH_OUT)/benchmarks/plots/*.png >/dev/null 2>&1; then \
		mkdir -p benchmarks/plots && cp $(BENCH_OUT)/benchmarks/plots/*.png benchmarks/plots/; fi

train-demo: setup
	$(BIN)/python -m mobilevlm_export.demo.train

clean:
	rm -rf $(VENV) build *.egg-info
