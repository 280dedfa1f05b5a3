# Two entry points do everything on a fresh machine: `make reproduce` and `make test`.
# Both create .venv and install the package first (torch pinned by constraints.txt).
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
PIP    := $(PYTHON) -m pip install -q -c constraints.txt
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg

.PHONY: setup reproduce sensitivity schedules lr-sweep relatives ranks rank-rates atlas-lr-sweep atlas wordnet-lr-sweep wordnet-hypernym-lr-sweep wordnet-atlas-lr-sweep wordnet wordnet-hypernym across-tasks test docs docs-check bench clean

setup: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml constraints.txt  # what the toolkit needs to run
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed  # and what the tests need (peft, submitit, tensorboard, wandb, ruff, ...)
	$(PIP) -e ".[dev]"
	touch $@

reproduce: $(VENV)/.installed  ## the main study (LoRA, TLoRA, head-only x 3 seeds), figures/ and the report
	$(VENV)/bin/tlora-analysis reproduce --out figures

sensitivity: $(VENV)/.installed  ## the claims audit across TLoRA's init and learning rate (studies/sensitivity.toml, ~12 min on 2 quiet cores, 27 min at a load of 5)
	$(VENV)/bin/tlora-analysis study studies/sensitivity.toml --out runs/sensitivity --jobs 2 --no-progress
	$(VENV)/bin/tlora-analysis figures runs/sensitivity --out figures/sensitivity
	$(VENV)/bin/tlora-analysis report runs/sensitivity --out figures/sensitivity/report.html

schedules: $(VENV)/.installed  ## LoRA and TLoRA under linear, constant and cosine schedules (studies/schedules.toml, ~10 min on 2 quiet cores, 2-3x that on a busy machine)
	$(VENV)/bin/tlora-analysis study studies/schedules.toml --out runs/schedules --jobs 2 --no-progress
	$(VENV)/bin/tlora-analysis figures runs/schedules --out figures/sensitivity/schedules
	$(VENV)/bin/tlora-analysis report runs/schedules --out figures/sensitivity/schedules/report.html

lr-sweep: $(VENV)/.installed  ## five learning rates per method, two seeds: the methods' default rates (studies/lr_sweep.toml, ~45 min on 2 quiet cores, 2-3x that on a busy machine)
	$(VENV)/bin/tlora-analysis study studies/lr_sweep.toml --out runs/lr_sweep --jobs 2 --no-progress
	$(VENV)/bin/tlora-analysis figures runs/lr_sweep --out figures/lr_sweep --no-base

relatives: $(VENV)/.installed  ## the ladder: seven methods x 3 seeds against LoRA (studies/relatives.toml, ~20 min on 2 quiet cores, 2-3x that on a busy machine)
	$(VENV)/bin/tlora-analysis study studies/relatives.toml --out runs/relatives --jobs 2 --no-progress
	$(VENV)/bin/tlora-analysis figures runs/relatives --out figures/relatives
	$(VENV)/bin/tlora-analysis report runs/relatives --out figures/relatives/report.html

ranks: $(VENV)/.installed  ## LoRA and TLoRA at r = 2 .. 32 x 2 seeds (studies/ranks.toml, ~20 min on 2 quiet cores, 2-3x that on a busy machine)
	$(VENV)/bin/tlora-analysis study studies/ranks.toml --out runs/ranks --jobs 2 --no-progress
	$(VENV)/bin/tlora-analysis figures runs/ranks --out figures/ranks
	$(VENV)/bin/tlora-analysis report runs/ranks --out figures/ranks/report.html

rank-rates: $(VENV)/.installed  ## TLoRA's learning rate at each rank (six rates x r = 2, 4, 16, 32 x 2 seeds) beside LoRA (studies/rank_rates.toml, ~60 min on 2 quiet cores, 2-3x that on a busy machine)
	$(VENV)/bin/tlora-analysis study studies/rank_rates.toml --out runs/rank_rates --jobs 2 --no-progress
	$(VENV)/bin/tlora-analysis figures runs/rank_rates --out figures/ranks/rates --no-base

atlas-lr-sweep: $(VENV)/.installed  ## the atlas's peft methods at five rates, two seeds: their default rates (studies/atlas_lr_sweep.toml, 138 cells, ~2.5 h on 2 quiet cores, 2-3x that on a busy machine)
	$(VENV)/bin/tlora-analysis study studies/atlas_lr_sweep.toml --out runs/atlas_lr_sweep --jobs 2 --no-progress
	$(VENV)/bin/tlora-analysis figures runs/atlas_lr_sweep --out figures/atlas/lr_sweep --runs-only --no-progress

atlas: $(VENV)/.installed  ## the peft zoo beside our methods, 19 methods x 3 seeds (studies/atlas.toml, 57 cells: 1 h 52 min of cells at a load of 5-8 on 2 cores; its figures took 36 min before the stored tables of benchmarks/README.md section 15 and are not timed since)
	$(VENV)/bin/tlora-analysis study studies/atlas.toml --out runs/atlas --jobs 2 --no-progress
	$(VENV)/bin/tlora-analysis figures runs/atlas --out figures/atlas --no-progress
	$(VENV)/bin/tlora-analysis report runs/atlas --out figures/atlas/report.html --no-progress

wordnet-lr-sweep: $(VENV)/.installed  ## writes figures/wordnet/lr_sweep (committed): LoRA, TLoRA and head-only at five to seven rates, seed 0, on wordnet-lexname (studies/wordnet_lr_sweep.toml, 17 cells: ~45 min beside other work on 2 cores; needs apt-get install wordnet-base)
	$(VENV)/bin/tlora-analysis study studies/wordnet_lr_sweep.toml --out runs/wordnet_lr_sweep --jobs 2 --no-progress
	$(VENV)/bin/tlora-analysis figures runs/wordnet_lr_sweep --out figures/wordnet/lr_sweep --runs-only --no-progress

wordnet-hypernym-lr-sweep: $(VENV)/.installed  ## writes figures/wordnet/hypernym/lr_sweep (committed): LoRA, TLoRA and head-only at five rates, seed 0, on wordnet-hypernym (studies/wordnet_hypernym_lr_sweep.toml, 17 cells: 52 min for the first 15 at nice 19 beside other work on 2 cores; needs wordnet-base)
	$(VENV)/bin/tlora-analysis study studies/wordnet_hypernym_lr_sweep.toml --out runs/wordnet_hypernym_lr_sweep --jobs 2 --no-progress
	$(VENV)/bin/tlora-analysis figures runs/wordnet_hypernym_lr_sweep --out figures/wordnet/hypernym/lr_sweep --runs-only --no-progress

wordnet-atlas-lr-sweep: $(VENV)/.installed  ## writes figures/wordnet/atlas_lr_sweep (committed): 17 atlas methods at five rates, seed 0, on wordnet-lexname (studies/wordnet_atlas_lr_sweep.toml, 85 cells, hours; resumable; needs wordnet-base)
	$(VENV)/bin/tlora-analysis study studies/wordnet_atlas_lr_sweep.toml --out runs/wordnet_atlas_lr_sweep --jobs 2 --no-progress
	$(VENV)/bin/tlora-analysis figures runs/wordnet_atlas_lr_sweep --out figures/wordnet/atlas_lr_sweep --runs-only --no-progress

wordnet: $(VENV)/.installed  ## writes figures/wordnet (committed): the main job on real text, LoRA, TLoRA, head-only x 3 seeds on wordnet-lexname with the claims audit (studies/wordnet.toml; 9 cells in 22 min at a load of 3-4 on 2 cores; figures 31 s cold and 18 s warm on quiet cores, report after figures 6 s: benchmarks/README.md section 15; needs wordnet-base)
	$(VENV)/bin/tlora-analysis study studies/wordnet.toml --out runs/wordnet --jobs 2 --no-progress
	$(VENV)/bin/tlora-analysis figures runs/wordnet --out figures/wordnet --no-progress
	$(VENV)/bin/tlora-analysis report runs/wordnet --out figures/wordnet/report.html --no-progress

wordnet-hypernym: $(VENV)/.installed  ## writes figures/wordnet/hypernym (committed): the main job on wordnet-hypernym (studies/wordnet_hypernym.toml; needs wordnet-base)
	$(VENV)/bin/tlora-analysis study studies/wordnet_hypernym.toml --out runs/wordnet_hypernym --jobs 2 --no-progress
	$(VENV)/bin/tlora-analysis figures runs/wordnet_hypernym --out figures/wordnet/hypernym --no-progress
	$(VENV)/bin/tlora-analysis report runs/wordnet_hypernym --out figures/wordnet/hypernym/report.html --no-progress

across-tasks: $(VENV)/.installed  ## writes figures/across_tasks (committed): the main job's audit on the default task, wordnet-lexname and wordnet-hypernym side by side, from their committed results.json (seconds)
	$(VENV)/bin/tlora-analysis tasks default=figures/results.json wordnet-lexname=figures/wordnet/results.json wordnet-hypernym=figures/wordnet/hypernym/results.json --out figures/across_tasks

docs: $(VENV)/.installed-dev  ## the docs pages as a static site in site/ (mkdocs, warnings are errors)
	$(VENV)/bin/mkdocs build --strict --quiet

docs-check: $(VENV)/.installed-dev  ## the docs site in headless Chromium: every table column shows at 1280 px, pages keep 800 px (npm installs the browser into benchmarks/browser, ~70 MB; 1-2 min)
	cd benchmarks/browser && npm install --no-audit --no-fund --silent
	$(VENV)/bin/python -m pytest -q tests/test_docs_site.py

test: $(VENV)/.installed-dev  ## lint, then the whole test suite (718 tests: 12 min of pytest, 13.5 min with setup, in a clean clone on 2 quiet cores; 13-14 min of pytest beside a niced training study; the 25 slowest listed)
	$(VENV)/bin/ruff check .
	$(PYTHON) -m pytest -q -n 2 --dist loadfile --durations=25  # a file's shared fixtures are built once; the 25 slowest tests listed

bench: $(VENV)/.installed-dev  ## speed, scale, storage and overhead benchmarks (see benchmarks/README.md)
	$(PYTHON) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
