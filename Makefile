# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Both set up the virtual environment from nothing on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/demo

.PHONY: venv demo vtab fashion-mnist test test-fast lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

# Main job: the embedded default study, offline (`whichmodel demo`). The first run pre-trains the
# demo's experts into ~/.cache/whichmodel/demo; then it embeds, probes and fine-tunes 10 models on
# 6 small tasks and writes $(OUT)/report.html. Later runs reuse everything.
demo: venv fashion-mnist
	$(BIN)/whichmodel demo --out $(OUT)

# The published VTAB-1k fine-tune matrix (15 models x 19 tasks): strategies, regret, curves.
vtab: venv
	$(BIN)/whichmodel analyze --catalog pools/vtab.toml \
		--finetune pools/data/vtab1k_finetune.csv --out runs/vtab

# The demo's Fashion-MNIST is a Debian package; installed here when running as root.
fashion-mnist:
	@test -d /usr/share/datasets/fashion-mnist || { [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } || { \
		echo "the demo needs Fashion-MNIST: sudo apt-get install dataset-fashion-mnist" >&2; \
		exit 2; }

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# the import contract is checked on the installed layout (whichmodel/ = engine/ + actors/ +
	@# pools/), laid out as the wheel does; grimp reads one folder per package
	rm -rf build/lint && mkdir -p build/lint/whichmodel && cp -r engine/. build/lint/whichmodel/ \
		&& cp -r actors build/lint/whichmodel/actors && cp -r pools build/lint/whichmodel/pools
	cd build/lint && ../../$(BIN)/lint-imports ../../pyproject.toml

test: lint
	$(BIN)/python -m pytest

# The quick tier: everything but the cluster, fault and heavy tests (markers in pyproject.toml).
test-fast: lint
	$(BIN)/python -m pytest -m "not cluster and not fault and not heavy"

bench: venv
	$(BIN)/python benchmarks/bench_curves.py

clean:
	rm -rf $(VENV) runs
