# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Both set up the virtual environment from nothing on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/demo

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

# Main job. Until the embedded offline demo exists it analyses the published VTAB-1k fine-tune
# matrix (15 models x 19 tasks): task-agnostic and reference strategies, regret, budget curves.
demo: venv
	$(BIN)/whichmodel analyze --catalog pools/vtab.toml \
		--finetune pools/data/vtab1k_finetune.csv --out $(OUT)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python benchmarks/bench_curves.py

clean:
	rm -rf $(VENV) runs
