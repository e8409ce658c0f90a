# Fresh machine: `make demo` trains on the bundled data, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-scale bench-distributed clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The specified model (it collapses), the same model with l1_lambda = 0.001 (it learns), one
# comparison page and three lines on why: runs/demo/{specified,l1-0.001,compare.html,summary.txt}.
demo: $(STAMP)
	$(BIN)/python -m l1cnn.demo --config configs/default.toml --out runs/demo --quiet

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# What users wait for (issue 17), each against a reference in the same run, into RESULTS.md:
# start-up and one prediction, the whole train command against a plain-Keras script, the loop.
bench: $(STAMP)
	$(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/whole_command.py
	$(BIN)/python benchmarks/photos.py
	$(BIN)/python benchmarks/throughput.py

bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py --cache

bench-distributed: $(STAMP)
	$(BIN)/python benchmarks/distributed.py --epochs 3 --reduces 50

clean:
	rm -rf $(VENV) runs .pytest_cache
