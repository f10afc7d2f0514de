# Everything runs from a local virtual environment that make creates: a fresh clone needs nothing else.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install install-dev install-docs demo test docs bench clean

$(VENV)/.train: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -e ".[train]"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.train
	$(PIP) install -q -e ".[dev]"
	touch $@

$(VENV)/.docs: pyproject.toml $(VENV)/.train
	$(PIP) install -q -e ".[docs]"
	touch $@

install: $(VENV)/.train
install-dev: $(VENV)/.dev
install-docs: $(VENV)/.docs

demo: install
	$(VENV)/bin/swinkit models
	$(VENV)/bin/swinkit train

test: install-dev
	$(PY) -m pytest -q

docs: install-docs  # the site in site/; --strict: a broken link or reference fails
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q

clean:
	rm -rf $(VENV) runs site
