# dcounter: the original's workflow, plus the test suite.
#   make              three nodes on 127.0.0.1:9088, 9089, 9090: with Docker compose when a
#                     Docker engine answers, else as local twistd processes (DOCKER=no forces that)
#   make test-full    check the running cluster (every test-* target); make test-health ...
#   make logs         follow the nodes' logs (FOLLOW= to print and exit)
#   make stop         stop the nodes (data kept); make reset also deletes their data
#   make test         lint and the whole test suite (what CI runs)
# The test-* targets check NODES (URLs), so they work against any cluster:
#   make test-full NODES="http://10.0.0.5:8080 http://10.0.0.6:8080"

VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
RUN    ?= run
HOST   ?= 127.0.0.1
PORTS  ?= 9088 9089 9090
NODES  ?= $(foreach p,$(PORTS),http://$(HOST):$(p))
# The fourth node that test-discovery starts (local processes) and stops.
EXTRA_PORT     ?= 9091
# Options for local nodes' `twistd dcounter` (a test sets its own cluster and discovery port).
NODE_OPTIONS   ?=
CHECK_TIMEOUT  ?= 20
FOLLOW         ?= -f
CHECK   = $(PYTHON) scripts/check_cluster.py --timeout $(CHECK_TIMEOUT) --nodes "$(NODES)"
LOCAL   = $(BIN)/python scripts/local_cluster.py --run $(RUN) --host $(HOST) --twistd $(BIN)/twistd

# Docker: DOCKER=auto uses compose when `docker info` answers; DOCKER=yes or no decides.
DOCKER  ?= auto
COMPOSE ?= docker-compose
IMAGE   ?= dcounter:latest
# The image's base: a local dcounter-base:bookworm (made by `make base-image`) when there is
# one, else python:3.11-slim from Docker Hub.
BASE    ?= $(shell docker image inspect dcounter-base:bookworm >/dev/null 2>&1 && echo dcounter-base:bookworm || echo python:3.11-slim)
MIRROR  ?= http://deb.debian.org/debian
COMPOSE_EXTRA = $(COMPOSE) --profile extra
export DCOUNTER_IMAGE = $(IMAGE)
why_docker = $(if $(filter yes,$(DOCKER)),DOCKER=yes,a Docker engine answers)
docker_answers = { [ "$(DOCKER)" = yes ] || { [ "$(DOCKER)" = auto ] && docker info >/dev/null 2>&1; }; }
# Set while the compose cluster is the one `make` started: stop, logs and test-discovery follow it.
COMPOSE_MARK := $(RUN)/compose-up

TESTS := test-health test-all-peers test-count test-increment test-retry test-sync test-peers \
         test-remove-existing-peer test-discovery

.DEFAULT_GOAL := up
.PHONY: up install constraints cluster status stop reset logs lint test test-fast bench clean \
        wheelhouse image base-image compose-up compose-down test-full $(TESTS)

up:
	@if $(docker_answers); then \
	  command -v $(firstword $(COMPOSE)) >/dev/null || { \
	    echo "make: $(why_docker), but there is no $(firstword $(COMPOSE)): install it, or make DOCKER=no" >&2; exit 1; }; \
	  echo "make: $(why_docker): starting the compose cluster ($(COMPOSE), image $(IMAGE))"; \
	  $(MAKE) --no-print-directory compose-up; \
	else \
	  echo "make: no Docker engine answers (docker info): starting local twistd processes (make cluster)"; \
	  $(MAKE) --no-print-directory cluster; \
	fi

install: $(VENV)/.installed

# A regular (compat) editable install: twistd finds plugins by scanning
# sys.path for twisted/plugins/, which a PEP 660 editable install hides.
# Versions come from constraints.txt (setup.py keeps ranges for library users).
$(VENV)/.installed: setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[test]" --config-settings editable_mode=compat
	touch $@

# Re-pin: the newest versions within setup.py's ranges, in a throwaway venv.
# Run after changing setup.py's dependencies; commit constraints.txt.
constraints:
	rm -rf $(RUN)/constraints-venv
	$(PYTHON) -m venv $(RUN)/constraints-venv
	$(RUN)/constraints-venv/bin/pip install -q --upgrade pip
	$(RUN)/constraints-venv/bin/pip install -q ".[test]"
	{ echo "# Pinned versions for make install, .ci/run and the image; regenerate with: make constraints"; \
	  $(RUN)/constraints-venv/bin/pip freeze --exclude dcounter; } > constraints.txt
	rm -rf $(RUN)/constraints-venv
	@echo "constraints.txt: $$(grep -c '==' constraints.txt) pins"

cluster: install
	@$(LOCAL) start --ports $(PORTS) -- $(NODE_OPTIONS)
	@$(CHECK) wait
	@$(MAKE) --no-print-directory status

status:
	@for url in $(NODES); do \
	  printf '%s  ' $$url; \
	  $(PYTHON) -c "import sys, urllib.request as u; print(*(u.urlopen(sys.argv[1] + p, timeout=1).read().decode().strip() for p in ('/count', '/peers')))" $$url \
	    2>/dev/null || echo down; \
	done

# Stops what `make` started, whichever kind, and waits until it has stopped.
stop:
	@if [ -f $(COMPOSE_MARK) ]; then $(COMPOSE_EXTRA) down && rm -f $(COMPOSE_MARK); fi
	@if [ -d $(RUN) ] && [ -x $(BIN)/python ]; then $(LOCAL) stop; fi

# Stop, then delete the nodes' data: counters start again from 0.
reset:
	@if [ -f $(COMPOSE_MARK) ] || { $(docker_answers) && command -v $(firstword $(COMPOSE)) >/dev/null; }; then \
	  $(COMPOSE_EXTRA) down -v && rm -f $(COMPOSE_MARK); fi
	@if [ -d $(RUN) ] && [ -x $(BIN)/python ]; then $(LOCAL) stop; fi
	rm -rf $(RUN)/data-*

logs:
	@if [ -f $(COMPOSE_MARK) ]; then $(COMPOSE_EXTRA) logs --tail=50 $(FOLLOW); \
	else tail -n 50 $(FOLLOW) $(RUN)/*.log; fi

# The original's checks; each exits non-zero with one line saying what is wrong.
test-full:
	@for t in $(TESTS); do \
	  echo "== $$t"; $(MAKE) --no-print-directory $$t || { echo "test-full: $$t failed" >&2; exit 1; }; \
	done; echo "test-full: all $(words $(TESTS)) checks passed against $(words $(NODES)) nodes"

test-health test-all-peers test-count test-increment test-retry test-sync test-peers test-remove-existing-peer:
	@$(CHECK) $(@:test-%=%)

# Starts a fourth node, checks that every node finds it (and it them), stops it.
test-discovery:
	@if [ -f $(COMPOSE_MARK) ]; then \
	  $(COMPOSE_EXTRA) up -d --no-build --scale extra=1 extra >/dev/null 2>&1 || { echo "FAIL test-discovery: could not start the extra node" >&2; exit 1; }; \
	  url=http://$$($(COMPOSE_EXTRA) port extra 8080); stop="$(COMPOSE_EXTRA) rm -fsv extra"; \
	else \
	  $(LOCAL) start --ports $(EXTRA_PORT) -- $(NODE_OPTIONS) || exit 1; \
	  url=http://$(HOST):$(EXTRA_PORT); stop="$(LOCAL) stop --ports $(EXTRA_PORT)"; \
	fi; \
	echo "  started a fourth node: $$url"; \
	$(CHECK) discovery --extra $$url; rc=$$?; $$stop >/dev/null 2>&1; echo "  stopped $$url"; exit $$rc

# Docker.  `make image` builds the wheelhouse (on the host: no PyPI needed in the build) and
# the image; `make base-image` makes a Debian base for hosts that cannot reach Docker Hub.
wheelhouse: install
	rm -rf wheelhouse
	$(BIN)/pip wheel -q --wheel-dir wheelhouse -c constraints.txt .

image: wheelhouse
	@docker image inspect $(BASE) >/dev/null 2>&1 || docker pull -q $(BASE) >/dev/null 2>&1 || { \
	  echo "make image: cannot pull $(BASE); make a base from Debian packages with 'make base-image'" >&2; exit 1; }
	docker build -q --build-arg BASE=$(BASE) -t $(IMAGE) .

base-image:
	@command -v debootstrap >/dev/null || { echo "make base-image: needs debootstrap (apt-get install debootstrap), as root" >&2; exit 1; }
	rm -rf $(RUN)/base && mkdir -p $(RUN)
	debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm $(RUN)/base $(MIRROR) >$(RUN)/base.log
	tar -C $(RUN)/base -c . | docker import - dcounter-base:bookworm
	rm -rf $(RUN)/base

compose-up: image
	@mkdir -p $(RUN) && touch $(COMPOSE_MARK)
	$(COMPOSE) up -d --no-build
	@$(CHECK) wait
	@$(MAKE) --no-print-directory status

compose-down:
	$(COMPOSE_EXTRA) down
	rm -f $(COMPOSE_MARK)

lint: install
	$(BIN)/ruff check dcounter tests twisted setup.py benchmarks scripts
	$(BIN)/ruff format --check dcounter tests twisted setup.py benchmarks scripts
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not netns"

# The suite (needs wrk and taskset); BENCH_ARGS=--quick for a 3-minute run.
bench: install
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# stop waits until the nodes have exited, so nothing writes into run/ as it goes.
clean: stop
	rm -rf $(RUN) build *.egg-info wheelhouse
