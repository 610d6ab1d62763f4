# The two commands a new machine needs: `make demo` and `make test`. Both install what is missing
# (libtorch from the PyPI torch wheel, the SeaweedFS test server, Python tools) and are idempotent.

CARGO ?= cargo

.PHONY: demo test setup build clean-demo interop fuzz

## Set up libtorch and the Python tools (idempotent; see infra/).
setup:
	bash infra/setup-libtorch.sh
	bash infra/setup-python.sh >/dev/null

## Build the release binary.
build: setup
	$(CARGO) build --release --locked

## The main job: a demonstration on a local store (./cairn-demo).
demo: build
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(CARGO) run --release --locked --quiet -- demo

## The whole test suite, against a real S3 server (SeaweedFS) started for the run.
test:
	bash infra/test.sh

## Load an export-hf of the tiny model in transformers and compare logits with ours (needs the full
## Python torch: installs it once into ~/.cache/cairn/interop-venv; not part of `make test`).
interop: setup
	bash infra/interop.sh

## Remove the demo's runs (the store) and its keys and logs.
clean-demo:
	rm -rf cairn-demo cairn-demo-local

## Fuzz every decoder of peer bytes for 10 minutes each (infra/fuzz.sh; docs/BENCHMARKS.md).
fuzz:
	bash infra/fuzz.sh run $${FUZZ_SECONDS:-600}
