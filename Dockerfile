# Berth in an image FROM scratch: one static binary, a default configuration, a non-root user.
#
# Build the static binary first (glibc, statically linked; no toolchain image needed), then the image:
#
#   RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --profile dist --target x86_64-unknown-linux-gnu -p berth-server --bin berth
#   docker build -t berth:0.1.0 .
#
# Run it (data in a named volume, configuration from the image or mounted over it):
#
#   docker run -d -p 5000:5000 -v berth-data:/var/lib/registry berth:0.1.0
#   docker run -d -p 5000:5000 -v berth-data:/var/lib/registry \
#     -v "$PWD/config.yml:/etc/distribution/config.yml:ro" berth:0.1.0
#
# REGISTRY_* variables override the file (docs/configuration.md). scripts/deploy-test.sh builds, runs
# and pushes through this image.
FROM scratch

LABEL org.opencontainers.image.title="berth" \
      org.opencontainers.image.description="A fast OCI container registry" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY target/x86_64-unknown-linux-gnu/dist/berth /berth
COPY deploy/docker/config.yml /etc/distribution/config.yml
# The storage directory and a directory for generated token-signing keys, owned by the unprivileged user
# (a named volume mounted on either inherits that).
COPY --chown=65532:65532 deploy/docker/rootfs/var/lib/registry/ /var/lib/registry/
COPY --chown=65532:65532 deploy/docker/rootfs/etc/berth/keys/ /etc/berth/keys/

USER 65532:65532
EXPOSE 5000
VOLUME ["/var/lib/registry"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["/berth", "healthcheck", "--path", "/readyz"]
ENTRYPOINT ["/berth"]
CMD ["serve"]
