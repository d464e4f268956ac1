# t2i-align: `make run` serves the default model on 127.0.0.1:8080; `make test` runs every test.
# Everything installs into the project: .venv (ONNX Runtime's shared library, ruff, pytest) and cargo's target dir.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        ?= .venv
ORT_VERSION := 1.31.1
CARGO       ?= cargo
# One profile for build, run, test and bench, so the dependencies compile once on a 2-core machine.
CARGO_FLAGS ?= --release --locked
BIN         := $(or $(CARGO_TARGET_DIR),target)/release/t2i-align
MODEL       ?= models/shapes-sd
HOST        ?= 127.0.0.1
PORT        ?= 8080

# `venv` records where pip put the library; read when a recipe runs. Set ORT_DYLIB_PATH to use another library.
ORT_DYLIB_PATH ?= $(shell cat $(VENV)/ort-dylib-path 2>/dev/null)
export ORT_DYLIB_PATH
# The shared library inside the onnxruntime (or onnxruntime-gpu) wheel, as an absolute path.
FIND_ORT = realpath $(VENV)/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.$(ORT_VERSION) > $(VENV)/ort-dylib-path

.PHONY: help venv venv-gpu web web-api system-deps build run test test-rust test-api test-cluster cluster cluster-down scaling test-browser screenshots test-ops deploy-check dashboard-pngs docs schemas audit reliability soak test-python test-python-light lint fmt openapi bench bench-cpu bench-store gpu-pack gpu-slim gpu-restore gpu-check gpu-rehearsal bench-families bench-reward rater-accuracy simulate-raters finetune-loop finetune-rounds finetune-more reward-ablation trainer-venv models test-model clean

help:
	@echo "make run    - serve $(MODEL) on http://$(HOST):$(PORT) (CPU)"
	@echo "make test   - every test: cargo fmt/clippy, Rust unit+integration tests, schemathesis, browser tests, ruff, pytest"
	@echo "make audit  - cargo audit (offline) against the RustSec advisories committed in audit/"
	@echo "make cluster - Postgres, SeaweedFS and 3 replicas on 127.0.0.1:8081-8083 (docs/scaling.md); make cluster-down stops them"
	@echo "make test-cluster - the multi-replica tests, on Postgres + SeaweedFS and on SQLite + a local folder"
	@echo "make scaling - throughput of 1-3 replicas, rollout and reclaim times, Postgres+S3 cost: SCALING.md"
	@echo "make test-ops - promtool on /metrics and deploy/prometheus.yml; every Grafana query through a real Prometheus"
	@echo "make deploy-check - render deploy/k8s (kubectl kustomize), validate it and the compose files offline"
	@echo "make screenshots - the browser tests, also writing docs/console/*.png"
	@echo "make dashboard-pngs - docs/dashboard/*.png and docs/operations.md's panel table, from a live Prometheus"
	@echo "make docs   - regenerate docs/configuration.md from the command line's definitions (a test fails when stale)"
	@echo "make schemas - regenerate the trainer's spec schema from the Rust TrainerSpec (a test fails when stale)"
	@echo "make bench  - latency vs Optimum, throughput under load, best_of cost, /score, RSS: BENCHMARKS.md"
	@echo "make reliability - schemathesis, SIGKILL rounds and the limits table, written to RELIABILITY.md"
	@echo "make soak   - 64 clients for 60 s (generate, score, feedback), written to RELIABILITY.md"
	@echo "make bench-cpu - the optimised graphs vs the export's own vs Optimum, one image, rounds: BENCHMARKS.md"
	@echo "make gpu-pack gpu-slim gpu-check gpu-restore - the GPU check, prepared here and run on a lent GPU (docs/gpu.md)"
	@echo "make gpu-rehearsal - the GPU check's script end to end on the CPU at tiny sizes (part of make test)"
	@echo "make bench-families - SDXL and SDXL-Turbo latency vs Optimum on the same files: BENCHMARKS.md"
	@echo "make bench-reward - best-of-n alignment, cost and /score throughput, written to models/REPORT.md"
	@echo "make rater-accuracy - the simulated rater's accuracy on hard renders, old vs new: models/REPORT.md"
	@echo "make simulate-raters - rate the running server's stored images with the simulated rater"
	@echo "make finetune-loop - rwr, dpo and kto, full weights and LoRA, at equal compute through the service: models/alignment.json"
	@echo "make finetune-rounds - the rounds of #5: rate, fine-tune, evaluate and compare through the service (models/REPORT.md)"
	@echo "make finetune-more - two more rounds from finetune-rounds' round 2, past the budget (models/REPORT.md)"
	@echo "make reward-ablation - the reward model at lambda 0 and 0.5 over 5 seeds, with intervals (models/REPORT.md)"
	@echo "make venv-gpu - install onnxruntime-gpu==$(ORT_VERSION) instead (then run with DEVICE=cuda)"
	@echo "make models - rebuild models/shapes-sd, models/shapes-reward and models/REPORT.md (CPU: under 60 min)"
	@echo "make openapi web-api - regenerate openapi/openapi.json, then the console's types from it"
	@echo "make test-model - rebuild models/tiny-sd, tiny-sd-wide, tiny-sdxl(-turbo, -refiner), tiny-lcm, the tiny reward models and tests/golden (needs torch)"

# The trainer (trainer/, package t2i_trainer) and the scripts (scripts/, package t2i_scripts) install editable
# into both environments, without dependencies, so that `python -m t2i_scripts.ops.api_fuzz` and the like run
# from the repository root. The packages import each other by name; nothing edits sys.path.
PY_PACKAGES := trainer/pyproject.toml scripts/pyproject.toml
INSTALL_PY_PACKAGES = --quiet --disable-pip-version-check --no-deps -e trainer -e scripts

$(VENV)/.installed: requirements-runtime.txt $(PY_PACKAGES)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-runtime.txt
	$(VENV)/bin/pip install $(INSTALL_PY_PACKAGES)
	$(FIND_ORT)
	touch $@

venv: $(VENV)/.installed

# The CUDA build of the same ONNX Runtime, with the CUDA 13 / cuDNN 9 runtime wheels it needs.
venv-gpu: $(VENV)/.installed
	$(VENV)/bin/pip uninstall --yes onnxruntime
	$(VENV)/bin/pip install --quiet "onnxruntime-gpu[cuda,cudnn]==$(ORT_VERSION)"
	$(FIND_ORT)

# The web console (web/: TypeScript, built by Vite with the machine's node and npm). build.rs embeds web/dist in
# the binary, so the server needs neither node nor the folder at run time.
WEB_SOURCES := $(shell find web/src web/public -type f 2>/dev/null) web/index.html web/vite.config.ts web/tsconfig.json
web/node_modules/.installed: web/package.json web/package-lock.json web/.npmrc
	cd web && npm ci --no-audit --no-fund
	touch $@
web/dist/index.html: web/node_modules/.installed $(WEB_SOURCES)
	cd web && npm run build
web: web/dist/index.html

# The console's API types (web/src/api.gen.ts, committed) from the committed spec: run after `make openapi`.
# `make lint` fails while they are stale.
web-api: web/node_modules/.installed
	cd web && npm run gen-api

# Debian packages the tests drive: chromium (browser tests) and prometheus (promtool and a live Prometheus for
# the dashboard's queries). Installed when missing, as root or through sudo.
SYSTEM_PACKAGES := chromium prometheus
system-deps:
	@# chromium for the browser tests, promtool for the alert rules, the Postgres server for the storage tests.
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "installing Debian packages:$$missing"; \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends $$missing \
		|| { $$sudo apt-get update && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends $$missing; }; \
	fi
	@# kubectl for `make deploy-check`: not from Debian, whose kubernetes-client (1.20) embeds kustomize v2.0.3,
	@# too old for deploy/k8s/overlays. deploy_check fails naming what to install when it is missing.
	@command -v kubectl >/dev/null || command -v kustomize >/dev/null \
		|| echo "note: no kubectl (>= 1.21) or kustomize on PATH; make deploy-check needs one: https://kubernetes.io/docs/tasks/tools/"

build: web
	$(CARGO) build $(CARGO_FLAGS)

# The trainer's environment too: fine-tune jobs (the console's Jobs page) run in it, and so does the graph
# optimiser, which --optimize-graphs on runs at the first start (docs/serving.md#graph-optimisation).
run: venv trainer-venv build
	$(BIN) serve --model $(MODEL) --host $(HOST) --port $(PORT) --device $(or $(DEVICE),cpu) --optimize-graphs on

test: venv trainer-venv system-deps lint audit test-rust test-api test-cluster test-ops deploy-check test-browser test-python gpu-rehearsal

lint: venv web
	cd web && npm run typecheck
	cd web && npm run check-api
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --all-targets -- -D warnings
	# The fuzz targets build against the crate's API; checking them here keeps them from going stale.
	$(CARGO) check --manifest-path fuzz/Cargo.toml --locked --target-dir $(or $(CARGO_TARGET_DIR),target)/fuzz
	$(VENV)/bin/ruff check trainer scripts
	$(VENV)/bin/ruff format --check trainer scripts

test-rust: venv web system-deps
	@test -f "$(ORT_DYLIB_PATH)" || { echo "ONNX Runtime library missing: run 'make venv'"; exit 1; }
	$(CARGO) test $(CARGO_FLAGS) --all-targets

# schemathesis against the served /openapi.json: no server errors, no response that breaks the document.
test-api: venv build
	$(VENV)/bin/python -m t2i_scripts.ops.api_fuzz --binary $(BIN)

# Three replicas on one database and one object store (#25): `make cluster` starts Postgres, SeaweedFS and the
# replicas on 127.0.0.1:8081-8083 and waits until all are ready; `make cluster-down` stops what it started.
# `make test-cluster` starts clusters of its own (free ports, both backends) and stops them at the end.
cluster: venv trainer-venv system-deps build
	$(VENV)/bin/python -m t2i_scripts.cluster.cluster up --binary $(BIN) --model $(MODEL)

cluster-down: venv
	$(VENV)/bin/python -m t2i_scripts.cluster.cluster down

# SCALING.md: throughput of 1, 2 and 3 replicas, rollout and reclaim times, and what Postgres + S3 add per request
# (about 10 minutes here).
scaling: venv trainer-venv system-deps build
	$(VENV)/bin/python -m t2i_scripts.cluster.scaling --binary $(BIN) --model $(MODEL) --report SCALING.md

test-cluster: venv trainer-venv system-deps build
	T2I_BINARY=$(abspath $(BIN)) $(VENV)/bin/pytest -q -p no:cacheprovider scripts/tests

# The console in headless chromium (playwright-core) against servers the tests start: playground, rating,
# a fine-tune job followed to the end, activation, API keys. Screenshots land in web/test-results/;
# `make screenshots` also writes them to docs/console/.
test-browser: build trainer-venv system-deps
	cd web && T2I_BINARY=$(abspath $(BIN)) npm test

screenshots: build trainer-venv system-deps
	cd web && UPDATE_DOCS=1 T2I_BINARY=$(abspath $(BIN)) npm test

# cargo audit, offline, against the RustSec advisories committed in audit/ (GitHub, where cargo-audit fetches
# them from, is out of reach); the snapshot must cover every locked crate. cargo-audit installs into .tools/.
CARGO_AUDIT_VERSION := 0.22.2
.tools/bin/cargo-audit:
	$(CARGO) install cargo-audit --locked --version $(CARGO_AUDIT_VERSION) --root .tools
audit: venv .tools/bin/cargo-audit
	$(VENV)/bin/python -m t2i_scripts.ops.advisories audit --cargo-audit .tools/bin/cargo-audit

# The operator surface (#8): promtool on deploy/prometheus.yml and on /metrics after real traffic, and every query
# of deploy/grafana/t2i-align.json through a real Prometheus scraping a real server (about 15 s).
test-ops: venv build system-deps
	$(VENV)/bin/python -m t2i_scripts.ops.ops_check --binary $(BIN)

# The deployment files, offline (#25): deploy/k8s's base and overlays rendered by `kubectl kustomize` and validated
# against the Kubernetes 1.31 schemas in strict mode (kubernetes-validate) plus the checks a schema cannot make
# (probes, secrets only by reference, selectors); the compose files against the Compose specification.
deploy-check: venv
	$(VENV)/bin/python -m t2i_scripts.ops.deploy_check

# docs/dashboard/*.png (Prometheus's graph page for each panel, headless Chromium) and the panel table in
# docs/operations.md (between its ops-check markers).
dashboard-pngs: venv build system-deps
	$(VENV)/bin/python -m t2i_scripts.ops.ops_check --binary $(BIN) --rounds 10 --screenshots docs/dashboard --report docs/operations.md

# docs/configuration.md from the command line's own definitions (tests/docs.rs); `make test` fails when it is stale.
docs:
	UPDATE_DOCS=1 $(CARGO) test $(CARGO_FLAGS) --test docs

# The trainer's input contract, trainer/t2i_trainer/jobs/finetune.schema.json, from the Rust TrainerSpec; a Rust
# test fails when it is stale, and trainer/tests/test_trainer_spec_schema.py holds the trainer to it.
schemas:
	UPDATE_SCHEMAS=1 $(CARGO) test $(CARGO_FLAGS) --lib jobs::trainer::tests::the_committed_schema_is_current

# 64 clients for 60 s: generate, score and feedback; errors by status, p50/p99, RSS before and after.
soak: venv build
	$(VENV)/bin/python -m t2i_scripts.ops.soak --binary $(BIN) --report RELIABILITY.md

# The measured reliability figures, into RELIABILITY.md: schemathesis, SIGKILL rounds (feedback under load,
# fine-tune jobs) counting what was lost, and each limit hit on a running server with what it returned.
reliability: venv trainer-venv build
	$(VENV)/bin/python -m t2i_scripts.ops.api_fuzz --binary $(BIN) --report RELIABILITY.md
	$(VENV)/bin/python -m t2i_scripts.ops.crash_safety --binary $(BIN) --rounds 15 --report RELIABILITY.md
	$(VENV)/bin/python -m t2i_scripts.ops.limits_table --binary $(BIN) --report RELIABILITY.md

# Every trainer test, in the trainer's environment: the world and rater, the goldens, the smoke run of every
# `make models` stage, and the ONNX-vs-PyTorch parity of the committed models.
test-python: trainer-venv
	cd trainer && ../.venv-trainer/bin/pytest -q tests

# The trainer tests that need only numpy, onnx and onnxruntime, in the light .venv.
test-python-light: venv
	cd trainer && ../$(VENV)/bin/pytest -q -m "not trainer_env" tests

fmt:
	$(CARGO) fmt --all
	$(VENV)/bin/ruff format trainer scripts

# Regenerate the committed OpenAPI spec from the code.
openapi: build
	$(BIN) openapi > openapi/openapi.json

# Optimum's pipeline needs torch and diffusers, so the benchmark runs in the trainer's environment.
bench: trainer-venv build
	$(CARGO) build $(CARGO_FLAGS) --example loadgen
	.venv-trainer/bin/python -m t2i_scripts.bench.bench --binary $(BIN) --model $(MODEL) \
		--loadgen $(dir $(BIN))examples/loadgen --out BENCHMARKS.md

# The transformer optimiser's graphs against the export's own and against Optimum, one image, in rounds that take
# turns (#29): its section of BENCHMARKS.md and BENCHMARKS-cpu.json. About 3 minutes on 2 CPU cores.
bench-cpu: trainer-venv build
	.venv-trainer/bin/python -m t2i_scripts.bench.bench_cpu --binary $(BIN) --model $(MODEL)

# What storing one generated image costs /generate at 100, 1,000 and 10,000 stored images (examples/image_store.rs);
# writes its section of BENCHMARKS.md. About a minute.
bench-store: venv
	$(CARGO) build $(CARGO_FLAGS) --example image_store
	$(VENV)/bin/python -m t2i_scripts.bench.bench_store --example $(dir $(BIN))examples/image_store

# The GPU check (#29), step by step in docs/gpu.md. Here: `make gpu-pack` (the bundle: onnxruntime-gpu, Optimum's
# wheels, the stripped binary and the models, xz-compressed and cut into .gpu/part-NN/), `make gpu-slim` (the
# models' big files out of the tree, so that the tree and one part fit one call), then one device call per part,
# then `make gpu-restore`. There, after the bundle is assembled and its env.sh sourced: `make gpu-check`, which
# needs nothing but the machine's python3 and the bundle (no venv, no build).
GPU_CHECK_FLAGS ?=
gpu-pack: venv build
	$(VENV)/bin/python -m t2i_scripts.gpu.transport pack --out .gpu --binary $(BIN)
gpu-slim: venv
	$(VENV)/bin/python -m t2i_scripts.gpu.transport slim
	$(VENV)/bin/python -m t2i_scripts.gpu.transport size
gpu-restore: venv
	$(VENV)/bin/python -m t2i_scripts.gpu.transport restore
gpu-check:
	PYTHONPATH=$(CURDIR)/scripts:$(CURDIR)/trainer$${PYTHONPATH:+:$$PYTHONPATH} python3 -m t2i_scripts.gpu.gpu_check $(GPU_CHECK_FLAGS)
# The same script here, end to end, on the CPU at tiny sizes (about 3 minutes); fails if any section fails.
gpu-rehearsal: trainer-venv build
	PYTHONPATH=scripts:trainer .venv-trainer/bin/python -m t2i_scripts.gpu.gpu_check --device cpu --scale tiny \
		--binary $(BIN) --work build/gpu-rehearsal/work --out build/gpu-rehearsal --runs 2 --threads 2

# SDXL and SDXL-Turbo against Optimum's ORTStableDiffusionXLPipeline on the same files; its section of BENCHMARKS.md.
bench-families: trainer-venv build
	.venv-trainer/bin/python -m t2i_scripts.bench.bench_families --binary $(BIN)

# Best-of-n alignment, its cost and /score throughput, through the service; writes its section of
# models/REPORT.md and models/reward-serving.json. The light .venv is enough (the rater needs numpy and Pillow).
bench-reward: venv build
	$(VENV)/bin/python -m t2i_scripts.bench.bench_reward --binary $(BIN)

# The simulated rater's own accuracy on hard renders (t2i_trainer.build.hard_renders: shading, rims, highlights,
# two tones, off-palette colours, touching shapes, every background), 2000 per condition, against rater.py as it
# was before #26 (loaded from git); writes models/rater-accuracy.json and its section of models/REPORT.md. The
# light .venv is enough; about 2 min on 2 CPU cores.
rater-accuracy: venv
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m t2i_scripts.eval.rater_accuracy

# Label the running server's stored images with the shapes world's rater, through the API (POST /feedback).
simulate-raters: venv
	$(VENV)/bin/python -m t2i_scripts.eval.simulate_raters --url http://$(HOST):$(PORT)

# Issue #26's comparison through the service (t2i_scripts.eval.alignment): the simulated rater labels the
# pretrained model's served images once, then one job per configuration, rwr, dpo and kto each with full weights
# and with LoRA, on the same data at the same steps x batch size, each judged by its gate on all 282 held-out
# prompts with 95% intervals. Writes models/alignment.json and its section of models/REPORT.md. From the stage
# times in models/fine-tune.json: about 6.5 min of rating, then about 12.5 min a job (14 for the first, which
# also samples the pretrained model's evaluation): 80-95 min on 2 CPU cores, dpo's and kto's training, which
# also runs the reference model, being the part not yet measured. ALIGNMENT_FLAGS adds flags, e.g.
# `--configs rwr-full,rwr-lora`, `--rounds 2` or `--smoke`.
finetune-loop: trainer-venv build
	.venv-trainer/bin/python -m t2i_scripts.eval.alignment --binary $(BIN) $(ALIGNMENT_FLAGS)

# The whole feedback loop of #5 through the service: serve, rate with the simulated rater, fine-tune (the trainer
# runs in .venv-trainer), evaluate, compare with best-of-16; writes its section of models/REPORT.md and
# models/fine-tune.json, then judges the versions on every held-out prompt (t2i_scripts.eval.heldout_eval,
# models/heldout-eval.json). The two rounds took 38.2 min on 2 CPU cores (when this was `make finetune-loop`);
# the ablation, gate job and held-out evaluation add about 30 min.
finetune-rounds: trainer-venv build
	.venv-trainer/bin/python -m t2i_scripts.eval.finetune_loop --binary $(BIN)

# Two more rounds past the budget, going on from the version round 2 of `make finetune-rounds` kept: how far more
# feedback carries the count and what it costs. Writes models/fine-tune-continued.json and its own section of
# models/REPORT.md, and judges every kept version on every held-out prompt again (models/heldout-eval.json).
finetune-more: trainer-venv build
	.venv-trainer/bin/python -m t2i_scripts.eval.finetune_loop --binary $(BIN) --model build/finetune-loop/versions/round-2 \
		--first-round 3 --rounds 2 --skip-ablations --json models/fine-tune-continued.json

# The reward model's auxiliary loss over seeds (#26): lambda = 0 against 0.5 at 5 seeds each, on rated samples of
# the pretrained model (build/reward-data, made here by sample_rated.py with the current rater when missing,
# about 10 min); about 35 min of training. Writes models/reward-ablation.json and its section of models/REPORT.md.
reward-ablation: trainer-venv
	test -f build/reward-data/records.jsonl || .venv-trainer/bin/python -m t2i_trainer.build.sample_rated \
		--pipeline models/shapes-sd/diffusers --out build/reward-data --served-defaults models/shapes-sd/t2i-align.json
	.venv-trainer/bin/python -m t2i_scripts.eval.reward_ablation --data build/reward-data

# The trainer's own environment (PyTorch, diffusers, optimum-onnx). Only needed to rebuild models and goldens.
trainer-venv: .venv-trainer/.installed
.venv-trainer/.installed: trainer/requirements.txt $(PY_PACKAGES)
	$(PYTHON) -m venv .venv-trainer
	.venv-trainer/bin/pip install --quiet --disable-pip-version-check -r trainer/requirements.txt
	.venv-trainer/bin/pip install $(INSTALL_PY_PACKAGES)
	touch $@

# Rebuild the default models from nothing (resumes at the stage it was in; FORCE=1 rebuilds all of them).
# Then the reward parity goldens follow the new shapes-reward (seconds).
models: trainer-venv
	.venv-trainer/bin/python -m t2i_trainer.build.make_models $(if $(FORCE),--force,)
	.venv-trainer/bin/python -m t2i_trainer.goldens.reward_goldens --model models/shapes-reward --out tests/golden/reward

# The tiny test models and every golden file the Rust tests read.
test-model: trainer-venv
	.venv-trainer/bin/python -m t2i_trainer.build.build_test_model --out models/tiny-sd
	.venv-trainer/bin/python -m t2i_trainer.build.build_wide_model --out models/tiny-sd-wide
	.venv-trainer/bin/python -m t2i_trainer.build.build_tiny_sdxl --out models/tiny-sdxl --turbo-output models/tiny-sdxl-turbo --refiner-output models/tiny-sdxl-refiner
	.venv-trainer/bin/python -m t2i_trainer.build.build_tiny_lcm --out models/tiny-lcm
	.venv-trainer/bin/python -m t2i_trainer.goldens.make_goldens --model models/tiny-sd --out tests/golden
	.venv-trainer/bin/python -m t2i_trainer.build.export_clip_reward --tiny-random --out models/tiny-clip-reward --goldens tests/golden/reward
	.venv-trainer/bin/python -m t2i_trainer.build.export_open_clip_reward --tiny-random --out models/tiny-open-clip-reward --goldens tests/golden/reward
	.venv-trainer/bin/python -m t2i_trainer.build.export_aesthetic_reward --tiny-random --out models/tiny-aesthetic-reward --goldens tests/golden/reward
	.venv-trainer/bin/python -m t2i_trainer.build.export_image_reward --tiny-random --out models/tiny-image-reward --goldens tests/golden/reward
	.venv-trainer/bin/python -m t2i_trainer.goldens.reward_goldens --model models/shapes-reward --out tests/golden/reward

clean:
	$(CARGO) clean
	rm -rf $(VENV) web/dist web/node_modules
