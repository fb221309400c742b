# One entry point per job; each does its own setup on a fresh machine.
.PHONY: setup test bench demo

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python benchmarks/preprocess_speed.py

# Demo: preprocess nibabel's real low-resolution T1 subject onto the default atlas.
demo: setup
	.venv/bin/unireg atlas prepare
	.venv/bin/unireg preprocess --subject demo --out demo/sub-demo/preproc \
	  --image "$$(.venv/bin/python -c 'import nibabel, os; print(os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "anatomical.nii"))')"
	@echo "demo outputs: $$(pwd)/demo/sub-demo/preproc"
