# The README's two commands live here: `make run` and `make test`.
# Both install what they need on a fresh machine (apt packages, .venv, package).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PKGS := fuse3 libfuse3-dev pkg-config attr acl
# Only `make test` needs these: the status page is checked in a real browser,
# and the fault harness (tests/chaos) cuts links with nftables in namespaces.
APT_TEST_PKGS := chromium chromium-driver nftables iproute2

.PHONY: run test chaos stop bench sysdeps testdeps venv clean install-mount-helper install uninstall

# `make install`: chordfs in its own environment, its commands on PATH, the
# units where systemd looks, mount.chordfs where mount(8) looks. Every
# directory can be moved (a package build, a test): make install OPT=/tmp/x ...
OPT      ?= /opt/chordfs
BINDIR   ?= /usr/local/bin
SBINDIR  ?= /sbin
UNITDIR  ?= /etc/systemd/system
CONFDIR  ?= /etc/chordfs

sysdeps:
	@if ! pkg-config --exists fuse3 2>/dev/null || ! command -v fusermount3 >/dev/null \
	     || ! command -v setfattr >/dev/null || ! command -v setfacl >/dev/null || ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
	  echo "installing system packages: $(APT_PKGS) python3-venv"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) python3-venv >/dev/null; \
	fi

$(STAMP): pyproject.toml | sysdeps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: sysdeps $(STAMP)

testdeps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
	     || ! command -v nft >/dev/null || ! command -v ip >/dev/null; then \
	  echo "installing test packages: $(APT_TEST_PKGS)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_TEST_PKGS) >/dev/null; \
	fi

run: venv
	$(VENV)/bin/chordfs demo

stop:
	-$(VENV)/bin/chordfs demo-stop

# Two workers; tests marked xdist_group("heavy") (long real-process runs
# with timing budgets) share one worker so they never overlap each other.
test: venv testdeps
	$(PY) -m pytest -q -n 2 --dist loadgroup

# Seeded fault scenarios on real processes in network namespaces (root):
# make chaos RUNS=50 SEED=3 (without RUNS: every kind once). A short version
# runs in make test.
SEED ?= 1
chaos: venv testdeps
	$(PY) -m tests.chaos $(if $(RUNS),--runs $(RUNS)) --seed $(SEED)

bench: venv
	$(PY) benchmarks/rpc_bench.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis

install-mount-helper: venv
	$(VENV)/bin/chordfs install-mount-helper

install: sysdeps
	@test -x $(OPT)/bin/python || $(PYTHON) -m venv $(OPT)
	$(OPT)/bin/python -m pip install -q --upgrade pip
	$(OPT)/bin/python -m pip install -q .
	install -d $(BINDIR) $(SBINDIR) $(UNITDIR)
	install -d -m 0700 $(CONFDIR)/tls
	ln -sfn $(OPT)/bin/chordfs $(BINDIR)/chordfs
	ln -sfn $(OPT)/bin/mount.chordfs $(SBINDIR)/mount.chordfs
	install -m 0644 systemd/chordfs-node@.service systemd/chordfs.target $(UNITDIR)/
	@if [ -d /run/systemd/system ] && [ "$(UNITDIR)" = /etc/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed: $(BINDIR)/chordfs, $(SBINDIR)/mount.chordfs, units in $(UNITDIR) (chordfs in $(OPT))"
	@echo "next: $(BINDIR)/chordfs example-config > $(CONFDIR)/NAME.toml, certificates into $(CONFDIR)/tls,"
	@echo "      systemctl enable --now chordfs-node@NAME (see README 'Running nodes and mounting')"

uninstall:
	rm -f $(BINDIR)/chordfs $(SBINDIR)/mount.chordfs
	rm -f $(UNITDIR)/chordfs-node@.service $(UNITDIR)/chordfs.target
	rm -rf $(OPT)
	@if [ -d /run/systemd/system ] && [ "$(UNITDIR)" = /etc/systemd/system ]; then systemctl daemon-reload; fi
	@echo "removed chordfs; $(CONFDIR) and node data directories are left as they were"
