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

.PHONY: serve test bench model install-model eval install clean

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

# Rebuild livegen's own emoji model from scratch (dataset, autoencoder, teacher, student, sharpen, export)
# into build/emoji (the student in build/emoji/export); each stage resumes from its checkpoint there.
# The shipped weights in the package are left alone: `make install-model` puts the build in their place.
# Needs Debian's fonts-noto-color-emoji.
model: install
	$(BIN)/livegen train all --workdir build/emoji

install-model: install
	$(BIN)/livegen train export --workdir build/emoji --to livegen/weights/emoji

# Measure the shipped model (STUDENT=folder for another) with no rebuild: the dataset and the
# evaluation's classifier are made in build/emoji if missing, the teacher rows need `make model`;
# results in build/emoji/eval.json and build/emoji/model-grid.png (docs/ only with GRID=docs/model-grid.png).
STUDENT ?=
GRID ?=
eval: install
	$(BIN)/livegen eval --workdir build/emoji $(if $(STUDENT),--student $(STUDENT)) $(if $(GRID),--grid $(GRID))

# The standard set (cold, warm, interactive, load, camera) with StreamDiffusion as a peer; figures,
# plots and summary.md land in bench-results/.
bench: install
	$(BIN)/livegen bench all --peers $(if $(MODEL),--model $(MODEL)) $(if $(SIZE),--size $(SIZE))

clean:
	rm -rf $(VENV) test-artifacts bench-results
