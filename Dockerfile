# nix-seed container image: one static binary at /nix-seed, nothing else (no shell, no libc).
#
#   docker build -t nix-seed:0.1.0 .
#
# Use it to get the binary into your own Nix image:
#
#   COPY --from=nix-seed:0.1.0 /nix-seed /usr/local/bin/nix-seed
#
# or run it directly (e.g. `nix-seed install` in a Kubernetes hand-off init container; see
# examples/kubernetes/pod-handoff.yaml).
#
# The binary is x86_64 only: .cargo/config.toml pins the target x86_64-unknown-linux-gnu
# (with crt-static), so both stages are pinned to linux/amd64 and the image is never
# labelled with another architecture. On an arm64 build host the build stage runs emulated.

# hadolint ignore=DL3029
FROM --platform=linux/amd64 rust:1.95.0-bookworm AS build
WORKDIR /src
# Only what `cargo build` reads (.dockerignore keeps target/ and .git out of the context).
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY src src
# The same build as the project's: `--locked`, release profile (LTO, stripped), static glibc
# binary via .cargo/config.toml. The registry cache mount only speeds up rebuilds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked \
    && cp target/x86_64-unknown-linux-gnu/release/nix-seed /nix-seed \
    && /nix-seed --version

# hadolint ignore=DL3029
FROM --platform=linux/amd64 scratch
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
