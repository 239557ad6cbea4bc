# syntax=docker/dockerfile:1
# Multi-stage build: a cached dependency layer, then a small non-root runtime image.
#   docker build -t openai-auth-proxy .
#   docker run --rm -p 8080:8080 --env-file .env openai-auth-proxy

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, against stub sources, so code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && : > src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY config ./config
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && strip target/release/openai-auth-proxy

FROM debian:bookworm-slim
# curl only serves the HEALTHCHECK; the proxy itself embeds its TLS roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin proxy
COPY --from=build /src/target/release/openai-auth-proxy /usr/local/bin/openai-auth-proxy
# The defaults are compiled in; config/ is here for APP_ENV files. Secrets come only from
# the environment (never baked into the image).
COPY config /app/config
WORKDIR /app
USER 10001:10001
ENV BIND_ADDR=0.0.0.0 RUST_LOG=info
EXPOSE 8080 8443
# Plain HTTP on 8080, or HTTPS on 8443 when TLS_CERT_PATH/TLS_KEY_PATH are set.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${BIND_PORT:-8080}/healthz" \
     || curl -fsSk "https://127.0.0.1:${BIND_PORT:-8443}/healthz" || exit 1
# SIGTERM drains in-flight streams (server.shutdown_grace_secs); give `docker stop` a longer
# --time, as docker-compose.yml does with stop_grace_period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/openai-auth-proxy"]
