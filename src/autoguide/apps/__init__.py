"""The command-line apps: thin layers that parse a command line (Hydra or argparse), call the
library and report. Library packages never import from here (tests/test_architecture.py).

| console script | module | config / arguments |
|---|---|---|
| ``autoguide-train``, ``python train.py`` | ``train`` | ``conf/train.yaml`` |
| ``autoguide-generate`` | ``generate`` | ``conf/generate.yaml`` |
| ``autoguide-eval`` | ``evaluate`` | ``conf/eval.yaml`` |
| ``autoguide-sweep`` | ``sweep`` | ``conf/sweep.yaml`` |
| ``autoguide-sims`` | ``sims`` | ``conf/sims.yaml`` |
| ``autoguide-sims-compare`` | ``sims_compare`` | ``conf/sims_compare.yaml`` |
| ``autoguide-reconstruct`` | ``reconstruct`` | ``--help`` |
| ``autoguide-import-edm2``, ``autoguide-export-edm2`` | ``import_edm2``, ``export_edm2`` | ``--help`` |
| ``autoguide-convert`` | ``convert`` | ``--help`` |
| ``autoguide-mnist-classifier`` | ``mnist_classifier`` | ``--help`` |

Every module also runs as ``python -m autoguide.apps.<module>``.
"""
