# Every target builds its own virtual environment; a fresh machine needs only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint typecheck unit demo demo-stop bench clean nuget-clients

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) nuget-clients
	$(BIN)/pytest -q

# Real NuGet clients for tests/test_nuget_clients.py and tests/test_nuget_packs.py: Debian's
# Mono (mono-complete: mono, cert-sync) and NuGet 2.8.7 (nuget), npm to fetch NuGet.exe 5.8 from
# the npm registry's nuget-exe package into .tools/ (git-ignored). Installed only when missing.
NUGET_DEBIAN_PACKAGES := mono-complete nuget npm
NUGET_EXE := .tools/node_modules/nuget-exe/nuget-5.8.0.exe
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

nuget-clients: $(NUGET_EXE)
	@command -v mono >/dev/null && command -v cert-sync >/dev/null && command -v nuget >/dev/null \
		|| { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		     $(SUDO) apt-get install -y -qq --no-install-recommends $(NUGET_DEBIAN_PACKAGES); }

$(NUGET_EXE):
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		$(SUDO) apt-get install -y -qq --no-install-recommends npm; }
	npm install --prefix .tools --no-audit --no-fund --no-save nuget-exe@5.8.0
	test -f $@ && touch $@

demo: $(STAMP)
	demo/demo.sh

demo-stop: $(STAMP)
	demo/stop.sh

bench: $(STAMP)
	$(BIN)/python -m bench all

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache .tools
