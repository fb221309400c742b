# One entry point per job; each does its own setup on a fresh machine.
.PHONY: setup test lint format test-slurm bench demo

setup:
	bash scripts/setup.sh

test: setup lint
	.venv/bin/python -m pytest -q

# Lint and format checks (ruff: Python; snakefmt: the workflow). `make format` applies the formatters.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/snakefmt --check Snakefile workflow

format: setup
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .
	.venv/bin/snakefmt Snakefile workflow

# The workflow on a real one-node SLURM cluster (root + Debian: installs slurmctld slurmd munge)
test-slurm: setup
	bash scripts/ci_slurm.sh

bench: setup
	.venv/bin/python benchmarks/preprocess_speed.py

# Demo: the whole cohort workflow on the embedded demo cohort (generated offline on first run).
demo: setup
	PATH="$(CURDIR)/.venv/bin:$$PATH" .venv/bin/snakemake --cores 2
	@echo "report: $(CURDIR)/results/report.html"
