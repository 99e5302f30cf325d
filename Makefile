# Two commands do all the set-up on a fresh machine:
#   make demo   - builds a miniature WMTP storage from a local stand-in hub (plan, apply, lock, check)
#   make test   - lint + the whole test suite (what CI runs)
# GPU users: `make TORCH_SPEC="torch" test`, or `make VENV_FLAGS=--system-site-packages` to reuse an installed torch.
PY         ?= python3
VENV       ?= .venv
VENV_FLAGS ?=
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml testing/pyproject.toml
	$(PY) -m venv $(VENV_FLAGS) $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build; an existing torch is kept.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]' -e ./testing
	touch $@

demo: install
	$(BIN)/python examples/demo/run_demo.py --out demo-out

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf demo-out bench-out .pytest_cache
