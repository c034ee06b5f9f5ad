# etcd for ASCOB's locks: Debian bookworm's etcd (3.4, v3 API), the one the test suite runs
# (tests/test_stack.py starts three members of it on loopback). Configured through ETCD_*
# environment variables (see compose.yaml).
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server etcd-client \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/etcd \
 && chown etcd:etcd /var/lib/etcd
ENV ETCDCTL_API=3
USER etcd
VOLUME ["/var/lib/etcd"]
EXPOSE 2379 2380
CMD ["etcd"]
