# Two commands do all the set-up on a fresh machine:
#   make demo   - builds a miniature WMTP storage from a local stand-in hub (plan, apply, lock, check)
#   make test   - lint + the whole test suite (what CI runs)
# GPU users: `make TORCH_SPEC="torch" test`, or `make VENV_FLAGS=--system-site-packages` to reuse an installed torch.
PY         ?= python3
VENV       ?= .venv
VENV_FLAGS ?=
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin
# The huggingface_hub 0.x line (what transformers 4.x requires), installed beside the venv and put first on
# PYTHONPATH for a second run of the hub and source tests: the code must work on both lines.
HUB0X_SPEC ?= huggingface_hub==0.36.2
HUB0X      := $(VENV)/hub0x
HUB_TESTS  := tests/test_hub.py tests/test_hub_http.py tests/test_source_hf.py tests/test_apply_hub.py tests/test_ranged_download.py tests/test_hf_cache.py

.PHONY: install demo test test-hub0x wheel-check lint bench clean schemas

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml testing/pyproject.toml
	$(PY) -m venv $(VENV_FLAGS) $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build; an existing torch is kept.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev,fast]' -e ./testing
	touch $@

demo: install
	$(BIN)/python examples/demo/run_demo.py --out demo-out

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q
	$(MAKE) test-hub0x wheel-check

# The wheel, installed (not editable) in a fresh venv beside this venv's torch, run from another folder.
wheel-check: install
	.ci/wheel-check $(VENV)

$(HUB0X)/.installed: $(VENV)/.installed
	rm -rf $(HUB0X)
	# --no-deps: only the client and its requests stack; everything else comes from the venv.
	$(BIN)/pip install -q --no-deps --target $(HUB0X) "$(HUB0X_SPEC)" requests urllib3 charset-normalizer certifi
	touch $@

test-hub0x: $(HUB0X)/.installed
	PYTHONPATH=$(HUB0X) $(BIN)/python -c "import huggingface_hub as h; assert h.__version__.startswith('0.'), h.__version__"
	PYTHONPATH=$(HUB0X) $(BIN)/python -m pytest -q $(HUB_TESTS)

bench: install
	$(BIN)/python bench/run.py

# Real size (not in `make test`): the 26.95 GB Meta checkpoint -> fp16 under `ulimit -v 4194304`; ~45 GB of disk.
schemas: install
	$(BIN)/python -m reconciler.schemas.generate  # the lock schema's validator, compiled ahead of time

bench-real: install
	$(BIN)/python bench/bench_real.py

clean:
	rm -rf demo-out bench-out .pytest_cache build/wheel-check
