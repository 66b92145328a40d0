# dcounter: a local cluster and the tests, without Docker.
#   make cluster   three nodes on 127.0.0.1:9088, 9089, 9090 (background twistd)
#   make stop      stop them
#   make test      lint and the whole test suite (what CI runs)

VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
RUN    := run
PORTS  := 9088 9089 9090

.PHONY: install cluster stop status test test-fast lint bench clean

install: $(VENV)/.installed

# A regular (compat) editable install: twistd finds plugins by scanning
# sys.path for twisted/plugins/, which a PEP 660 editable install hides.
$(VENV)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]" --config-settings editable_mode=compat
	touch $@

cluster: install
	@mkdir -p $(RUN)
	@for p in $(PORTS); do \
	  if [ -f $(RUN)/$$p.pid ] && kill -0 $$(cat $(RUN)/$$p.pid) 2>/dev/null; then \
	    echo "node $$p already running"; continue; fi; \
	  $(BIN)/twistd --pidfile=$(RUN)/$$p.pid --logfile=$(RUN)/$$p.log dcounter \
	    --port $$p --listen tcp:$$p:interface=127.0.0.1 --advertise 127.0.0.1:$$p \
	    --data-dir $(RUN)/data-$$p || exit 1; \
	done
	@for p in $(PORTS); do \
	  for i in $$(seq 100); do \
	    $(BIN)/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$$p/health', timeout=1)" \
	      2>/dev/null && break; sleep 0.1; done; \
	done
	@$(MAKE) --no-print-directory status

status:
	@for p in $(PORTS); do \
	  printf '%s  ' $$p; \
	  $(BIN)/python -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$$p/count', timeout=1).read().decode().strip(), u.urlopen('http://127.0.0.1:$$p/peers', timeout=1).read().decode().strip())" \
	    2>/dev/null || echo down; \
	done

stop:
	@for p in $(PORTS); do \
	  if [ -f $(RUN)/$$p.pid ]; then kill $$(cat $(RUN)/$$p.pid) 2>/dev/null && echo "stopped $$p"; fi; \
	done; true

lint: install
	$(BIN)/ruff check dcounter tests twisted setup.py benchmarks
	$(BIN)/ruff format --check dcounter tests twisted setup.py benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not netns"

bench: install
	$(BIN)/python benchmarks/discovery.py --nodes 20 --runs 3
	$(BIN)/python benchmarks/request_cost.py
	$(BIN)/python benchmarks/request_cost.py --data-dir --requests 1000

clean: stop
	rm -rf $(RUN) build *.egg-info
