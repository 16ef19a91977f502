# One set of commands for people and CI. Everything built or downloaded is cached outside
# the checkout ($TASKEVENTS_CACHE); everything the running stack writes lives in
# $TASKEVENTS_STATE. Every target is idempotent.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

export TASKEVENTS_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/taskevents
export TASKEVENTS_STATE ?= $(or $(XDG_STATE_HOME),$(HOME)/.local/state)/taskevents
UV_VERSION := 0.13.9
UV_HOME := $(TASKEVENTS_CACHE)/uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv
export PATH := $(UV_HOME)/bin:$(HOME)/.dapr/bin:$(PATH)
export UV_PYTHON := python3.11
# Registries may be reached through a TLS proxy whose CA only the system store knows.
export UV_SYSTEM_CERTS ?= true

# Where the services find the broker and the database; naming your own in KAFKA_BROKERS
# or DATABASE_URL makes `make run` use them instead of starting local ones.
BROKERS := $(or $(KAFKA_BROKERS),127.0.0.1:9092)
DB_URL := $(or $(DATABASE_URL),postgresql://taskevents:taskevents@127.0.0.1:5432/taskevents)
# daprd reads these through the local.env secret store (dapr-components/secretstore.yaml).
export TASKEVENTS_KAFKA_BROKERS := $(BROKERS)
export TASKEVENTS_DATABASE_URL := $(DB_URL)

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	@echo "==> installing uv $(UV_VERSION) into $(UV_HOME)"
	@python3.11 -m venv "$(UV_HOME)" && "$(UV_HOME)/bin/pip" install -q "uv==$(UV_VERSION)"

.PHONY: deps
deps: $(UV) ## Python dependencies (uv, from uv.lock)
	@echo "==> Python dependencies (uv sync --frozen)"
	@$(UV) sync --frozen

.PHONY: dapr
dapr: ## the Dapr runtime: an existing `dapr init` install, or built from the Go module
	@bash scripts/dapr-runtime.sh >/dev/null

.PHONY: helm
helm: ## Helm, built once from its Go module (cached; for the chart tests and manifests)
	@bash scripts/helm.sh >/dev/null

.PHONY: kubernetes
kubernetes: deps helm ## the Kubernetes test tier: control plane, a node, the images (built once, cached)
	@bash scripts/k8s/build.sh node >/dev/null
	@bash scripts/k8s/images.sh >/dev/null

.PHONY: manifests
manifests: deps helm ## regenerate the chart's Dapr templates and the plain manifests in k8s/
	@$(UV) run --frozen python scripts/render_manifests.py --helm "$$(bash scripts/helm.sh)"

.PHONY: infra
infra: deps ## Kafka, Postgres, the SMTP sink (or the ones named by the environment), Sentry, Jaeger
	@PYTHON="$(CURDIR)/.venv/bin/python" bash scripts/stack.sh up

.PHONY: chromium
chromium: ## Debian's Chromium for the live-page browser test (apt-get once; skipped when present)
	@bash scripts/chromium.sh

.PHONY: prometheus
prometheus: ## Debian's Prometheus and promtool (on PATH, or its .deb unpacked into the cache once)
	@bash scripts/prometheus.sh ensure >/dev/null

.PHONY: setup
setup: deps dapr infra chromium prometheus ## everything `make run` and `make test` need

# The Dapr API token (callers of a sidecar) and the app API token (daprd calling an app) of
# `make run`: made once, readable by you only; the `taskevents` CLI finds the first here.
TOKENS := $(TASKEVENTS_STATE)/tokens

.PHONY: tokens
tokens: ## make the local Dapr API and app API tokens (once; kept in $TASKEVENTS_STATE/tokens)
	@mkdir -p "$(TOKENS)" && chmod 700 "$(TOKENS)"
	@for name in dapr-api-token app-api-token; do \
	  [ -s "$(TOKENS)/$$name" ] || (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$(TOKENS)/$$name"); \
	done

# The bundled runner starts the sidecars with mTLS against the stack's Sentry. `dapr run -f`
# (TASKEVENTS_DAPR_CLI=1) points them at Sentry on localhost:50001, a constant of the dapr
# CLI and the CLI sidecar's gRPC port here: see README, Troubleshooting.
.PHONY: run
run: setup tokens ## run the four services and the ops console with their sidecars; Ctrl-C stops them
	@$(UV) run --frozen audit-log-service migrate
	@PYTHON="$(CURDIR)/.venv/bin/python" bash scripts/prometheus.sh start
	@echo "==> starting the services (logs: $(TASKEVENTS_STATE)/logs)"
	@echo "    live page      http://127.0.0.1:8004/"
	@echo "    API docs       http://127.0.0.1:8003/docs  (audit)  :8002/docs (recurring)  :8001/docs (notification)"
	@echo "    ops console    http://127.0.0.1:8005/  (operator sign-in; development token on the login page)"
	@echo "    mailbox        http://127.0.0.1:1080/"
	@echo "    prometheus     http://127.0.0.1:$${PROMETHEUS_PORT:-9290}/classic/targets  (rules: helm-chart/files/prometheus/rules.yaml)"
	@echo "    traces         http://127.0.0.1:16686/api/traces?service=audit-log-service  (Jaeger's query API)"
	@echo "    publish        uv run taskevents demo --users 5 --rate 5   (through the sidecar on 3500/50001)"
	@export DAPR_API_TOKEN="$$(cat "$(TOKENS)/dapr-api-token")" APP_API_TOKEN="$$(cat "$(TOKENS)/app-api-token")"; \
	eval "$$(bash scripts/sentry.sh env)"; export SENTRY_ADDRESS DAPR_TRUST_ANCHORS; \
	if [ -n "$${TASKEVENTS_DAPR_CLI:-}" ]; then \
	  DATABASE_URL="$(DB_URL)" dapr run -f dapr.yaml; \
	else \
	  DATABASE_URL="$(DB_URL)" $(UV) run --frozen python -m taskevents_cli.devrun -f dapr.yaml \
	    --log-dir "$(TASKEVENTS_STATE)/logs" --pid-file "$(TASKEVENTS_STATE)/devrun.pid"; \
	fi

.PHONY: stop
stop: ## stop the services and the local infrastructure
	@pid_file="$(TASKEVENTS_STATE)/devrun.pid"; \
	if [ -f "$$pid_file" ] && kill "$$(cat "$$pid_file")" 2>/dev/null; then \
	  echo "==> stopping the services"; \
	  for _ in $$(seq 1 100); do [ -f "$$pid_file" ] || break; sleep 0.2; done; \
	fi
	@-command -v dapr >/dev/null && dapr stop -f dapr.yaml >/dev/null 2>&1; true
	@bash scripts/prometheus.sh stop
	@bash scripts/stack.sh down

.PHONY: migrate
migrate: deps ## apply the audit database migrations by hand
	@DATABASE_URL="$(DB_URL)" $(UV) run --frozen audit-log-service migrate

.PHONY: test
test: setup helm kubernetes ## set up whatever is missing, then run every test tier
	@$(UV) run --frozen python -m taskevents.schema --check docs/event-schema.json
	@$(UV) run --frozen pytest tests/unit tests/integration tests/e2e tests/kubernetes tests/faults

.PHONY: lint
lint: deps ## ruff check, ruff format --check, mypy --strict
	@$(UV) run --frozen ruff check .
	@$(UV) run --frozen ruff format --check .
	@$(UV) run --frozen mypy libs/taskevents/src cli/src audit-log-service/src notification-service/src recurring-task-service/src websocket-service/src ops-console/src tests scripts

.PHONY: format
format: deps ## apply ruff's fixes and formatting
	@$(UV) run --frozen ruff check --fix .
	@$(UV) run --frozen ruff format .

.PHONY: schema
schema: deps ## regenerate docs/event-schema.json from the event model
	@$(UV) run --frozen python -m taskevents.schema docs/event-schema.json

.PHONY: clean
clean: stop ## stop everything and delete the local data (not the build cache)
	@bash scripts/stack.sh clean
