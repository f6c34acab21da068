# xlerobot-deploy: the two commands of the README, and the pieces they are made of.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VERSION ?= 1.0.0
STRATEGY ?= bluegreen
REGISTRY ?= 127.0.0.1:5000
SERVICES := asr tts llm multimodal
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_HOME := $(CURDIR)/.cache/ansible
export ANSIBLE_FORCE_COLOR ?= 0

.PHONY: up venv bootstrap build deploy test unit integration lint molecule sbom bench teardown
# Longest first, so that the parallel lanes end together.
MOLECULE_SCENARIOS := docker_engine monitoring gateway registry daemon
MOLECULE_JOBS ?= 3

## First command: set up this machine and deploy VERSION of every service, blue-green, on the local inventory.
up: bootstrap build deploy

venv:
	./scripts/venv.sh

bootstrap: venv
	ansible-playbook playbooks/bootstrap.yml

build: bootstrap
	ansible-playbook playbooks/build.yml -e version=$(VERSION)

deploy:
	ansible-playbook playbooks/deploy.yml -e strategy=$(STRATEGY) -e version=$(VERSION)

## Second command: the whole test suite (lint, unit, service, end-to-end), set-up included.
test: bootstrap lint molecule unit integration

## Plugins' logic and the services against their real models; fails under 80 % coverage (pyproject.toml).
unit: bootstrap
	pytest -m "not integration" --cov --cov-report=term --cov-report=xml:.cache/coverage/coverage.xml

## End-to-end deploys on the real engine, gateway and Prometheus (builds the test versions' images).
integration: bootstrap
	pytest -m integration --durations=20

## A CycloneDX SBOM of each service image of VERSION, read from the image (reports/sbom/).
sbom: bootstrap
	python scripts/sbom.py $(foreach service,$(SERVICES),$(REGISTRY)/xlerobot/$(service):$(VERSION))

## Role tests on production-like test hosts (systemd as PID 1), built locally.
molecule: bootstrap
	ansible-playbook playbooks/test_hosts.yml
	MOLECULE_JOBS=$(MOLECULE_JOBS) ./scripts/molecule_all.sh $(MOLECULE_SCENARIOS)

lint: venv
	yamllint -s .
	ansible-lint
	ruff check plugins services tests bench molecule scripts conftest.py
	mypy
	bandit -c pyproject.toml -q -r plugins services scripts bench
	antsibull-changelog lint

teardown: venv
	ansible-playbook playbooks/teardown.yml

bench: bootstrap
	python bench/skeleton.py
	python bench/strategies.py
	python bench/services.py
	python bench/golden_wer.py
