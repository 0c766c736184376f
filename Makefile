# Two commands for newcomers: `make run` and `make test`. Everything else is for CI and developers.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint check install clean fuzz

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py run_embedded

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy accounts agents alerts audit behavry demo escalations policies proxy risk
	$(BIN)/python manage.py check
	$(BIN)/python manage.py makemigrations --check --dry-run

# schemathesis against the live OpenAPI schema (embedded SQLite; CI runs it on PostgreSQL).
fuzz: $(STAMP)
	fuzz/api.sh

check: lint test

clean:
	rm -rf var/*.sqlite3* var/celery var/celerybeat-schedule*
