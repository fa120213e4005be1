# handoff: every target installs what it needs first (scripts/bootstrap).
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all bootstrap build test unit-test netns-test lint demo bench clean fuzz fuzz-smoke fuzz-seeds

all: build

bootstrap:
	@scripts/bootstrap

build: bootstrap
	$(CARGO) build --release --workspace --bins

# The eBPF crate builds apart (bpfel, Debian's rustc); clippy checks it for the
# host target, where aya-ebpf also compiles, with the same lint table.
lint: bootstrap
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	cd xdp-ebpf/programs && $(CARGO) fmt -- --check
	cd xdp-ebpf/programs && $(CARGO) clippy --release --locked --target x86_64-unknown-linux-gnu \
		--target-dir ../../target/ebpf-clippy -- -D warnings

unit-test: build
	$(CARGO) test --release --workspace --exclude handoff-testbed

# Tests on real network namespaces and XDP. They need root; under CI=true
# they fail rather than skip when they cannot run.
netns-test: build
	$(CARGO) test --release -p handoff-testbed -- --test-threads=1

# Coverage-guided fuzzing (fuzz/: cargo-fuzz, libFuzzer, the nightly
# toolchain): every target FUZZ_SECONDS long, from the committed seeds. Without
# the nightly toolchain it says so and runs nothing.
FUZZ_SECONDS ?= 600
fuzz: bootstrap
	scripts/fuzz run $(FUZZ_SECONDS)

# make test's share: the committed regression inputs (fuzz/regressions), then
# every target FUZZ_SMOKE_SECONDS long.
FUZZ_SMOKE_SECONDS ?= 15
fuzz-smoke: bootstrap
	scripts/fuzz smoke $(FUZZ_SMOKE_SECONDS)

# Writes the seed corpora again (packet frames and bursts; control messages).
fuzz-seeds: build
	target/release/handoff-fuzz-seeds fuzz
	$(CARGO) test --release -p handoff --lib write_fuzz_seeds -- --ignored

test: lint unit-test fuzz-smoke netns-test

demo: build
	target/release/handoff-demo

# The pipeline micro-benchmark first: it needs no root, the others build test beds.
bench: build
	$(CARGO) bench -p handoff-bench --bench pipeline
	$(CARGO) bench -p handoff-bench --bench dataplane --bench service_path --bench migration --bench migration_load

clean:
	$(CARGO) clean
	rm -rf results
