# Dockerfile - the Numatix FastCGI server on Debian 12 with the same packages as scripts/deps.sh.
FROM debian:12-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential pkg-config \
      libfcgi-dev libjson-c-dev libsqlite3-dev uuid-dev libssl-dev libmongoc-dev libpq-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY src ./src
RUN make

FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends libfcgi0ldbl libjson-c5 \
      libsqlite3-0 libuuid1 libssl3 libmongoc-1.0-0 libpq5 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/cgi-bin/numatix /srv/numatix/cgi-bin/numatix
# nginx's image runs its workers as uid 101; the socket is group-writable for gid 101.
RUN groupadd -g 101 web && useradd -r -g web numatix && mkdir -p /run/numatix && \
    chown numatix:web /run/numatix
USER numatix
CMD ["/bin/sh", "-c", "/srv/numatix/cgi-bin/numatix seed && exec /srv/numatix/cgi-bin/numatix serve"]
