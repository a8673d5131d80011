# dentally-notifier as a container: a slim, non-root image with nothing but Python and the
# installed package. Build: docker build -t dentally-notifier .   (compose.yaml does it too)
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# Stage 1: build the wheel and install it, with its dependencies, into a virtualenv.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE MANIFEST.in ./
COPY notifier ./notifier
RUN python -m venv /opt/dentally-notifier \
 && /opt/dentally-notifier/bin/pip install --no-compile "build>=1.2" \
 && /opt/dentally-notifier/bin/python -m build --wheel --outdir /dist . \
 && /opt/dentally-notifier/bin/pip uninstall --yes build pyproject_hooks packaging \
 && /opt/dentally-notifier/bin/pip install /dist/*.whl

# Stage 2: the runtime. No compiler, no build tools, no pip cache; an unprivileged user.
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 notifier \
 && useradd --system --uid 10001 --gid notifier --home-dir /nonexistent \
      --no-create-home --shell /usr/sbin/nologin notifier
COPY --from=build /opt/dentally-notifier /opt/dentally-notifier
COPY config.example.toml /etc/dentally-notifier/config.example.toml
ENV PATH=/opt/dentally-notifier/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
ENTRYPOINT ["dentally-notifier"]
# Mount your config at /etc/dentally-notifier/config.toml (and its credentials); the
# compose file's default service runs `demo` instead.
CMD ["run", "--config", "/etc/dentally-notifier/config.toml"]
