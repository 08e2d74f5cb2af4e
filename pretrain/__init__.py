"""The pretraining program: ``python -m pretrain --config FILE [key=value ...]``."""
