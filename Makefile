# make demo   set up .venv, train briefly on data/tinyshakespeare.txt, print a sample
# make test   set up .venv and run the test suite
# make bench  set up .venv and run the benchmark suite (10-20 minutes on an idle machine);
#             options go in BENCH, e.g. make bench BENCH="--quick" or
#             make bench BENCH="--rows lstm-2x256 --only train,sample" (see python -m benchmarks -h)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test

.PHONY: setup test demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the project's metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
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
	$(BIN)/charrnn train data/tinyshakespeare.txt --out runs/demo --max-time 3m --overwrite
	$(BIN)/charrnn sample runs/demo/best.safetensors --temperature 0.8 --length 600 --prime "ROMEO:"

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH)

clean:
	rm -rf $(VENV) runs .pytest_cache
