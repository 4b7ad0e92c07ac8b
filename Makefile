# fedurl: `make demo` to try it, `make test` to check it. Both install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The shipped model (pretrained/README.md says how it was trained); BUNDLE=bundles/mine exports your own.
BUNDLE ?= pretrained
HOST ?= 127.0.0.1
PORT ?= 5000
FRONT_PORT ?= 8080
DATA_DIR ?= instance
# make prod: app processes behind nginx; more than 1 needs DB=postgresql://... (SQLite: one process)
WORKERS ?= 1
DB ?=

.PHONY: install demo prod bundle serve test lint bench chromium postgresql nginx clean

install: $(VENV)/.installed web_client/node_modules/.installed

# constraints.txt locks every version (torch's CPU build lies on this machine's disk).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,sim,test,lint]'
	touch $@

web_client/node_modules/.installed: web_client/package.json web_client/package-lock.json
	cd web_client && npm ci --no-audit --no-fund
	touch $@

# Debian's chromium: Playwright cannot download its own browser on this network.
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The tests start a throwaway PostgreSQL from these binaries (tests/postgres.py); Debian keeps them off PATH.
postgresql:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || deploy/apt-install postgresql

# The front server of the production start (fedurl-deploy); the tests run it too.
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || deploy/apt-install nginx

$(BUNDLE)/manifest.json: | install
	$(VENV)/bin/fedurl-export --out $(BUNDLE)

bundle: $(BUNDLE)/manifest.json

# The demo runs a deployment's secure aggregation: a cohort of PARTICIPANTS simulated people
# (fedurl-participants: the Python client on public URLs) and you, so each round waits for your page
# and you see the cohort form. PARTICIPANTS=0: plain mode, one person completes a round alone.
PARTICIPANTS ?= 3
ifeq ($(PARTICIPANTS),0)
DEMO_MODE := FEDURL_AGGREGATION=plain FEDURL_MIN_CLIENTS=1
else
DEMO_MODE := FEDURL_AGGREGATION=secure FEDURL_MIN_CLIENTS=$(shell echo $$(($(PARTICIPANTS) + 1)))
endif

demo: install bundle
	@if [ "$(PARTICIPANTS)" != 0 ]; then \
	  $(VENV)/bin/fedurl-participants --server http://$(HOST):$(PORT) --count $(PARTICIPANTS) & \
	  trap "kill $$! 2>/dev/null" EXIT; \
	fi; \
	$(DEMO_MODE) FEDURL_OVER_SELECTION=0 FEDURL_SELECTION_WINDOW_S=0 FEDURL_MAX_MEMBERS_PER_NETWORK=100 \
	FEDURL_GATE_TOLERANCE=$${FEDURL_GATE_TOLERANCE:-0.5} \
	$(VENV)/bin/fedurl-serve --bundle $(BUNDLE) --host $(HOST) --port $(PORT)

# The production start: nginx on FRONT_PORT in front of WORKERS app processes (server/README.md, Production start).
prod: install bundle nginx
	$(VENV)/bin/fedurl-deploy --bundle $(BUNDLE) --data-dir $(DATA_DIR) --host $(HOST) --port $(FRONT_PORT) \
	  --workers $(WORKERS) $(if $(DB),--db $(DB))

# Two workers, a test file each at a time (module fixtures stay in one process): most tests wait on
# browsers and servers, so the suite takes ~2/3 of the time it takes in one process.
TEST_WORKERS ?= 2
test: install chromium postgresql nginx
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# Python: ruff (pycodestyle, pyflakes, isort, bugbear, pyupgrade, docstrings) and mypy on the
# torch-free packages; browser: eslint and TypeScript's checkJs over the JSDoc.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	cd web_client && npx --no-install eslint . && npx --no-install tsc -p jsconfig.json

bench: install chromium bundle
	$(PY) bench/run_all.py --bundle $(BUNDLE)

clean:
	rm -rf $(VENV) web_client/node_modules bundles build *.egg-info
