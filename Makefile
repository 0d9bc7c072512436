# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv demo test test-deps unit bench clean

$(BIN)/funnel: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/funnel

venv: $(BIN)/funnel

# A local Apache Kafka (jars from Maven Central) and a demo mirror on SQLite files.
demo: venv
	$(BIN)/funnel demo --workdir .demo

# The system tools the tests run (promtool, prometheus, pgbouncer, haproxy): installed
# with apt-get as root when missing, else one message naming the packages.
test-deps:
	scripts/install-test-deps

# pytest exit code 5 means "no tests collected": that is a failure here, not a pass.
# The tests mostly wait (delays, polls, process startups), so they run in TEST_WORKERS
# pytest-xdist workers, each with its own broker and PostgreSQL (TEST_WORKERS=0: serial).
# --dist loadfile keeps a file's tests on one worker: they share module fixtures.
TEST_WORKERS ?= 2
test: test-deps venv
	$(BIN)/pytest -v --durations=15 -n $(TEST_WORKERS) --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests" >&2; exit 1; fi; exit $$rc

unit: test-deps venv
	$(BIN)/pytest -q tests/unit

clean:
	-$(BIN)/funnel broker stop
	rm -rf $(VENV) .demo .pytest_cache
