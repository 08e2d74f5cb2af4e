"""The pretraining program: ``python -m pretrain --config FILE [key=value ...]``."""

import os

# OpenMP threads that spin while waiting cost 10x or more when the cores are shared with other
# processes (measured on 2 shared cores); passive waiting costs little when they are not. Must be
# set before torch is imported, which this package does first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
