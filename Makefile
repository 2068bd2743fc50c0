# The README's commands. Each works on a fresh machine by itself: it creates
# (or reuses) a virtual environment that also sees the system's packages, so a
# torch already installed is used as is; installs torch ($(TORCH_SPEC)) only
# when none is importable; installs rlsignals in editable mode; and compiles
# the C++ (and, where torch has CUDA, the CUDA) kernels once.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rlsignals-installed

.PHONY: demo test test-slow test-all real lint bench doctor clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[test,lint]"
	-$(PY) -m rlsignals build
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m rlsignals demo --overwrite

test: $(STAMP)
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

test-all: $(STAMP)
	$(PY) -m pytest

real: $(STAMP)
	$(PY) -m rlsignals setup-real

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	cd bench && for script in angle_stats delta_svd score_dataset checkpoint_rank1 train_step demo; do ../$(PY) $$script.py || exit 1; done

doctor: $(STAMP)
	$(PY) -m rlsignals doctor

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
