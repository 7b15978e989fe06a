# make demo   set up .venv, train 5 minutes on data/tinyshakespeare.txt with the default
#             flags, print a sample at temperature 0.8 and the validation loss reached;
#             more train flags go in DEMO, e.g. make demo DEMO="--max-time 2m"
# make test   set up .venv and run the test suite
# make bench  set up .venv and run the benchmark suite (15-25 minutes on an idle machine);
#             options go in BENCH, e.g. make bench BENCH="--quick" or
#             make bench BENCH="--rows lstm-2x256 --only train,sample" (see python -m benchmarks -h)
# make bench-quality
#             set up .venv and measure the held-out loss each budget buys (1, 5 and 20 minutes,
#             settings chosen by charrnn), each beside the PyTorch reference trained as long,
#             and on a second corpus (Python sources) chosen settings against the fixed
#             defaults: about 75 minutes; options go in BENCH, e.g.
#             make bench-quality BENCH="--budgets 1m,5m --no-second" (python -m benchmarks.curve -h);
#             python -m benchmarks.quality times one budget minute by minute

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test

.PHONY: setup test demo bench bench-quality clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the project's metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,serve]'
	@# The PyTorch parity tests need torch 2.13.0. It is installed only when pip can
	@# get it without the network (a local wheel, as on our CI machines); otherwise
	@# those tests are skipped. `make test TORCH=1` installs it from the index.
	@if [ -n "$(TORCH)" ] || $(BIN)/python -m pip install --quiet --no-deps --no-index torch==2.13.0 2>/dev/null; \
	 then $(BIN)/python -m pip install --quiet torch==2.13.0; \
	 else echo "torch 2.13.0 not available offline: PyTorch parity tests will be skipped"; fi
	touch $@

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/charrnn train data/tinyshakespeare.txt --out runs/demo --overwrite $(DEMO)
	@echo "--- a sample at temperature 0.8 ---"
	@$(BIN)/charrnn sample runs/demo/best.safetensors --temperature 0.8 --length 600 --prime "ROMEO:"
	@echo "---"
	@$(BIN)/charrnn info runs/demo/best.safetensors | sed -n 's/^best val */validation loss reached: /p'

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH)

bench-quality: $(STAMP)
	$(BIN)/python -m benchmarks.curve $(BENCH)

clean:
	rm -rf $(VENV) runs .pytest_cache
