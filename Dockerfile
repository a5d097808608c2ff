# A ready PostgreSQL 15 with dunetrace preloaded:
#   docker build -t dunetrace .
#   docker run -e POSTGRES_PASSWORD=secret -p 5432:5432 dunetrace
# then, in the database `postgres`: CREATE EXTENSION dunetrace;

FROM postgres:15-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential ca-certificates curl git libclang-dev clang pkg-config libssl-dev \
      postgresql-server-dev-15 \
 && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH=/root/.cargo/bin:$PATH
RUN cargo install --locked cargo-pgrx --version 0.18.1 \
 && cargo pgrx init --pg15 /usr/lib/postgresql/15/bin/pg_config
WORKDIR /src
COPY . .
RUN cargo pgrx package --pg-config /usr/lib/postgresql/15/bin/pg_config --out-dir /out

FROM postgres:15-bookworm
COPY --from=builder /out/ /
# The worker runs in the image's default database; change it with -c dunetrace.database=...
CMD ["postgres", "-c", "shared_preload_libraries=dunetrace", "-c", "dunetrace.database=postgres"]
