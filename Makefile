PYTHON ?= python
PYTEST = $(PYTHON) -m pytest

.PHONY: install demo test test-all test-gpu
install:
	PYTHON=$(PYTHON) bash scripts/install.sh

# The main job: fastrnn against torch.nn on an embedded default.
demo: install
	$(PYTHON) examples/compare_lstm.py

# The test suite as CI runs it (Triton kernels under the interpreter when there is no GPU).
test: install
	$(PYTEST) -q -m "not slow"

test-all: install
	$(PYTEST) -q
