# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build where one lies on disk; a user's pip picks the build for their own hardware.
TORCH ?= torch==2.13.0
MODEL ?=
SIZE ?=
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test bench model eval install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

serve: install
	$(BIN)/livegen serve --host $(HOST) --port $(PORT) $(if $(MODEL),--model $(MODEL)) $(if $(SIZE),--size $(SIZE))

test: install
	$(BIN)/python -m pytest -q

# Rebuild livegen's own emoji model from scratch (dataset, autoencoder, teacher, student, sharpen, export);
# each stage resumes from its checkpoint in build/emoji. Needs Debian's fonts-noto-color-emoji.
model: install
	$(BIN)/livegen train all --workdir build/emoji

eval: install
	$(BIN)/livegen eval --workdir build/emoji

# The standard set (cold, warm, interactive, load, camera) with StreamDiffusion as a peer; figures,
# plots and summary.md land in bench-results/.
bench: install
	$(BIN)/livegen bench all --peers $(if $(MODEL),--model $(MODEL)) $(if $(SIZE),--size $(SIZE))

clean:
	rm -rf $(VENV) test-artifacts bench-results
