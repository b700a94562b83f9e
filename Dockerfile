# mlserve, CPU image. Build: podman build -t mlserve:cpu .   (or docker build)
#   --build-arg EXAMPLES=1   bake the example repository into /models (otherwise mount or use s3://)
# Two stages: the first builds a virtual environment, the second copies only that environment onto a
# slim Python base, so no compiler, pip cache or source tree reaches the final image.
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXAMPLES=0
# A wheelhouse for builds without the torch index: --volume /wheels:/wheels --build-arg PIP_FIND_LINKS=/wheels
ARG PIP_FIND_LINKS
# A CA bundle for builds behind a TLS-inspecting proxy, mounted the same way: --build-arg PIP_CERT=/path
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/mlserve
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mlserve ./mlserve
# torch first, from its CPU index: PyPI's default Linux wheel pulls several GB of CUDA libraries.
RUN /opt/mlserve/bin/pip install --index-url "${TORCH_INDEX}" torch==2.13.0 \
 && /opt/mlserve/bin/pip install . \
 && mkdir /models \
 && if [ "${EXAMPLES}" = 1 ]; then /opt/mlserve/bin/mlserve examples /models; fi

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 mlserve \
 && useradd --system --uid 10001 --gid mlserve --home-dir /home/mlserve --create-home mlserve
COPY --from=build /opt/mlserve /opt/mlserve
COPY --from=build --chown=10001:10001 /models /models
# MLSERVE_* settings (see mlserve/config.py); a mounted /etc/mlserve/mlserve.toml is read with --config.
ENV PATH=/opt/mlserve/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    MLSERVE_SERVER_HOST=0.0.0.0 \
    MLSERVE_SERVER_PORT=8000 \
    MLSERVE_MODELS=/models \
    MLSERVE_REGISTRY_CACHE_DIR=/home/mlserve/.cache/mlserve
USER 10001:10001
WORKDIR /home/mlserve
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MLSERVE_SERVER_PORT', '8000') + '/v2/health/ready', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["mlserve", "start"]
