# snapcell — see README.md. Every target does its own set-up (apt packages, .venv, guests).
PY      := .venv/bin/python
GUESTS  := build/guests/simpleguest.elf build/guests/simpleguest-debug.elf build/guests/adversary.elf
SDK     := $(wildcard snapcell/guest/sdk/*)

.PHONY: all setup guests demo test test-fast bench lint typecheck clean goldens soak fuzz

all: demo

setup: .venv/.snapcell-installed

.venv/.snapcell-installed: pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh

guests: setup $(GUESTS)

build/guests/%.elf: guests/%.c $(SDK) | setup
	$(PY) -m snapcell guest build $< -o $@

demo: guests
	$(PY) -m snapcell demo build/guests/simpleguest.elf

test: guests benchmarks/c_floor
	$(PY) -m pytest -q tests

# Mutation fuzzing of guest output messages and snapshot files (FUZZ_SECONDS per target).
FUZZ_SECONDS ?= 300
fuzz: guests
	$(PY) -m tests.adversarial.fuzz --seconds $(FUZZ_SECONDS)

soak: guests
	SNAPCELL_STRESS_SECONDS=300 $(PY) -m pytest -q tests/test_interrupts.py -k stress

bench: guests benchmarks/c_floor
	$(PY) -m snapcell bench

benchmarks/c_floor: benchmarks/c_floor.c
	cc -O2 -Wall -o $@ $<

goldens: guests
	$(PY) scripts/make_goldens.py

typecheck: setup
	$(PY) -m mypy

lint: setup
	$(PY) -m ruff check snapcell tests scripts

clean:
	rm -rf build benchmarks/c_floor

build/guests/%-debug.elf: guests/%.c $(SDK) | setup
	$(PY) -m snapcell guest build --debug $< -o $@
