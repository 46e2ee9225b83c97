# MedAnnot: `make run` sets everything up and runs the app; `make test` runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
export HF_HUB_OFFLINE ?= 1

.PHONY: run test install check-services migrate demo worker web lint vendor bench clean

# DEBUG is off by default (production); the development targets turn it on unless it is set.
run demo migrate check-services bench: export DEBUG ?= true

# Two database roles (README, "Database roles"; scripts/services.sh creates them): the web and
# the workers connect as the app role, migrations as the owner. A DATABASE_URL of your own
# replaces both (and MIGRATE_DATABASE_URL then defaults to it). The tests keep the superuser,
# which creates and drops their database.
ifeq ($(origin DATABASE_URL),undefined)
run demo migrate: export DATABASE_URL = postgresql://medannot_app@localhost:5432/medannot
run demo migrate: export MIGRATE_DATABASE_URL ?= postgresql://medannot_owner@localhost:5432/medannot
endif

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Starts local PostgreSQL/Redis if they are installed but stopped; preflight says what is missing.
check-services: install
	@bash scripts/services.sh
	@$(PY) -m medannot.preflight

migrate: check-services
	$(PY) manage.py migrate --noinput

demo: migrate
	@if [ -z "$$MEDANNOT_MODEL" ]; then $(PY) manage.py build_demo_model var/demo-model; fi
	$(PY) manage.py seed_demo

run: demo
	@PY=$(PY) HOST=$(HOST) PORT=$(PORT) bash scripts/run.sh

test: check-services
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

vendor:
	$(PY) scripts/vendor_static.py

bench: install
	$(PY) bench/drafting.py

clean:
	rm -rf $(VENV) var
