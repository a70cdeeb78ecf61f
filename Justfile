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
        built=components/target/wasm32-wasip2/release/$svc.wasm; \
        published=registry/$svc/$version.wasm; \
        if ! cmp -s $built $published; then cp $built $published; echo "published $published"; fi; \
    done

# Build the components, then start the host with registry/microhost.toml on 127.0.0.1:3000.
run *ARGS: build-components
    cargo run -p microhost -- serve --manifest registry/microhost.toml --listen 127.0.0.1:3000 {{ARGS}}

# Dev loop: serve registry/microhost.toml with --watch and rebuild the components when
# their sources (or the WIT) change; the host deploys each rebuilt service live, as
# <version>+<hash>, through the health gate. Ctrl-C stops both.
watch *ARGS: build-components
    cargo build -p microhost
    @cargo run -p microhost -- serve --manifest registry/microhost.toml --listen 127.0.0.1:3000 --watch {{ARGS}} & host=$!; \
    trap 'kill $host 2>/dev/null || true' EXIT; \
    stamp=$(mktemp); \
    while kill -0 $host 2>/dev/null; do \
        sleep 1; \
        changed=$(find components wit -path components/target -prune -o -newer "$stamp" -type f \( -name '*.rs' -o -name '*.toml' -o -name '*.wit' \) -print -quit); \
        if [ -n "$changed" ]; then \
            touch "$stamp"; \
            echo "watch: $changed changed; rebuilding components"; \
            just build-components || echo "watch: the build failed; the host keeps the last good versions"; \
        fi; \
    done

# Build the components, then run every test: the host's (unit and integration, real host
# over HTTP) and the guest helper's unit tests (natively, on the host's target).
test: build-components
    cargo test --workspace
    cd components && cargo test -p microhost-guest --target "$(rustc -vV | sed -n 's/^host: //p')"

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

# Release-mode benchmarks (figures, not tests): the event bus, then microhost against a
# native hyper server and `wasmtime serve` (installed if missing); rewrites
# docs/benchmarks.md and docs/benchmarks.json.
bench: build-components
    @wasmtime --version 2>/dev/null | grep -q "^wasmtime 48.0.8" || cargo install --locked wasmtime-cli --version 48.0.8
    RUST_BACKTRACE=0 cargo bench -p microhost --bench bus
    RUST_BACKTRACE=0 cargo bench -p microhost --bench peers
