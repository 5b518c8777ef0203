# The Kaizen operator image: the `kaizen` package and its runtime dependencies from pyproject.toml, nothing else
# (torch and transformers belong to the trainer image, trainer-image/Dockerfile).
#
#   docker build -t ghcr.io/kaizen-dev/kaizen-operator:0.1.0 .

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kaizen
WORKDIR /src
# Dependencies first, read from pyproject.toml's [project].dependencies, so that a code change reuses this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && /opt/kaizen/bin/pip install --requirement requirements.txt
COPY README.md ./
COPY operator/ operator/
# Its requirements are already satisfied by the layer above, so this only adds the package (and checks the pins agree).
RUN /opt/kaizen/bin/pip install .

FROM python:3.11-slim
# A fixed numeric user, so that Kubernetes can verify runAsNonRoot without a passwd lookup.
RUN groupadd --gid 10001 kaizen \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kaizen
COPY --from=build /opt/kaizen /opt/kaizen
# The root filesystem is read-only in the cluster: no bytecode caches; HOME points at the writable /tmp.
ENV PATH=/opt/kaizen/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
ENTRYPOINT ["kaizen"]
CMD ["operator", "--all-namespaces"]
