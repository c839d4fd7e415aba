# The README's commands. Every target runs from the repository root and uses
# the virtualenv in .venv, which `make venv` builds from the pinned files.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help prepare venv lint test test-apps bench test-load bad-inputs-doc
help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/activate: requirements-dev.txt server_app/requirements.txt client_app/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt -r server_app/requirements.txt -r client_app/requirements.txt
	$(BIN)/pip install --quiet --no-deps -e server_app -e client_app
	touch $@

prepare:  ## Install the Debian packages the tests use and start dockerd (root).
	scripts/prepare-host.sh

venv: $(BIN)/activate  ## Build .venv from the pinned requirements.

lint: venv  ## Run ruff, mypy, yamllint and ansible-lint.
	ruff check .
	ruff format --check .
	mypy
	yamllint --strict .
	ansible-lint

test-apps: venv  ## Test both Python apps against real redis-server and gunicorn.
	pytest server_app/tests client_app/tests

.PHONY: test-server
test-server: venv  ## Test the server alone against real gunicorn and Redis (about 70 s).
	pytest server_app/tests

.PHONY: test-client
test-client: venv  ## Test the client alone, ending with real gunicorn and Redis (about 1 min).
	pytest client_app/tests

# matplotlib draws the benchmark's plot; nothing else needs it, so it stays
# out of requirements-dev.txt.
$(VENV)/.bench-requirements: bench/requirements.txt $(BIN)/activate
	$(BIN)/pip install --quiet -r bench/requirements.txt
	touch $@

bench: venv $(VENV)/.bench-requirements  ## Benchmark against bare gunicorn and nginx (about 16 min).
	python -m bench

test-load: venv  ## Load, fault and bad-input tests on loopback (about 2 min).
	pytest tests/load tests/faults tests/bad_input

bad-inputs-doc: venv  ## Rerun the bad-input tests and write docs/bad-inputs.md.
	BAD_INPUT_TABLE=docs/bad-inputs.md pytest tests/bad_input

.PHONY: test-containers test-kubernetes
test-containers: venv  ## Build both images from a local base and run the compose stack (about 3 min).
	pytest tests/containers

test-kubernetes: venv  ## Validate the Kubernetes manifests offline and render the kustomize build.
	pytest tests/k8s

# Molecule runs every scenario on both test-host images. The images come from
# molecule/images/build.sh, which keeps an image that already exists.
MOLECULE_DISTROS ?= debian12 debian13
MOLECULE_SCENARIOS ?= default multihost

.PHONY: images test-ansible test-molecule demo demo-clean
images:  ## Build the systemd test-host images for Debian 12 and 13 locally.
	molecule/images/build.sh $(MOLECULE_DISTROS)

test-ansible: venv images  ## Check that bad group_vars stop site.yml before any change (about 1 min).
	pytest tests/ansible

test-molecule: venv images  ## Run every molecule scenario on Debian 12 and 13 (about 13 min).
	for distro in $(MOLECULE_DISTROS); do \
		for scenario in $(MOLECULE_SCENARIOS); do \
			echo "== molecule test -s $$scenario on $$distro"; \
			start=$$(date +%s); \
			MOLECULE_DISTRO=$$distro molecule test -s $$scenario; \
			echo "== $$scenario on $$distro passed in $$(( $$(date +%s) - start )) s"; \
		done; \
	done

demo: prepare venv  ## Deploy site.yml to three local systemd containers and show the result.
	molecule/images/build.sh debian12
	scripts/demo.sh up

demo-clean:  ## Remove the demo containers and their network.
	scripts/demo.sh down

test: prepare lint test-apps test-load test-containers test-kubernetes test-ansible test-molecule  ## Run every test: lint, apps, load, containers, molecule.
