# `make demo` and `make test` each create .venv on first use and install
# kerastrain (editable) into it from setup.cfg.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m recipes.demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks.augment_throughput
	$(PY) -m benchmarks.callback_overhead
	$(PY) -m benchmarks.averaging
	$(PY) -m benchmarks.step_rate

clean:
	rm -rf $(VENV) build *.egg-info
