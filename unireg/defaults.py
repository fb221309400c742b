"""Defaults shared by the CLI, the workflow config and the package, kept free of heavy imports."""

# Test-time instance optimisation steps of `unireg register` and of the workflow (register.instance_opt),
# chosen with benchmarks/io_tuning.py on training pairs (benchmarks/results/io_tuning.md) and scored
# against ANTs SyN by benchmarks/peers.py (benchmarks/results/peers.md).
INSTANCE_OPT_STEPS = 30
INSTANCE_OPT_SIMILARITY = "lncc"
