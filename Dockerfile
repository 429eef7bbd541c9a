# drover's image (drover and drover-extender): build with the Rust toolchain, run from
# distroless as non-root.
#   docker build -t drover:latest .
FROM rust:1-bookworm AS build
WORKDIR /src
# Every workspace member must be present for cargo to resolve the workspace.
COPY Cargo.toml Cargo.lock ./
COPY scheduler scheduler
COPY extender extender
COPY bench bench
COPY tests tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p drover -p drover-extender \
 && mkdir -p /out \
 && cp target/release/drover target/release/drover-extender /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/drover"]
