# Fresh-clone bootstrap: every target builds .venv from pyproject.toml when it is
# missing or older than pyproject.toml, then runs inside it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= dev

.PHONY: test test-slow demo bench lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

# Default suite: float32 tests, then the float64 tests in their own process
# (jax_enable_x64 is global state). It is dominated by XLA compilation, most of it thousands of
# small eager-op programs, so it compiles for speed: XLA:CPU's loop emitters, LLVM at level 0,
# no expensive LLVM passes (an eager op compiles in 21 ms instead of 46 ms at the default
# settings; seven unit-test files ran in 23% less wall than with the loop emitters alone, side
# by side, cold). Results differ from the default settings by rounding, which at extreme scales
# can overflow: the property-based suite (below) runs at the default settings, and the bitwise
# multi-process test compiles at them. The slow lane runs long programs, which level 0 would
# run up to 5x slower: it keeps LLVM's optimizations.
# The test processes also lower every program in a reused MLIR context (tests/conftest.py: 8-9 %
# less wall per float32 group, measured side by side).
# Every process of the run (both pytest sessions, the notebook scripts, the CLI subprocesses)
# shares one persistent compilation cache, JAX_CACHE_DIR (kept between runs;
# `make test JAX_CACHE_DIR=` runs without it). Its key includes XLA_FLAGS and jaxlib;
# tests/conftest.py drops unreadable entries at the start of a session that follows one cut
# short. Bytecode is written even where the environment says not to (PYTHONDONTWRITEBYTECODE):
# without it every pytest process re-rewrites the asserts of every test module (~5 s each).
JAX_CACHE_DIR ?= $(CURDIR)/.jax_cache
FAST_COMPILE := --xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0 \
	--xla_llvm_disable_expensive_passes=true
SLOW_COMPILE := --xla_cpu_use_fusion_emitters=false
CACHE_ENV := PYTHONDONTWRITEBYTECODE= JAX_COMPILATION_CACHE_DIR="$(JAX_CACHE_DIR)" \
	JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
TEST_ENV := XLA_FLAGS="$(FAST_COMPILE) $$XLA_FLAGS" $(CACHE_ENV)
SLOW_ENV := XLA_FLAGS="$(SLOW_COMPILE) $$XLA_FLAGS" $(CACHE_ENV)
# The property-based suite compares float32 against float64 at extreme scales: it runs at XLA's
# default compiler settings (those users get; at optimization level 0 the extreme cases overflow).
PROPS := tests/test_properties.py
PROP_ENV := $(CACHE_ENV)
# Two lanes side by side (JOBS=2, the default): a pytest process uses about one core (XLA
# compiles on one thread, the tests' small programs run on one), so on 2 cores the float32 test
# files are dealt into two groups of about equal measured cost (--lane-shard, FILE_COST_S in
# tests/conftest.py); lane A runs group 0 then the property-based suite, lane B group 1 then the
# float64 tests. Each lane has its own compilation cache folder (JAX's cache writes are not
# atomic: a lane must not read an entry the other is writing). Lane B's output is printed when
# both have finished; the exit status is the first failing lane's. JOBS=1: one after another.
JOBS ?= 2
LANE_F32 = $(PY) -m pytest -q -m "not slow and not x64" --ignore=$(PROPS)
LANE_X64 = JAX_ENABLE_X64=1 $(PY) -m pytest -q -m "x64 and not slow" --x64-files
LANE_PROPS = $(PY) -m pytest -q -m "not slow and not x64" $(PROPS)
# The slow lane (`make test-slow`): the float32 slow tests dealt the same way by their own
# measured costs (--lane-costs=slow), the float64 slow tests in lane B. SLOW=listed runs only the
# default-suite tests moved there (SLOW_TESTS in tests/conftest.py), which CI runs after
# `make test` (.ci/run); SLOW=all (the default) every slow test.
SLOW ?= all
SLOW_F32 = $(PY) -m pytest -q -m "slow and not x64" --lane-costs=slow --slow-set=$(SLOW)
SLOW_X64 = JAX_ENABLE_X64=1 $(PY) -m pytest -q -m "slow and x64" --slow-set=$(SLOW) --x64-files
lane_cache = JAX_COMPILATION_CACHE_DIR="$(if $(JAX_CACHE_DIR),$(JAX_CACHE_DIR)/$(1),)"

# Two lanes: $(A1) then $(A2) in the foreground, $(B1) then $(B2) in the background (set per
# target below; each a full command line with its environment).
define run_lanes
	@log=$$(mktemp); \
	( $(B1); r=$$?; $(B2); s=$$?; [ $$r -ne 0 ] && exit $$r; exit $$s ) > $$log 2>&1 & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; rm -f $$log; exit 130' INT; \
	trap 'kill $$pid 2>/dev/null; rm -f $$log; exit 143' TERM; \
	echo "lane A: $(A_WHAT) (lane B's output follows)"; \
	$(A1); r=$$?; \
	$(A2); s=$$?; \
	wait $$pid; b=$$?; \
	echo "lane B: $(B_WHAT)"; cat $$log; rm -f $$log; \
	for c in $$r $$s $$b; do [ $$c -ne 0 ] && exit $$c; done; exit 0
endef

test: A_WHAT = float32 group 0, then the property-based suite
test: A1 = $(TEST_ENV) $(call lane_cache,lane-a) $(LANE_F32) --lane-shard=0/2
test: A2 = $(PROP_ENV) $(call lane_cache,lane-a) $(LANE_PROPS)
test: B_WHAT = float32 group 1, then the float64 tests
test: B1 = $(TEST_ENV) $(call lane_cache,lane-b) $(LANE_F32) --lane-shard=1/2
test: B2 = $(TEST_ENV) $(call lane_cache,lane-b) $(LANE_X64)
test: $(STAMP)
ifeq ($(JOBS),1)
	$(TEST_ENV) $(LANE_F32)
	$(PROP_ENV) $(LANE_PROPS)
	$(TEST_ENV) $(LANE_X64)
else
	$(run_lanes)
endif

# The slow lane has no property-based tests: all of it runs with SLOW_COMPILE.
test-slow: A_WHAT = slow float32 group 0
test-slow: A1 = $(SLOW_ENV) $(call lane_cache,lane-a) $(SLOW_F32) --lane-shard=0/2
test-slow: A2 = true
test-slow: B_WHAT = slow float32 group 1, then the slow float64 tests
test-slow: B1 = $(SLOW_ENV) $(call lane_cache,lane-b) $(SLOW_F32) --lane-shard=1/2
test-slow: B2 = $(SLOW_ENV) $(call lane_cache,lane-b) $(SLOW_X64)
test-slow: $(STAMP)
ifeq ($(JOBS),1)
	$(SLOW_ENV) $(SLOW_F32)
	$(SLOW_ENV) $(SLOW_X64)
else
	$(run_lanes)
endif

bench: $(STAMP)
	$(VENV)/bin/composition-jax bench --out bench_out --force

# The main job: the paper's synthetic findings decided by statistics, into $(DEMO_OUT)
# (report.md, figures, report.json). DEMO_SIZE=quick (default) | full (larger n, 1000 steps).
DEMO_OUT ?= reproduce_out
DEMO_SIZE ?= quick
demo: $(STAMP)
	$(VENV)/bin/composition-jax reproduce --out $(DEMO_OUT) --size $(DEMO_SIZE) --force

# The notebooks, executed in a Jupyter kernel and rendered to HTML with their outputs and figures
# into $(NOTEBOOKS_OUT) (the committed .ipynb stay without outputs). Installs the `notebooks`
# extra into .venv. NOTEBOOKS_QUICK=1 runs the small mode of the test suite (minutes instead of
# tens of minutes on 2 cores); a failed check prints CHECK FAILED in the rendered notebook.
.PHONY: notebooks docs
NOTEBOOKS_OUT ?= build/notebooks
NOTEBOOKS_QUICK ?= 0
NB_STAMP := $(VENV)/.installed-notebooks
$(NB_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS),notebooks]"
	@touch $@
notebooks: $(NB_STAMP)
	@mkdir -p $(NOTEBOOKS_OUT)
	COMPOSITION_JAX_QUICK=$(NOTEBOOKS_QUICK) COMPOSITION_JAX_FIGURES="$(CURDIR)/$(NOTEBOOKS_OUT)/png" \
	$(VENV)/bin/jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=3600 \
		--output-dir $(NOTEBOOKS_OUT) notebooks/[0-9][0-9]_*.ipynb
	@echo "rendered notebooks: $(NOTEBOOKS_OUT)/*.html"

# The API reference from the docstrings (mkdocs-material + mkdocstrings, the `docs` extra), with
# the guides in docs/, built with --strict (a broken reference or docstring fails) into build/docs.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS),docs]"
	@touch $@
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --clean --site-dir build/docs
	@echo "API reference: build/docs/index.html"

lint: $(STAMP)
	$(VENV)/bin/ruff check composition_jax tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
