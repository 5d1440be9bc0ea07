# Tariff server: slim, non-root, journal on a volume, gRPC health check.
FROM python:3.11-slim AS build
# The wheel holds the rating kernel (engine/kernel, Rust + PyO3, built by setuptools-rust): the build stage needs a
# stable Rust toolchain and a C linker, as `make install` does (Makefile); the final image needs neither.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY engine ./engine
COPY server ./server
COPY clients/python ./clients/python
RUN pip wheel --no-cache-dir --wheel-dir /wheels . grpcio-health-checking==1.85.1

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/tariff tariff \
    && mkdir -p /var/lib/tariff/data && chown -R tariff /var/lib/tariff
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER tariff
WORKDIR /var/lib/tariff
VOLUME ["/var/lib/tariff/data"]
EXPOSE 50051
# Without API keys the server refuses a non-loopback address; in a container the port is published by the
# runtime, so --insecure is explicit here: put the container on a private network or add API keys.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
sys.exit(0 if g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=2).status == 1 else 1)"
ENTRYPOINT ["tariff", "serve", "--listen", "0.0.0.0:50051", "--data-dir", "/var/lib/tariff/data", "--insecure"]
CMD ["--demo"]
