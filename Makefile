# Two commands on a fresh machine:
#   make demo   installs everything (venv, CPU torch, alignlens, fonts) and runs the main job
#   make test   runs the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= runs/demo
# Sentiment on label-balanced held-out items (base Gemma is at chance on SNLI), the paper's PCA languages + zh, ja
DEMO_ARGS ?= --tasks emotion --items 0-249 --balanced --limit 12 --languages en,zh,de,fr,ja,hi,th,sw,ms

.PHONY: setup demo test fonts bench clean

$(BIN)/alignlens: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The local CPU wheel first: anything that pulls torch unpinned would fetch GBs of CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

fonts:
	@if fc-list 2>/dev/null | grep -q "Noto Sans CJK" && fc-list 2>/dev/null | grep -q "Noto Sans Thai" && command -v pdftoppm >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Noto fonts and poppler-utils (PDF reports render all 20 scripts)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-core fonts-noto-cjk poppler-utils >/dev/null) \
	    || echo "warning: could not install fonts-noto-core fonts-noto-cjk; reports may show missing glyphs"; \
	else echo "warning: install fonts-noto-core and fonts-noto-cjk (Debian) so reports render all scripts"; fi

setup: $(BIN)/alignlens fonts

demo: setup
	$(BIN)/alignlens analyze $(DEMO_ARGS) --out $(OUT) --force

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	$(BIN)/python bench/eval_throughput.py

clean:
	rm -rf $(VENV) runs build *.egg-info
