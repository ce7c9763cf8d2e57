# nix-seed container image: one static binary at /nix-seed, nothing else (no shell, no libc).
# One image per architecture (linux/amd64, linux/arm64) under one tag, a manifest list:
#
#   docker build -t nix-seed:0.1.0 .        # the build machine's architecture
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/nix-seed:0.1.0 --push .
#
# Use it to get the binary into your own Nix image (the nix-seed image of that image's
# architecture is picked, as for any FROM):
#
#   COPY --from=nix-seed:0.1.0 /nix-seed /usr/local/bin/nix-seed
#
# or run it directly (e.g. `nix-seed install` in a Kubernetes hand-off init container; see
# examples/kubernetes/pod-handoff.yaml): each node pulls its own architecture's image.
#
# The build stage runs on the build machine's platform and cross-compiles for the target
# platform (no emulation): rustup's standard library for the target, and when the target is
# not the build machine's architecture, Debian's C cross compiler and the target's static
# glibc (gcc-aarch64-linux-gnu and libc6-dev-arm64-cross, or their x86-64 counterparts),
# which also compile the bundled SQLite. .cargo/config.toml links both targets with
# crt-static. See docs/release.md.

FROM --platform=$BUILDPLATFORM rust:1.95.0-bookworm AS build
ARG TARGETARCH
WORKDIR /src
# /target: the Rust target to build for, from the platform buildx (or docker build) asks for.
# hadolint ignore=DL3008
RUN set -eu; \
    case "$TARGETARCH" in \
      amd64) target=x86_64-unknown-linux-gnu; gnu=x86_64-linux-gnu; pkg=x86-64-linux-gnu ;; \
      arm64) target=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; pkg=aarch64-linux-gnu ;; \
      *) echo "nix-seed builds for amd64 and arm64, not $TARGETARCH" >&2; exit 1 ;; \
    esac; \
    rustup target add "$target"; \
    if [ "$(dpkg --print-architecture)" != "$TARGETARCH" ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends "gcc-$pkg" "libc6-dev-$TARGETARCH-cross"; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    command -v "$gnu-gcc" >/dev/null || { echo "no $gnu-gcc to link for $TARGETARCH" >&2; exit 1; }; \
    echo "$target" >/target
# The linker and C compiler of each target (Debian's names, native or cross).
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc \
    AR_x86_64_unknown_linux_gnu=x86_64-linux-gnu-ar \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# Only what `cargo build` reads (.dockerignore keeps target/ and .git out of the context).
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY src src
# The same build as the project's: `--locked`, release profile (LTO, stripped), static glibc
# binary (crt-static: .cargo/config.toml). The registry cache mount only speeds up rebuilds
# (locked: the two platforms' builds share it). The binary runs here only when it is of the
# build machine's architecture.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    set -eu; \
    target=$(cat /target); \
    cargo build --release --locked --target "$target"; \
    cp "target/$target/release/nix-seed" /nix-seed; \
    if [ "$(dpkg --print-architecture)" = "$TARGETARCH" ]; then /nix-seed --version; fi

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/example/nix-seed
LABEL org.opencontainers.image.title="nix-seed" \
      org.opencontainers.image.description="Seed a shared network-disk /nix from a container image's /nix: only missing store paths, atomically, exact metadata, one seeder at a time." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY --from=build /nix-seed /nix-seed
# No USER: seeding runs as root so the copies keep the store's numeric owners (chown).
# Run as another uid, nix-seed still works, warns once, and the files belong to that uid.
ENTRYPOINT ["/nix-seed"]
