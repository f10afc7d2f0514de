# Everything runs from a local virtual environment that make creates: a fresh clone needs nothing else.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install install-dev demo test bench clean

$(VENV)/.train: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -e ".[train]"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.train
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.train
install-dev: $(VENV)/.dev

demo: install
	$(VENV)/bin/swinkit models
	$(VENV)/bin/swinkit train

test: install-dev
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
