# lwm2m-gateway in a container (README.md, docs/deployment.md).
#   docker build -t lwm2m-gateway .
#   docker run -d --name lwm2m -e LWM2M_API_SECRET=change-me \
#     -p 5783:5783/udp -p 5784:5784/udp -p 1883:1883 -p 1884:1884 -p 18083:18083 lwm2m-gateway
# The configuration is /etc/lwm2m-gateway/lwm2m-gateway.toml (the shipped etc/ directory);
# mount your own over it: -v $PWD/my.toml:/etc/lwm2m-gateway/lwm2m-gateway.toml:ro

FROM rust:bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin lwm2m-gateway

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/lwm2m-gateway --create-home lwm2m
COPY --from=build /src/target/release/lwm2m-gateway /usr/local/bin/lwm2m-gateway
COPY etc/ /etc/lwm2m-gateway/
USER lwm2m
WORKDIR /var/lib/lwm2m-gateway
# CoAP over UDP and DTLS; the embedded broker's MQTT 3.1.1 and 5; the management API.
EXPOSE 5783/udp 5784/udp 1883 1884 18083
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:18083/health || exit 1
ENTRYPOINT ["/usr/local/bin/lwm2m-gateway"]
# The shipped file binds the broker and the API to 127.0.0.1; in a container they must
# listen on every interface to be published.
CMD ["--config", "/etc/lwm2m-gateway/lwm2m-gateway.toml", \
     "--api-bind", "0.0.0.0:18083", \
     "--embedded-bind", "0.0.0.0:1883", "--embedded-bind-v5", "0.0.0.0:1884"]
