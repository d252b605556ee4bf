PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps "animal-mnist==0.4"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vidq demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra -n 2 tests

clean:
	rm -rf $(VENV) outputs
