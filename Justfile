# microhost tasks. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Services published into registry/ (test-* guests and the guest helper are not).
services := "user product order notification"

default:
    @just --list

# Add the wasm32-wasip2 target if missing. (Component recipes `cd components` so that
# components/.cargo/config.toml, which sets the target, applies.)
ensure-target:
    @rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# Build every component (release) and publish the services as registry/<service>/<version>.wasm.
build-components: ensure-target
    cd components && cargo build --release
    for svc in {{services}}; do \
        version=$(sed -n 's/^version = "\(.*\)"$/\1/p' components/$svc/Cargo.toml | head -n1); \
        mkdir -p registry/$svc; \
        cp components/target/wasm32-wasip2/release/$svc.wasm registry/$svc/$version.wasm; \
        echo "published registry/$svc/$version.wasm"; \
    done

# Build the components, then start the host with registry/microhost.toml on 127.0.0.1:3000.
run *ARGS: build-components
    cargo run -p microhost -- serve --manifest registry/microhost.toml --listen 127.0.0.1:3000 {{ARGS}}

# Build the components, then run every test (unit and integration, real host over HTTP).
test: build-components
    cargo test --workspace

# Format both workspaces.
fmt:
    cargo fmt --all
    cd components && cargo fmt --all

# Check formatting of both workspaces.
fmt-check:
    cargo fmt --all -- --check
    cd components && cargo fmt --all -- --check

# Lint both workspaces; warnings are errors.
clippy: ensure-target
    cargo clippy --workspace --all-targets -- -D warnings
    cd components && cargo clippy --workspace --all-targets -- -D warnings

# Everything CI checks: formatting, lints, tests.
ci: fmt-check clippy test

# Release-mode benchmarks (figures, not tests): event bus publish → deliver.
bench: build-components
    cargo bench -p microhost --bench bus
