# `make demo` and `make test` are all the set-up a fresh machine needs: each
# bootstraps the Debian packages and the virtualenv it uses.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The exact version of every Python package, host and board (bnn_tvm/lock.py); `make lock` regenerates it.
LOCK := bnn_tvm/requirements.lock
# Debian packages the project uses: C++ compilers that link the .so files (host and cross), qemu for the
# emulated ARM board (whose arm64 packages apt-get downloads: it needs the arm64 architecture), and for
# ARM profiles the dynamic qemu-user (which loads plugins; gcc builds the plugin on first use) and llvm (llvm-mca).
DEB_PACKAGES := g++ g++-aarch64-linux-gnu g++-arm-linux-gnueabihf qemu-user-static qemu-user llvm

.PHONY: demo test fuzz system-packages venv lock clean

demo: venv
	$(PY) benchmarks/demo.py

test: venv
	$(PY) -m pytest -q --durations=40

# Thousands of mutated models through `bnn-tvm compile` (tests/fuzzing.py); `make test` runs a hundred of them.
# Another seed gives other cases: `make fuzz FUZZ_SEED=7 FUZZ_CASES=500`.
FUZZ_CASES ?= 3000
FUZZ_SEED ?= 0
fuzz: venv
	$(PY) -m tests.fuzzing --cases $(FUZZ_CASES) --seed $(FUZZ_SEED) --json fuzz-$(FUZZ_SEED).json

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

# A new lock makes a new venv: installing over an old one would keep packages the lock no longer has.
# --no-deps: a package missing from the lock fails here instead of being downloaded unpinned.
$(STAMP): pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-deps $$(grep -E '^(pip|setuptools|wheel)==' $(LOCK))
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

# Resolve pyproject.toml's ranges afresh (every extra, the installers, the board's packages) into the lock.
# It needs only pip, not the venv being replaced.
lock:
	$(PYTHON) bnn_tvm/lock.py

clean:
	rm -rf $(VENV) build dist *.egg-info
