# From Noise to Digits. The README's two commands are `make course` and `make test`; both run `make setup`.
# Without make (e.g. Windows), the plain commands are listed in README.md under "Without make".
SHELL := /bin/bash
PYTHON ?= python3
# A project-local virtual environment, unless one is already active.
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := $(CURDIR)/.venv
endif
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.course-setup-done
KERNEL := noise-to-digits
# make test: one process per core (at most 4), one torch thread each; a lesson's cells stay in one process.
PARALLEL := -n auto --maxprocesses 4 --dist loadscope --no-loadscope-reorder
QUIET_PIP := grep -v -e "is ignored: it is neither a file nor a directory" || true

.PHONY: setup course test lab weights bench clean help
help:
	@echo "make course   set up, train what is missing (or use shipped weights), execute every lesson into build/"
	@echo "make test     set up, then run the unit tests and execute every lesson under the test profile"
	@echo "make lab      start JupyterLab on the lessons, with the '$(KERNEL)' kernel"
	@echo "make weights  (re)train every model for the active profile (resumes where it stopped)"
	@echo "make bench    run the benchmarks in bench/ (results in bench/results/)"

setup: $(STAMP)

# Idempotent: re-runs only when requirements.txt or pyproject.toml change. torch is installed only when it
# is missing (never replacing a CUDA torch), and pinned as a constraint so no dependency can upgrade it.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || { echo "installing torch (missing)"; \
		set -o pipefail; $(PIP) install -q "torch==2.13.0" 2>&1 | $(QUIET_PIP); }
	@$(PY) -W ignore -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/course-constraints.txt
	@echo "installing requirements (torch kept at $$(cat $(VENV)/course-constraints.txt))"
	@set -o pipefail; $(PIP) install -q -c $(VENV)/course-constraints.txt -r requirements.txt -e . 2>&1 | $(QUIET_PIP)
	@$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "From Noise to Digits" >/dev/null
	@touch $@
	@echo "setup done: $(VENV)"

test: setup
	COURSE_PROFILE=test OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PARALLEL) --nbval-lax --nbval-current-env tests lessons

course: setup
	$(PY) -m course_lib course

weights: setup
	$(PY) -m course_lib weights

bench: setup
	@for b in throughput train_denoiser samplers guidance clip text_to_image language_encoder latent flow_matching unclip; do echo "== bench/$$b.py"; $(PY) bench/$$b.py || exit 1; done

lab: setup
	@$(PY) -c "import jupyterlab" 2>/dev/null || { set -o pipefail; $(PIP) install -q -c $(VENV)/course-constraints.txt "jupyterlab>=4,<5" 2>&1 | $(QUIET_PIP); }
	$(PY) -m jupyter lab --notebook-dir=lessons

clean:
	rm -rf build .pytest_cache
