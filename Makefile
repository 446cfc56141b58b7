# `make demo` and `make test` are all the set-up a fresh machine needs: each
# bootstraps the Debian packages and the virtualenv it uses.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the project uses: C++ compilers that link the .so files (host and cross), and
# qemu for the emulated ARM board (whose arm64 packages apt-get downloads: it needs the arm64 architecture).
DEB_PACKAGES := g++ g++-aarch64-linux-gnu g++-arm-linux-gnueabihf qemu-user-static

.PHONY: demo test system-packages venv clean

demo: venv
	$(PY) benchmarks/demo.py

test: venv
	$(PY) -m pytest -q

venv: system-packages $(STAMP)

system-packages:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	arm64=$$(dpkg --print-foreign-architectures | grep -qx arm64 || echo no); \
	if [ -n "$$missing" ] || [ -n "$$arm64" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    dpkg --add-architecture arm64 && apt-get update -q && \
	    { [ -z "$$missing" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }; \
	  else echo "Run: sudo dpkg --add-architecture arm64 && sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[larq,test]"
	touch $@

clean:
	rm -rf $(VENV) tests/fixtures/cache
