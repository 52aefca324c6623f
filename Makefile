# `make test` and `make demo` do all the set-up a fresh machine needs.
# Each install step leaves a stamp in .venv/.stamps and reruns only when the
# files it reads change, so a run with nothing to do takes seconds.
# `make distclean` (or deleting .venv) starts over.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := install

PYTHON ?= python3.11
REQUIREMENTS ?= requirements.txt
VENV := .venv
VPY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
MSG_BUILD := build/msgs
MSG_FILES := $(wildcard msg/*.msg)
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
APT_PACKAGES := libusb-1.0-0 cmake g++ espeak-ng

# pip's machine-wide configuration lists local package folders that do not
# hold every project, and pip warns once per folder and project. Drop just
# those lines; errors and other warnings stay visible.
PIP := $(VPY) -m pip --disable-pip-version-check
PIP_FILTER := { grep -v -E "^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.$$" || true; }

SPATIALOC := $(VENV)/bin/spatialoc
DEMO_MAP := data/demo_map
DEMO_SCENE := 2013_05_28_drive_0010_sync

.PHONY: install install-steps system-packages test demo clean distclean

# One install at a time: `make test` runs started side by side in this tree
# wait here, then find the stamps fresh instead of rebuilding the venv twice.
install:
	@mkdir -p build
	@$$(command -v flock >/dev/null && echo flock build/install.lock) \
	  $(MAKE) --no-print-directory install-steps

install-steps: system-packages $(STAMPS)/package $(STAMPS)/msgs

# Checked on every run (dpkg is fast); apt-get runs only for missing packages.
system-packages:
	@command -v dpkg >/dev/null || { echo "no dpkg: install $(APT_PACKAGES) yourself" >&2; exit 0; }; \
	missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg -s "$$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; \
	  if [ "$$(id -u)" != 0 ]; then \
	    command -v sudo >/dev/null || { echo "need root or sudo to install:$$missing" >&2; exit 1; }; \
	    sudo=sudo; \
	  fi; \
	  echo "apt-get install$$missing"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The ROS wheels are built for CPython 3.11, so the venv must be 3.11.
$(STAMPS)/requirements: $(REQUIREMENTS) | system-packages
	@if ! $(VPY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then \
	  command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found (ROS wheels need CPython 3.11)" >&2; exit 1; }; \
	  echo "creating $(VENV) with $(PYTHON)"; \
	  rm -rf $(VENV); \
	  $(PYTHON) -m venv $(VENV); \
	  $(VPY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
	    || { echo "$(PYTHON) is not CPython 3.11" >&2; exit 1; }; \
	fi
	@# colcon must not mistake the ROS packages inside the venv for sources.
	@touch $(VENV)/COLCON_IGNORE
	@echo "pip install -r $(REQUIREMENTS) (about 2 minutes the first time)"
	@$(PIP) install -q --progress-bar off -r $(REQUIREMENTS) 2>&1 | $(PIP_FILTER)
	@mkdir -p $(STAMPS) && touch $@

# Editable: the repository folder itself is the installed package. setuptools
# comes with the requirements (the msg build needs it too), hence no isolation.
$(STAMPS)/package: setup.py setup.cfg package.xml $(STAMPS)/requirements
	@echo "pip install --no-deps -e ."
	@$(PIP) install -q --no-deps --no-build-isolation --use-pep517 -e . 2>&1 | $(PIP_FILTER)
	@touch $@

# msg/ -> C/C++/Python interfaces, built against the ROS wheels and installed
# into the venv (its lib/ is on the bootstrapper's library path, so no
# environment variables are needed). Files of the previous install are
# removed first so that a deleted message does not linger.
$(STAMPS)/msgs: CMakeLists.txt package.xml $(MSG_FILES) $(STAMPS)/requirements
	@echo "building msg/ into $(VENV) (log: $(MSG_BUILD).log)"
	@mkdir -p build && touch build/COLCON_IGNORE
	@if [ -f $(MSG_BUILD)/install_manifest.txt ]; then \
	  xargs -r -d '\n' rm -f < $(MSG_BUILD)/install_manifest.txt; \
	fi
	@if ! { cmake -S . -B $(MSG_BUILD) \
	      -DSPATIALOC_INTERFACES_ONLY=ON \
	      -DCMAKE_BUILD_TYPE=Release \
	      -DCMAKE_INSTALL_PREFIX="$(abspath $(VENV))" \
	      -DCMAKE_PREFIX_PATH="$(abspath $(VENV))" \
	      -DPython3_EXECUTABLE="$(abspath $(VPY))" \
	      -DBUILD_TESTING=OFF \
	    && cmake --build $(MSG_BUILD) -j $(JOBS) \
	    && cmake --install $(MSG_BUILD); \
	  } > $(MSG_BUILD).log 2>&1; then \
	  tail -n 40 $(MSG_BUILD).log; \
	  echo "message build failed; full log: $(MSG_BUILD).log" >&2; \
	  exit 1; \
	fi
	@touch $@

test: install
	$(VPY) -m pytest test -q -p no:cacheprovider

# The main job: the localizer node in its own process on the demo map (generated once;
# .complete marks a finished run), queried over DDS by a speech-to-text stand-in and by
# one description spoken with espeak-ng and transcribed offline with pocketsphinx.
demo: install
	@if [ ! -f $(DEMO_MAP)/.complete ]; then \
	  rm -rf $(DEMO_MAP); \
	  echo "$(SPATIALOC) data synth --preset small --seed 0 --out $(DEMO_MAP)"; \
	  $(SPATIALOC) data synth --preset small --seed 0 --out $(DEMO_MAP); \
	  touch $(DEMO_MAP)/.complete; \
	fi
	@mkdir -p out
	$(VPY) -m spatialoc_ros.ros.demo --map $(DEMO_MAP) --scene $(DEMO_SCENE) --weights models \
	  --params-file config/localize.yaml --out out/demo_localization.png

clean:
	rm -rf build $(STAMPS)/msgs

distclean:
	rm -rf build $(VENV)
