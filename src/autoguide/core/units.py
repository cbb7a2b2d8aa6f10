"""Units of training time (docs/design.md, "Conventions").

Time is counted in training images everywhere: the learning-rate schedule, EMA updates,
snapshots, "a guide trained for T/16", SIMS budgets. Lengths are given in Mi (mebi-images,
``2**20`` images) and intervals in kimg (1000 images).
"""

MI = 2**20
"""Images in one Mi."""
KIMG = 1000
"""Images in one kimg."""
