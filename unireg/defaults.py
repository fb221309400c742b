"""Option vocabularies and defaults shared by the CLI, the workflow config schema and the package.

One place for each: the modules check against these tuples, the CLI offers them as choices and
defaults, and ``tests/test_cli.py`` ties ``workflow/schemas/config.schema.yaml``'s enums and
defaults to them. Kept free of heavy imports (the CLI reads it before any verb runs).
"""

# unireg preprocess: affine similarity (unireg.affine), non-finite voxel policy (unireg.intensity)
AFFINE_SIMILARITIES = ("mi", "lncc")
AFFINE_SIMILARITY = "mi"
NONFINITE_POLICIES = ("error", "zero")
NONFINITE_POLICY = "error"

# Test-time instance optimisation steps of `unireg register` and of the workflow (register.instance_opt),
# chosen with benchmarks/io_tuning.py on training pairs (benchmarks/results/io_tuning.md) and scored
# against ANTs SyN by benchmarks/peers.py (benchmarks/results/peers.md).
INSTANCE_OPT_STEPS = 30
INSTANCE_OPT_SIMILARITIES = ("lncc", "mind")  # unireg.losses.ImageSimilarity
INSTANCE_OPT_SIMILARITY = "lncc"

# where the network predicts (`unireg register --network-grid`, the workflow's register.network_grid):
# "model" = on the images pooled to the spacing the model was trained at (2 mm for the packaged
# model) when the atlas grid is an integer factor finer, e.g. a 1 mm atlas; "atlas" = on the atlas
# grid itself. Instance optimisation always runs on the atlas grid. Chosen on Mindboggle 1 mm brains
# (benchmarks/results/allen_mindboggle.md against allen_mindboggle.network-atlas.md).
NETWORK_GRIDS = ("model", "atlas")
NETWORK_GRID = "model"
# test-time mirroring (`unireg register --mirror/--no-mirror`, the workflow's register.mirror): the
# network's field is the mean of its prediction and of its prediction for both images mirrored
# left-right (mirrored back); twice the network's time, +0.005-0.007 Dice of the network alone on every contrast
# (benchmarks/results/peers_mind_cascade2_8500_mirror.md against peers_mind_cascade2_8500.md; chosen on
# the training recipe's validation pairs).
MIRROR = True
FUSIONS = ("majority", "weighted", "jlf")  # unireg.fusion: multi-atlas label fusion rules
FUSION = "jlf"
# the file that makes a folder an atlas set (unireg.atlas_set; the workflow's `atlas:` may name one)
ATLAS_SET_FILE = "atlas_set.json"

# the feature extractor of a new model (unireg train; unireg.features.build_extractor names them all)
DEFAULT_EXTRACTOR = "mobilenet_v1_025"

# where `unireg register` and `unireg train` run: auto = CUDA when visible, else CPU
# (unireg.runtime.select_device)
DEVICES = ("auto", "cpu", "cuda")
DEVICE = "auto"

# Atlases built offline by `unireg atlas prepare --name` and accepted by name wherever an atlas
# folder is (unireg.atlas; the workflow's `atlas:`): the 3 tissue classes of the MNI ICBM152 2009a
# symmetric template, and the Allen Human Reference Atlas structures on that same template.
TISSUE_ATLAS = "mni2009a"
ALLEN_ATLAS = "mni2009a-allen"
BUILTIN_ATLASES = (ALLEN_ATLAS, TISSUE_ATLAS)
DEFAULT_ATLAS = ALLEN_ATLAS
