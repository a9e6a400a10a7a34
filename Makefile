# ModelOps: two commands do everything on a fresh machine.
#   make demo   set up, start the embedded stack, register the demo model, run optimize_model end to end
#   make test   set up, then the whole test suite (unit, DAG integrity, worker steps, integration on the real stack)
SHELL := /bin/bash
PY ?= python3
VENV := .venv
WORKER := .venv-worker
PIP_QUIET := -q --disable-pip-version-check
# pip prints one line per package for the machine's optional local indexes; keep the log readable.
PIP_FILTER := 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
# Every install of an environment is constrained by its lock, constraints/<env>.txt (all packages, transitive ones
# included), so a fresh clone installs what the tests ran on. `make lock` regenerates the locks (scripts/lock.py).
LOCK = -c constraints/$(1).txt

.PHONY: lock setup orchestrator worker modelopt openwebui llamacpp model-analyzer tools demo test test-unit test-worker test-integration bench gpu-check docs monitoring dashboards stack-up stack-down lint clean

setup: orchestrator worker tools openwebui

orchestrator: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt constraints/orchestrator.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) --upgrade pip $(PIP_FILTER)
	set -o pipefail; $(VENV)/bin/pip install $(PIP_QUIET) $(call LOCK,orchestrator) -r requirements.txt -r requirements-dev.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	set -o pipefail; $(VENV)/bin/pip install $(PIP_QUIET) --no-deps -e . 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $@

worker: $(WORKER)/.installed
$(WORKER)/.installed: requirements-worker.txt requirements-worker-nodeps.txt constraints/worker.txt pyproject.toml
	test -x $(WORKER)/bin/python || $(PY) -m venv $(WORKER)
	$(WORKER)/bin/pip install $(PIP_QUIET) --upgrade pip $(PIP_FILTER)
	set -o pipefail; $(WORKER)/bin/pip install $(PIP_QUIET) $(call LOCK,worker) -r requirements-worker.txt -r requirements-dev.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	set -o pipefail; $(WORKER)/bin/pip install $(PIP_QUIET) --no-deps $(call LOCK,worker) -r requirements-worker-nodeps.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	set -o pipefail; $(WORKER)/bin/pip install $(PIP_QUIET) --no-deps -e . 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $@

# NVIDIA ModelOpt (INT8/FP8 Q/DQ for TensorRT) pins onnx/onnxruntime-gpu versions of its own: separate env,
# optional (about 4 min and 2 GB); without it the modelopt_* variants are skipped with this hint.
modelopt: .venv-modelopt/.installed
.venv-modelopt/.installed: requirements-modelopt.txt constraints/modelopt.txt
	test -x .venv-modelopt/bin/python || $(PY) -m venv .venv-modelopt
	set -o pipefail; .venv-modelopt/bin/pip install $(PIP_QUIET) $(call LOCK,modelopt) -r requirements-modelopt.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	set -o pipefail; .venv-modelopt/bin/pip install $(PIP_QUIET) --no-deps -e . 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $@

# Open WebUI (the stack's chat UI) pins fastapi/pydantic versions of its own: separate env (about 3 min and 3 GB).
# A stack without it still starts (the openwebui service is skipped with a hint).
openwebui: .venv-openwebui/.installed
.venv-openwebui/.installed: requirements-openwebui.txt constraints/openwebui.txt
	test -x .venv-openwebui/bin/python || $(PY) -m venv .venv-openwebui
	set -o pipefail; .venv-openwebui/bin/pip install $(PIP_QUIET) $(call LOCK,openwebui) -r requirements-openwebui.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $@

# llama.cpp's OpenAI server (llama-cpp-python[server]), only for bench/llm.py's comparison: separate env, optional,
# not part of setup/test. It is a source distribution here: a native CPU build (about 25 min on a busy 2-core machine).
llamacpp: .venv-llamacpp/.installed
.venv-llamacpp/.installed: requirements-llamacpp.txt constraints/llamacpp.txt
	test -x .venv-llamacpp/bin/python || $(PY) -m venv .venv-llamacpp
	.venv-llamacpp/bin/pip install $(PIP_QUIET) --upgrade pip $(PIP_FILTER)
	set -o pipefail; CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
	  CMAKE_BUILD_PARALLEL_LEVEL=2 .venv-llamacpp/bin/pip install $(PIP_QUIET) $(call LOCK,llamacpp) -r requirements-llamacpp.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $@

# bench/config_search.py only (not make test): Triton Model Analyzer in its own venv, CPU remote mode
model-analyzer: .venv-ma/.installed
.venv-ma/.installed: requirements-ma.txt constraints/ma.txt
	test -x .venv-ma/bin/python || $(PY) -m venv .venv-ma
	set -o pipefail; .venv-ma/bin/pip install $(PIP_QUIET) $(call LOCK,ma) -r requirements-ma.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $@

# Regenerate every lock from the requirement files (pip's resolver, nothing installed; about a minute or two).
# LOCK_ARGS: e.g. `ENV...` to lock some, or `--airflow-constraints FILE` (scripts/lock.py --help).
lock:
	$(PY) scripts/lock.py $(LOCK_ARGS)

tools: .tools/.installed
.tools/.installed: scripts/install_tools.sh $(WORKER)/.installed
	PYTHON=$(WORKER)/bin/python scripts/install_tools.sh
	touch $@

demo: setup
	$(VENV)/bin/modelops demo

stack-up: setup
	$(VENV)/bin/modelops stack up

stack-down:
	$(VENV)/bin/modelops stack down

# tests/chaos (marker chaos: faults and fuzzing) run last, on the integration tests' stack in the same session.
test: setup
	$(WORKER)/bin/python -m pytest tests/worker -q -p no:cacheprovider
	$(VENV)/bin/python -m pytest tests/unit tests/dags tests/integration tests/chaos -q -p no:cacheprovider

test-unit: orchestrator
	$(VENV)/bin/python -m pytest tests/unit tests/dags -q

test-worker: worker tools
	$(WORKER)/bin/python -m pytest tests/worker -q

test-integration: setup
	$(VENV)/bin/python -m pytest tests/integration tests/chaos -q

bench: setup
	$(VENV)/bin/python bench/dag_import.py
	$(VENV)/bin/python bench/e2e.py
	$(WORKER)/bin/python bench/speedups.py

# GPU check for a lent GPU machine (no network, no setup): discovery, ORT CUDA vs torch, ModelOpt, TensorRT ->
# bench/results/gpu_check.json; without a GPU every GPU check says skipped (scripts/gpu_check.sh)
gpu-check:
	scripts/gpu_check.sh

# docs/configuration.md's settings table, generated from modelops/settings.py (tests/unit/test_settings.py checks it)
docs: orchestrator
	$(VENV)/bin/python -m modelops.settings_docs --update-readme docs/configuration.md

# Alert rules and dashboards (monitoring/): promtool checks and unit-tests the rules, the dashboards are up to date
monitoring: orchestrator  # promtool: Debian's prometheus package (`make tools`)
	promtool check rules monitoring/rules/*.yml
	promtool test rules monitoring/tests/*.yml
	$(VENV)/bin/python monitoring/dashboards/generate.py --check

# Regenerate monitoring/dashboards/*.json from monitoring/dashboards/generate.py
dashboards: orchestrator
	$(VENV)/bin/python monitoring/dashboards/generate.py

clean:
	-$(VENV)/bin/modelops stack down
	rm -rf .stack .stack-test
