# Production image: built with the locked dependencies, run as a non-root user
# on a distroless base (no shell, no package manager). Mount the configuration
# read-only at /etc/vault (with `data-dir = "/var/lib/vault"` in it) and a
# volume for the data at /var/lib/vault, which the image creates owned by the
# nonroot user so a fresh named volume is writable. The shred log (erasures a
# restored backup must not undo) goes on a volume of its own, kept out of the
# data volume's backups and restores: `shred-log = "/var/lib/vault-shreds/shred.log"`
# in the configuration, `-v vault-shreds:/var/lib/vault-shreds` (a named volume:
# without the -v, Docker makes an anonymous one that `--rm` deletes, and the next
# container's start refuses the empty log as not the one its database saw;
# the shred log must not be under /etc/vault, which is read-only). The ops listener (9464)
# is plain HTTP without authentication and binds loopback by default; bind it
# wider (VAULT__SERVER__OPS_ADDR=0.0.0.0:9464) only on a network that only
# monitoring reaches.
#
#   docker build -t vault .
#   docker run --read-only -v /path/to/config:/etc/vault:ro -v vault-data:/var/lib/vault \
#     -v vault-shreds:/var/lib/vault-shreds -p 8443:8443 vault serve --config /etc/vault/vault.toml

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends clang libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --locked --release -p vault --bin vault
RUN mkdir -p /out/var/lib/vault /out/var/lib/vault-shreds

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/vault /usr/local/bin/vault
COPY --from=build --chown=65532:65532 /out/var/lib/vault /var/lib/vault
COPY --from=build --chown=65532:65532 /out/var/lib/vault-shreds /var/lib/vault-shreds
USER nonroot:nonroot
VOLUME ["/var/lib/vault", "/var/lib/vault-shreds"]
EXPOSE 8443 9464
ENTRYPOINT ["/usr/local/bin/vault"]
CMD ["serve", "--config", "/etc/vault/vault.toml"]
