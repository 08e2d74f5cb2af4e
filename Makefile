# us3l-bench: one command per step. Every target installs what it needs first (idempotent).
# Variables: WIDTH, CKPT, GPUS, NODES, EXECUTOR (local|slurm), PARTITION, DEMO=1 (built-in small data, CPU scale), PYTHON (an existing env
# with a full Detectron2: used untouched), OUTPUT (default output/), ARGS (extra key=value overrides).
SHELL := /bin/bash
VENV ?= .venv
DEFAULT_PYTHON := $(VENV)/bin/python
PYTHON ?= $(DEFAULT_PYTHON)
OUTPUT ?= output
GPUS ?= 1
NODES ?= 1
# auto: CUDA; a real (non-demo) job without CUDA stops and asks for DEVICE=cpu instead of silently using the CPU.
DEVICE ?= auto
WIDTH ?= 1.0
WIDTHS ?= 1.0,0.75,0.5,0.25
DATASET ?= cifar100
EXECUTOR ?= local
STAMP := $(VENV)/.us3l-install-stamp
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
# OpenMP threads that spin while waiting cost 10x and more on shared or busy cores.
export OMP_WAIT_POLICY ?= PASSIVE

ifeq ($(DEMO),1)
PRETRAIN_CONFIG ?= pretrain/configs/demo_shapes.yaml
CKPT ?= $(OUTPUT)/pretrain/demo_shapes/backbone.pth
DEMO_FLAG := --demo
TASKS ?= voc,coco,linear:shapes
else
PRETRAIN_CONFIG ?= pretrain/configs/imagenet_r50.yaml
CKPT ?= $(OUTPUT)/pretrain/imagenet_r50/backbone.pth
DEMO_FLAG :=
TASKS ?= voc,coco,linear:cifar10,linear:cifar100,linear:flowers102,linear:pets,linear:dtd
endif
RESULTS ?= $(OUTPUT)/results
# SEED: the seed of a voc/coco/linear run, the first seed of a sweep; TRIALS=N: a sweep runs seeds SEED..SEED+N-1.
SEED_FLAG := $(if $(SEED),--seed $(SEED))
PLOTS ?= $(OUTPUT)/plots

ifeq ($(GPUS),1)
LAUNCH := $(PYTHON) -m
else
LAUNCH := $(PYTHON) -m torch.distributed.run --standalone --nproc_per_node=$(GPUS) -m
endif

.PHONY: install check-python test lint pretrain pretrain-widths voc coco linear knn linear-imagenet sweep plot demo clean

ifeq ($(PYTHON),$(DEFAULT_PYTHON))
install: $(STAMP)
else
install: check-python
endif

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

check-python:
	@$(PYTHON) -c "import torch, torchvision, detectron2, pycocotools, submitit" \
	  || { echo "PYTHON=$(PYTHON) lacks the stack (torch, torchvision, detectron2, pycocotools, submitit); unset PYTHON to use make install's .venv"; exit 2; }

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest $(if $(SLOW),,-m "not slow") $(PYTEST_ARGS)

lint: install
	$(PYTHON) -m ruff check .

# EXECUTOR=slurm: one job of NODES x GPUS tasks through submitit (pretrain/slurm.py), requeued on
# preemption and resumed from last.pth; GPUS=0 TASKS_PER_NODE=n runs n CPU tasks (add ARGS="device=cpu").
pretrain: install
ifeq ($(EXECUTOR),slurm)
	$(PYTHON) -m pretrain.slurm --config $(PRETRAIN_CONFIG) --nodes $(NODES) --gpus-per-node $(GPUS) \
	  $(if $(TASKS_PER_NODE),--tasks-per-node $(TASKS_PER_NODE)) $(if $(PARTITION),--partition $(PARTITION)) $(if $(WAIT),--wait) \
	  output_dir=$(OUTPUT)/pretrain device=$(DEVICE) $(ARGS)
else
	$(LAUNCH) pretrain --config $(PRETRAIN_CONFIG) output_dir=$(OUTPUT)/pretrain device=$(DEVICE) $(ARGS)
endif

# Baselines trained separately per width (e.g. pretrain/configs/imagenet_r50_byol.yaml): one run per width.
pretrain-widths: install
	$(LAUNCH) pretrain.per_width --config $(PRETRAIN_CONFIG) --widths $(WIDTHS) output_dir=$(OUTPUT)/pretrain \
	  device=$(DEVICE) $(ARGS)

voc coco: install
	$(PYTHON) -m detection.train --task $@ --checkpoint $(CKPT) --width $(WIDTH) --num-gpus $(GPUS) \
	  --device $(DEVICE) --results $(RESULTS) --output $(OUTPUT)/detection $(SEED_FLAG) $(DEMO_FLAG) $(ARGS)

linear: install
	$(PYTHON) -m transfer.linear --dataset $(if $(filter 1,$(DEMO)),shapes,$(DATASET)) --checkpoint $(CKPT) \
	  --width $(WIDTH) --device $(DEVICE) --results $(RESULTS) $(SEED_FLAG) $(DEMO_FLAG) $(ARGS)

# SUITE=suites/X.yaml: the suite's methods, checkpoints, tasks and widths (instead of CKPT/TASKS/WIDTHS).
# kNN top-1 (k=20, 200) at one width, from the cached features: seconds per width.
knn: install
	$(PYTHON) -m transfer.knn --dataset $(if $(filter 1,$(DEMO)),shapes,$(DATASET)) --checkpoint $(CKPT) \
	  --width $(WIDTH) --device $(DEVICE) --results $(RESULTS) $(SEED_FLAG) $(DEMO_FLAG) $(ARGS)

# ImageNet linear evaluation (SimSiam's protocol: LARS, batch 4096, 90 epochs) on GPUS processes; resumes.
linear-imagenet: install
	$(LAUNCH) transfer.linear --dataset imagenet --checkpoint $(CKPT) --width $(WIDTH) --device $(DEVICE) \
	  --results $(RESULTS) $(SEED_FLAG) $(ARGS)

sweep: install
	$(PYTHON) -m transfer.sweep $(if $(SUITE),--suite $(SUITE) --output-root $(OUTPUT),--checkpoint $(CKPT) \
	  --tasks $(TASKS) --widths $(WIDTHS)) --executor $(EXECUTOR) --device $(DEVICE) \
	  $(if $(filter command line,$(origin GPUS)),--gpus-per-job $(GPUS)) $(if $(PARTITION),--partition $(PARTITION)) \
	  --results $(RESULTS) --output $(OUTPUT)/sweep $(SEED_FLAG) $(if $(TRIALS),--trials $(TRIALS)) \
	  $(if $(filter 1,$(RANDOM_INIT)),--random-init) $(if $(SUITE),,$(DEMO_FLAG)) $(ARGS)

plot: install
	$(PYTHON) -m transfer.plot $(RESULTS) -o $(PLOTS) $(if $(SUITE),--suite $(SUITE) --output-root $(OUTPUT)) \
	  $(if $(BASELINE),--baseline "$(BASELINE)") $(if $(X),--x $(X))

# The whole pipeline on the built-in data at CPU scale: US3L and a BYOL baseline (1.0, 0.5) pretrained;
# VOC and COCO detection at 1.0 and 0.25; linear probes of US3L, BYOL and random initialisation (the
# reference that shows whether pretraining helped) at every width; plots and tables.
demo: install
	$(MAKE) pretrain DEMO=1
	$(MAKE) pretrain-widths DEMO=1 PRETRAIN_CONFIG=pretrain/configs/demo_shapes_byol.yaml WIDTHS=1.0,0.5
	$(MAKE) sweep DEMO=1 TASKS=voc,coco WIDTHS=1.0,0.25 ARGS="--max-parallel 2 --cpus-per-job 1"
	$(MAKE) sweep DEMO=1 SUITE=suites/demo.yaml ARGS="--max-parallel 2 --cpus-per-job 1"
	$(MAKE) plot DEMO=1

clean:
	rm -rf $(OUTPUT)
