# Every target builds its own virtual environment; a fresh Debian machine needs only python3 and
# make: tools/system-deps.sh installs the Debian packages that are missing (one list, there).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NUGET_EXE := .tools/node_modules/nuget-exe/nuget-5.8.0.exe
OCTOPUS_CLIENT := .tools/octopus/node_modules/@octopusdeploy/api-client/package.json
# nginx and debootstrap live in /usr/sbin, which a non-root user's PATH often lacks.
export PATH := $(PATH):/usr/sbin:/sbin

.PHONY: test system-deps lint typecheck unit octopus-client demo demo-stop bench clean

$(STAMP): pyproject.toml
	PYTHON=$(PYTHON) tools/system-deps.sh build
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: system-deps lint typecheck unit

system-deps:
	PYTHON=$(PYTHON) tools/system-deps.sh test

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The whole suite on SQLite, then every test that uses the server's database again on PostgreSQL
# (a throwaway cluster of Debian's postgresql package, started by the tests themselves).
unit: $(STAMP) system-deps $(NUGET_EXE) $(OCTOPUS_CLIENT)
	$(BIN)/pytest -q
	$(BIN)/pytest -q --db-backend postgresql

# NuGet.exe 5.8 for tests/test_nuget_clients.py and tests/test_nuget_packs.py, from the npm
# registry's nuget-exe package into .tools/ (git-ignored); Mono, NuGet 2.8.7 and npm come from
# tools/system-deps.sh.
$(NUGET_EXE): | system-deps
	npm install --prefix .tools --no-audit --no-fund --no-save nuget-exe@5.8.0
	test -f $@ && touch $@

# Octopus Deploy's official TypeScript API client for tests/test_octopus_*.py, from the npm
# registry into .tools/octopus/ (git-ignored; its own prefix, so that neither install removes the
# other's packages); Node and npm come from tools/system-deps.sh.
octopus-client: $(OCTOPUS_CLIENT)

$(OCTOPUS_CLIENT): | system-deps
	npm install --prefix .tools/octopus --no-audit --no-fund --no-save @octopusdeploy/api-client@3.11.0
	test -f $@ && touch $@

demo: $(STAMP)
	demo/demo.sh

demo-stop:
	demo/stop.sh

bench: $(STAMP)
	$(BIN)/python -m bench all

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache .tools
