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

.PHONY: up venv bootstrap build deploy test test-images unit integration lint molecule sbom bench teardown
# Longest first, so that the parallel lanes end together.
MOLECULE_SCENARIOS := speech_service provision common docker_engine monitoring gateway gpu registry daemon
MOLECULE_JOBS ?= 2

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
test: bootstrap lint molecule test-images unit integration

ifeq ($(MAKECMDGOALS),test)
# The role scenarios and the builds of the end-to-end images run side by side: neither measures time, and the
# builds wait mostly on the registry and the network. The tests then run one phase at a time, since the
# end-to-end gates measure latency.
MAKEFLAGS += -j2 --output-sync=target
molecule test-images: | lint
unit: | molecule test-images
integration: | unit
integration: export XL_TEST_IMAGES_PREBUILT = 1
endif

## Plugins' logic and the services against their real models; fails under 80 % coverage (pyproject.toml).
unit: bootstrap
	pytest -m "not integration" --cov --cov-report=term --cov-report=xml:.cache/coverage/coverage.xml

## Every image version the end-to-end tests deploy (faults baked in), built and pushed to the local registry.
test-images: bootstrap
	python -m tests.support.e2e_images

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
	python bench/release_engine.py
	python bench/strategies.py
	python bench/services.py
	python bench/golden_wer.py
