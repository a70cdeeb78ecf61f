# microhost tasks. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Services published into registry/ (test-* guests and the guest helpers are not), and
# the components written in Python (componentize-py) and JavaScript (componentize-js).
services := "user product order notification analytics"
# Python entries are directory:module (module `app` gives the directory's name).
py_components := "analytics:app test-py:app test-py:unhealthy"
js_components := "notification test-js"

# Where every built component lands, whatever its language.
built := "components/target/wasm32-wasip2/release"

default:
    @just --list

# Add the wasm32-wasip2 target if missing. (Component recipes `cd components` so that
# components/.cargo/config.toml, which sets the target, applies.)
ensure-target:
    @rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# Build every component (release: Rust, Python, JavaScript) and publish the services as
# registry/<service>/<version>.wasm.
build-components: ensure-target build-rust build-py build-js
    for svc in {{services}}; do \
        if [ -f components/$svc/Cargo.toml ]; then \
            version=$(sed -n 's/^version = "\(.*\)"$/\1/p' components/$svc/Cargo.toml | head -n1); \
        elif [ -f components/$svc/package.json ]; then \
            version=$(node -p "require('./components/$svc/package.json').version"); \
        else \
            version=$(sed -n 's/^version = "\(.*\)"$/\1/p' components/$svc/pyproject.toml | head -n1); \
        fi; \
        mkdir -p registry/$svc; \
        built={{built}}/$svc.wasm; \
        published=registry/$svc/$version.wasm; \
        if ! cmp -s $built $published; then cp $built $published; echo "published $published"; fi; \
    done

# The Rust components.
build-rust: ensure-target
    cd components && cargo build --release

# The Python components, with componentize-py pinned in components/py/requirements.txt
# (installed into components/py/.venv on first use). Rebuilt only when their sources,
# the helper or the WIT changed (a build takes ~30 s).
build-py:
    #!/usr/bin/env bash
    set -euo pipefail
    venv=components/py/.venv
    if ! cmp -s components/py/requirements.txt $venv/installed.txt 2>/dev/null; then
        python3 -m venv $venv
        $venv/bin/pip install --quiet --disable-pip-version-check -r components/py/requirements.txt
        cp components/py/requirements.txt $venv/installed.txt
    fi
    mkdir -p {{built}}
    for entry in {{py_components}}; do
        dir=${entry%%:*}; module=${entry#*:}
        name=$dir; [ "$module" = app ] || name=$dir-$module
        out={{built}}/${name//-/_}.wasm
        if [ -f $out ] && [ -z "$(find components/$dir components/py/microhost wit -type f -name '*.py' -newer $out -o -type f -name '*.wit' -newer $out | head -n1)" ]; then
            continue
        fi
        echo "componentize-py: $name"
        PYTHONDONTWRITEBYTECODE=1 $venv/bin/componentize-py -d wit -w microhost:platform/service componentize $module \
            -p components/$dir -p components/py -o $out.tmp
        mv $out.tmp $out
    done

# The JavaScript components, with componentize-js pinned in components/js/package-lock.json
# (`npm ci` on first use). componentize-js reads WASI at 0.2.10 (StarlingMonkey's) and
# brings its own wasi:cli, so it builds from a copy of wit/ rewritten so; the host links
# those 0.2.10 imports to its 0.2.12 implementations.
build-js:
    #!/usr/bin/env bash
    set -euo pipefail
    js=components/js
    if ! cmp -s $js/package-lock.json $js/node_modules/.installed-lock.json 2>/dev/null; then
        (cd $js && npm ci --no-audit --no-fund --loglevel=error)
        cp $js/package-lock.json $js/node_modules/.installed-lock.json
    fi
    wit=components/target/js-wit
    if [ ! -d $wit ] || [ -n "$(find wit -type f -newer $wit/world.wit | head -n1)" ]; then
        rm -rf $wit && mkdir -p components/target && cp -r wit $wit
        grep -rlE '0\.2\.1[12]' $wit | xargs sed -i -E 's/0\.2\.1[12]/0.2.10/g'
        sed -i '/include wasi:cli\/imports/d' $wit/world.wit
    fi
    mkdir -p {{built}}
    for app in {{js_components}}; do
        out={{built}}/${app//-/_}.wasm
        if [ -f $out ] && [ -z "$(find components/$app $js/microhost.js $wit -type f -newer $out | head -n1)" ]; then
            continue
        fi
        echo "componentize-js: $app"
        $js/node_modules/.bin/componentize-js components/$app/index.js --wit $wit -n service -o $out.tmp
        mv $out.tmp $out
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
        changed=$(find components wit \( -path components/target -o -path components/js/node_modules -o -path components/py/.venv \) -prune -o -newer "$stamp" -type f \( -name '*.rs' -o -name '*.toml' -o -name '*.wit' -o -name '*.py' -o -name '*.js' -o -name '*.json' \) -print -quit); \
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
    cd fuzz && cargo fmt --all

# Check formatting of both workspaces.
fmt-check:
    cargo fmt --all -- --check
    cd components && cargo fmt --all -- --check
    cd fuzz && cargo fmt --all -- --check

# Lint both workspaces; warnings are errors.
clippy: ensure-target
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy -p microhost --lib --features fuzzing -- -D warnings
    cargo clippy -p microhost --all-targets --features bench -- -D warnings
    cd components && cargo clippy --workspace --all-targets -- -D warnings

# Everything CI checks: formatting, lints, tests, a minute of each fuzz target.
ci: fmt-check clippy test fuzz-smoke

# Release-mode benchmarks (figures, not tests): the event bus, then microhost against a
# native hyper server, `wasmtime serve` (installed if missing) and the native baseline of
# the seed (host/benches/baseline/), with instruction counts under valgrind's callgrind
# when valgrind is installed; rewrites docs/benchmarks.md and docs/benchmarks.json.
bench: build-components
    @wasmtime --version 2>/dev/null | grep -q "^wasmtime 48.0.8" || cargo install --locked wasmtime-cli --version 48.0.8
    RUST_BACKTRACE=0 cargo bench -p microhost --features bench --bench bus
    RUST_BACKTRACE=0 cargo bench -p microhost --features bench --bench peers

# Only the guest-language figures (Rust, Python, JavaScript hello), merged into the last
# `just bench` report in docs/.
bench-languages: build-components
    RUST_BACKTRACE=0 cargo bench -p microhost --features bench --bench peers -- --languages

# Only the instructions per hello request (callgrind), merged into the last report.
bench-instructions: build-components
    RUST_BACKTRACE=0 cargo bench -p microhost --features bench --bench peers -- --instructions

# Fuzz targets in fuzz/ (docs/fuzzing.md). cargo-fuzz passes nightly-only -Z flags to
# rustc; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
fuzz_targets := "manifest router jwt envelope admin_query edge"
fuzz_env := "RUSTC_BOOTSTRAP=1 TMPDIR=$PWD/fuzz/target/tmp"
fuzz_build := "--sanitizer none"

# Install cargo-fuzz if missing.
ensure-cargo-fuzz:
    @cargo fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz --version 0.13.2

# Build every fuzz target (own workspace, target dir fuzz/target).
fuzz-build: build-components ensure-cargo-fuzz
    mkdir -p fuzz/target/tmp
    {{fuzz_env}} cargo fuzz build {{fuzz_build}}

# Fuzz TARGET for SECS seconds from its committed corpus (fuzz/corpus/TARGET); new
# inputs go to fuzz/target/corpus/TARGET, crashes to fuzz/artifacts/TARGET. A crash
# fails the recipe. `just fuzz-cmin TARGET` folds the new inputs into the corpus.
fuzz TARGET SECS="600": fuzz-build
    mkdir -p fuzz/target/corpus/{{TARGET}} fuzz/corpus/{{TARGET}}
    dict=$PWD/fuzz/dict/{{TARGET}}.dict; status=0; \
    {{fuzz_env}} cargo fuzz run {{fuzz_build}} {{TARGET}} \
        $PWD/fuzz/target/corpus/{{TARGET}} $PWD/fuzz/corpus/{{TARGET}} -- \
        -max_total_time={{SECS}} -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
        $( [ -f $dict ] && echo -dict=$dict ) || status=$?; \
    rm -rf fuzz/target/tmp/microhost-fuzz-*; exit $status

# Every fuzz target for a minute (CI): fails on the first crash.
fuzz-smoke: fuzz-build
    for target in {{fuzz_targets}}; do just fuzz $target 60; done

# Minimize TARGET's committed corpus together with what `just fuzz` found.
fuzz-cmin TARGET: fuzz-build
    mkdir -p fuzz/target/corpus/{{TARGET}}
    cp -n fuzz/target/corpus/{{TARGET}}/* fuzz/corpus/{{TARGET}}/ 2>/dev/null || true
    {{fuzz_env}} cargo fuzz cmin {{fuzz_build}} {{TARGET}} $PWD/fuzz/corpus/{{TARGET}}
    rm -rf fuzz/target/tmp/microhost-fuzz-*
