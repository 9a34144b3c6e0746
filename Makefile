# parbp — two commands do everything:  make study   and   make test
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PROFILE ?= default
# torch is pinned so pip takes the CPU build instead of resolving the newest CUDA build (GBs)
TORCH   ?= torch==2.13.0
# the emulated hosts' delay line (NetfilterQueue) compiles against libnetfilter-queue-dev: without it that
# extra is left out and parbp.hosts says, in one line, what it needs (its tests skip with that reason)
comma   := ,
HOSTS   := $(if $(wildcard /usr/include/libnetfilter_queue/libnetfilter_queue.h),$(comma)hosts)
EXTRAS  ?= dev,baselines$(HOSTS)
# Some machines export OPENBLAS_CORETYPE (this workplace pins Haswell, i.e. AVX2 kernels, even on
# AVX-512 CPUs). Measurements should use the kernels OpenBLAS picks for the CPU it finds, so the study
# and the benchmark run without that override; the recorded environment names the kernels used.
MEASURE ?= env -u OPENBLAS_CORETYPE
THEANO_ENV ?= .theano-env
THEANO_PY  ?= python3.11

.PHONY: install study test bench lab book theano-env clean gpu-payload

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed

# Runs every numbered notebook in order with papermill (PROFILE=default, timed in figures/study_times_default.csv;
# PROFILE=paper: the paper-scale experiments). Executed copies go to build/executed/, figures to figures/.
# A rerun skips the runs that finished and have not changed (and resumes 08's training where it
# stopped); FORCE=1 reruns everything.
study: install
	$(MEASURE) $(BIN)/python -m parbp.study --profile $(PROFILE) --publish $(if $(FORCE),--force)

# nbval re-executes the notebooks (notebooks/ and tests/ are pyproject's testpaths); conftest.py gives
# nbval the sanitizer and sends the notebooks' figures to build/test-figures, so committed results stay
# as the study made them, and a plain `pytest --nbval` at the root runs exactly this
test: install
	$(BIN)/python -m pytest --nbval

bench: install
	$(MEASURE) $(BIN)/python -m parbp.bench --net 2h --batch 10 100 1000 --impl all threads:update=partials --threads 1 2 --repeats 11

lab: install
	$(MEASURE) $(BIN)/jupyter lab notebooks/

# The study as a static HTML site (build/book/index.html, works offline): the executed notebooks of the
# last `make study` (build/executed/), or the stored ones when there are none
book: install
	$(BIN)/python -m parbp.book

# Theano (theano-pymc 1.1.2) needs numpy < 1.24: it lives in its own pinned venv and runs out of process.
theano-env: $(THEANO_ENV)/.installed
$(THEANO_ENV)/.installed:
	$(THEANO_PY) -m venv $(THEANO_ENV)
	$(THEANO_ENV)/bin/python -m pip install -q "numpy==1.23.5" "scipy==1.11.4" "theano-pymc==1.1.2"
	@touch $@

clean:
	rm -rf build .pytest_cache

# What the GPU campaign needs beyond the tree, for a machine with no network (README: "Running the GPU
# campaign"): setuptools >= 77 as a wheel (to build parbp there) and the MNIST files; then the size of the
# trip (the tree + the payload), which fails above 64 MiB. Run it there: bash gpu/campaign.sh OUT
PAYLOAD ?= build/gpu-payload
gpu-payload: install
	$(BIN)/python -m parbp.gpu_campaign --payload $(PAYLOAD)
