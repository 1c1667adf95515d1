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
# pip's output less one line this workplace's pip configuration prints; braced, so that under pipefail a
# failing pip still fails the pipeline.
QUIET_PIP := { grep -v -e "is ignored: it is neither a file nor a directory" || true; }

.PHONY: setup course test lab weights bench clean help
help:
	@echo "make course   set up, train what is missing (or use shipped weights), execute every lesson into build/"
	@echo "make test     set up, then run the unit tests and execute every lesson under the test profile"
	@echo "make lab      start JupyterLab on the lessons, with the '$(KERNEL)' kernel"
	@echo "make weights  (re)train every model for the active profile (resumes where it stopped)"
	@echo "make bench    run the benchmarks in bench/ (results in bench/results/)"

setup: $(STAMP)

# torch, when missing: PyPI's build everywhere but on Linux without an NVIDIA GPU (no nvidia-smi), where
# PyPI's is the CUDA build (about 3 GB with its nvidia-* wheels); there the CPU build from PyTorch's own index
# (a 192 MB wheel), falling back to PyPI if that index cannot be reached (15 s, no retries).
TORCH := torch==2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# Idempotent: re-runs only when the requirements or pyproject.toml change. torch is installed only when it
# is missing (never replacing a CUDA torch), and pinned as a constraint so no dependency can upgrade it.
$(STAMP): requirements.txt requirements-colab.txt pyproject.toml
	@py=$$(test -x $(PY) && echo $(PY) || echo $(PYTHON)); \
	$$py -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || { echo "error: the course needs" \
		"Python 3.10 or newer; $$py is $$($$py -V 2>&1 | tail -n 1 || echo missing). Install one (python.org," \
		"brew install python@3.12, apt install python3.12) and run: make setup PYTHON=python3.12" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "error: '$(PYTHON) -m venv' failed;" \
		"on Debian/Ubuntu install the venv module first: sudo apt install python3-venv" >&2; exit 1; }
	@$(PY) -m pip --version >/dev/null 2>&1 || { echo "error: $(VENV) has no pip (a venv made without" \
		"ensurepip); remove it, install python3-venv (Debian/Ubuntu: sudo apt install python3-venv), run make again" >&2; exit 1; }
	@$(PY) -c "import torch" 2>/dev/null || { set -o pipefail; \
		if [ "$$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then \
			echo "installing torch (missing): the CPU build, a download of about 200 MB (no NVIDIA GPU found)"; \
			$(PIP) install -q --timeout 15 --retries 0 --index-url $(TORCH_CPU_INDEX) "$(TORCH)" 2>&1 | $(QUIET_PIP) || { \
				echo "no torch from $(TORCH_CPU_INDEX): PyPI's instead (on Linux the CUDA build, about 3 GB)"; \
				$(PIP) install -q "$(TORCH)" 2>&1 | $(QUIET_PIP); }; \
		else \
			echo "installing torch (missing): about 110-130 MB on macOS and Windows, about 3 GB with CUDA on Linux"; \
			$(PIP) install -q "$(TORCH)" 2>&1 | $(QUIET_PIP); \
		fi; }
	@$(PY) -c "import torch" 2>/dev/null || { echo "error: torch did not install (see pip's message above)" >&2; exit 1; }
	@$(PY) -W ignore -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/course-constraints.txt
	@echo "installing requirements (torch kept at $$(cat $(VENV)/course-constraints.txt))"
	@set -o pipefail; $(PIP) install -q -c $(VENV)/course-constraints.txt -r requirements.txt 2>&1 | $(QUIET_PIP)
	@set -o pipefail; $(PIP) install -q --no-deps -r requirements-colab.txt 2>&1 | $(QUIET_PIP)
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
	@for b in throughput train_denoiser samplers guidance clip text_to_image language_encoder latent flow_matching unclip guidance_methods; do echo "== bench/$$b.py"; $(PY) bench/$$b.py || exit 1; done

lab: setup
	@$(PY) -c "import jupyterlab" 2>/dev/null || { set -o pipefail; $(PIP) install -q -c $(VENV)/course-constraints.txt "jupyterlab>=4,<5" 2>&1 | $(QUIET_PIP); }
	$(PY) -m jupyter lab --notebook-dir=lessons

clean:
	rm -rf build .pytest_cache
