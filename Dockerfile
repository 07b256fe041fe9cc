# syntax=docker/dockerfile:1
#
# tokenrelay container image: a static (musl) binary on distroless, running as a non-root user.
#
#   docker build -t tokenrelay:dev .
#   docker run --rm --network host tokenrelay:dev serve --dev   # try it (dev issuer, loopback)
#
# A release, for both architectures, with its OCI labels (see the runtime stage):
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
#     --build-arg SOURCE=https://<where the repository lives> \
#     -t myregistry.azurecr.io/tokenrelay:0.1.0 --push .
#
# No Docker engine runs in this project's CI, so `DEPLOY_CHECK_BUILD=1 .ci/deploy-check`
# replays this build stage's ARG/SHELL/WORKDIR/COPY/RUN lines on the (Debian 12, amd64) CI
# machine itself. Keep RUN lines free of absolute output paths and of anything that only works
# inside Docker, so that replay stays meaningful.

# ---------------------------------------------------------------------------------------------
# Build stage
# ---------------------------------------------------------------------------------------------
# rust:1-bookworm follows the newest stable 1.x toolchain (Cargo.toml asks for at least 1.89).
# For reproducible releases pin it by digest (rust:1-bookworm@sha256:...), e.g. with Renovate.
FROM rust:1-bookworm AS builder

# The platform's architecture, which buildx sets per --platform (amd64, arm64). Each platform
# is built by a builder of that architecture (natively, or emulated by QEMU), so the compiler,
# musl-gcc and the Rust target all match it and no cross toolchain is involved. A plain
# `docker build` leaves it empty: the build machine's architecture is used then.
ARG TARGETARCH
# Overrides the Rust target triple derived from TARGETARCH below.
ARG RUST_TARGET=

# Fail a RUN line when any command of a pipe fails, not only the last one.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

WORKDIR /build

# The Rust target of this platform, kept in ./rust-target for the RUN lines below. A musl target
# gives a fully static binary, so the runtime image needs no libc at all.
RUN arch="${TARGETARCH:-$(dpkg --print-architecture)}" \
    && case "${arch}" in \
         amd64) target=x86_64-unknown-linux-musl ;; \
         arm64) target=aarch64-unknown-linux-musl ;; \
         *) target="" ;; \
       esac \
    && target="${RUST_TARGET:-${target}}" \
    && if [ -z "${target}" ]; then echo "unsupported architecture ${arch}: amd64 and arm64 are built" >&2; exit 1; fi \
    && echo "${target}" > rust-target \
    && echo "architecture ${arch}: Rust target ${target}"

# musl-tools provides musl-gcc, which the C parts of the dependency tree (aws-lc-sys, the
# crypto library behind rustls) compile with (CC_<target> below names it for the cc crate,
# which would otherwise look for <arch>-linux-musl-gcc on arm64). The Rust standard library for
# the musl target comes from rustup. The apt package is deliberately not pinned to a version
# (hadolint DL3008): the builder should get Debian's updates, and it ships nothing into the
# runtime image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add "$(cat rust-target)"

# --no-default-features leaves out the "keyring" feature (the OS keyring for the persistent
# cache's key): the default seccomp profiles of Docker and Kubernetes block the kernel keyutils
# calls, so in a container the key comes from a file (cache.persistence.key_file, a mounted
# Secret) instead. Both cargo builds below use the same flags, so the dependency layer is reused.
#
# 1. Dependencies only. This layer is rebuilt only when Cargo.toml or Cargo.lock change, not on
#    every source edit. Cargo refuses a manifest whose declared targets have no source file, so
#    the awk program lists every [[bin]], [[test]], [[bench]] and [[example]] target's file
#    (its `path`, or cargo's default such as benches/<name>.rs) and an empty stand-in is
#    created for each, besides src/main.rs and src/lib.rs. They are compiled and thrown away.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && awk -F'"' ' \
         function flush() { if (kind != "") { if (path == "") path = dir[kind] "/" name ".rs"; print path }; kind = ""; name = ""; path = "" } \
         BEGIN { dir["bin"] = "src/bin"; dir["test"] = "tests"; dir["bench"] = "benches"; dir["example"] = "examples" } \
         /^\[\[(bin|test|bench|example)\]\]/ { flush(); kind = $0; gsub(/\[|\]| /, "", kind); next } \
         /^\[/ { flush(); next } \
         kind != "" && /^[ \t]*name[ \t]*=/ { name = $2 } \
         kind != "" && /^[ \t]*path[ \t]*=/ { path = $2 } \
         END { flush() }' Cargo.toml \
       | while read -r target; do \
            if [ ! -e "${target}" ]; then mkdir -p "$(dirname "${target}")" && echo 'fn main() {}' > "${target}"; fi; \
         done \
    && target="$(cat rust-target)" \
    && env "CC_${target//-/_}=musl-gcc" cargo build --release --locked --no-default-features --target "${target}" \
    && rm -rf src

# 2. The real sources. COPY keeps the files' own timestamps, which can be older than the
#    stand-ins built above; touching the crate roots makes cargo rebuild tokenrelay itself.
# 3. distroless/static has no libc and no dynamic loader: a binary that needs either would not
#    start there. readelf (binutils, in the rust image) lists what the kernel would have to
#    load: a program interpreter or NEEDED libraries fail the build here instead. (grep reads
#    a file, not a pipe, so no SIGPIPE under pipefail can hide a match.)
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && target="$(cat rust-target)" \
    && env "CC_${target//-/_}=musl-gcc" cargo build --release --locked --no-default-features --target "${target}" \
    && cp "target/${target}/release/tokenrelay" ./tokenrelay \
    && readelf --program-headers --dynamic --wide tokenrelay > tokenrelay.elf \
    && if grep -E 'program interpreter|\(NEEDED\)' tokenrelay.elf >&2; then \
         echo "tokenrelay is not statically linked (above: what it would load)" >&2; exit 1; \
       fi \
    && echo "tokenrelay is statically linked" \
    && ./tokenrelay --version

# ---------------------------------------------------------------------------------------------
# Runtime stage
# ---------------------------------------------------------------------------------------------
# distroless/static: no shell, no package manager, no libc; it does ship the Mozilla CA bundle
# (/etc/ssl/certs/ca-certificates.crt, which rustls uses to verify login.microsoftonline.com),
# tzdata, /etc/passwd with the `nonroot` user (65532) and /tmp. Pin by digest for releases.
FROM gcr.io/distroless/static-debian12:nonroot

# OCI annotations (the opencontainers image-spec, "Pre-Defined Annotation Keys"),
# given as build arguments (see the buildx command at the top). SOURCE's default is a
# placeholder (example.com), like the chart's image repository; the others stay empty unless
# given, rather than claim a version, commit or date the image does not have.
ARG SOURCE=https://git.example.com/tokenrelay/tokenrelay
ARG VERSION=
ARG REVISION=
ARG CREATED=

LABEL org.opencontainers.image.title="tokenrelay" \
      org.opencontainers.image.description="Sidecar token server: Azure managed-identity endpoints backed by a cached upstream credential chain" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"

COPY --from=builder /build/tokenrelay /usr/local/bin/tokenrelay

# Runtime knobs (all optional; every configuration key is also a TOKENRELAY_<SECTION>__<KEY>
# variable, e.g. TOKENRELAY_SERVER__LISTEN):
#
# - Listen address: 127.0.0.1:8080 by default, and that is right in a pod: all containers of a
#   pod share one network namespace, so the app reaches http://127.0.0.1:8080 while nothing
#   outside the pod can. Widening it (0.0.0.0) exposes tokens to the network.
# - Configuration file: --config PATH or TOKENRELAY_CONFIG (mount a ConfigMap, e.g. at
#   /etc/tokenrelay/config.toml). Without one, the identity comes from the AZURE_CLIENT_ID,
#   AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE and AZURE_AUTHORITY_HOST variables that the AKS
#   workload identity webhook injects.
# - App Service secret: TOKENRELAY_SERVER__IDENTITY_HEADER_FILE pointing at a mounted Secret.
#   The App Service endpoint (/msi/token) refuses to start without it (except under --dev).
# - Logs: stderr, JSON when stderr is not a terminal (TOKENRELAY_LOG__FORMAT=auto|text|json,
#   TOKENRELAY_LOG__LEVEL=info).
# - Admin listener: server.admin_listen (TOKENRELAY_SERVER__ADMIN_LISTEN=0.0.0.0:8081) serves
#   only GET /healthz (liveness), GET /readyz (200 once prefetched tokens are cached) and
#   GET /metrics (Prometheus), never a token endpoint, so it may listen on the pod IP where the
#   kubelet's probes and Prometheus connect. They are on the main listener too (loopback).
#   There is deliberately no Docker HEALTHCHECK: the image has no shell or HTTP client, and
#   Kubernetes ignores HEALTHCHECK anyway; use httpGet probes on the admin port.
# - Shutdown: SIGTERM (the default stop signal) drains in-flight requests for up to
#   server.shutdown_grace_secs (10 s), inside Kubernetes' default 30 s grace period.
# - Filesystem: nothing is written at run time, so readOnlyRootFilesystem: true works as is.
#   The opt-in persistent cache ([cache.persistence]) writes one file where its `path` says:
#   mount an emptyDir there (e.g. at /var/cache, with path /var/cache/tokenrelay/tokens.cache)
#   and its key_file from a Secret; see deploy/app-with-sidecar.yaml.
# - User: 65532:65532 (distroless "nonroot"), numeric so that runAsNonRoot can verify it.

# Documentation only: the default token port (on loopback, so not reachable from outside the
# container's network namespace) and the conventional admin port (off unless configured).
EXPOSE 8080 8081

USER 65532:65532

ENTRYPOINT ["/usr/local/bin/tokenrelay"]
CMD ["serve"]
