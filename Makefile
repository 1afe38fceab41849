# Edgeway: `make lab` runs the embedded lab demo, `make test` runs the test suite.
# Both create .venv when missing and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEB_TEST_PEERS := sip-tester kamailio kamailio-tls-modules baresip openssl curl coturn tinyproxy tshark chromium
DEB_TEST_BINS := sipp kamailio baresip openssl curl turnutils_stunclient tinyproxy tshark chromium
# bench/calls_bench.py also needs stunnel (TLS legs in front of SIPp, which has no TLS).
DEB_BENCH_PEERS := stunnel4 nghttp2-client

.PHONY: lab lab-up test venv debdeps benchdeps bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Debian test peers (SIPp, ...): installed with apt-get when running as root and missing.
debdeps:
	@missing=""; for b in $(DEB_TEST_BINS); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	ls /usr/lib/*/kamailio/modules/tls.so >/dev/null 2>&1 || missing="$$missing kamailio-tls"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian test peers: $(DEB_TEST_PEERS)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_TEST_PEERS) >/dev/null; \
	  else echo "warning: missing$$missing and not root; interop tests will be skipped"; fi; \
	fi

lab: $(STAMP)
	$(BIN)/edgeway lab

lab-up: $(STAMP)
	$(BIN)/edgeway lab up

test: $(STAMP) debdeps
	$(BIN)/python -m pytest -q

# Bench peers (stunnel, h2load): installed with apt-get when running as root and missing.
benchdeps: debdeps
	@if ! command -v h2load >/dev/null || { ! command -v stunnel4 >/dev/null && ! command -v stunnel >/dev/null; }; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian bench peers: $(DEB_BENCH_PEERS)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_BENCH_PEERS) >/dev/null; \
	  else echo "warning: stunnel or h2load missing and not root; the calls bench skips its TLS rows, the HTTPS bench uses its Python client"; fi; \
	fi

bench: $(STAMP) benchdeps
	$(BIN)/python bench/relay_bench.py
	$(BIN)/python bench/calls_bench.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
