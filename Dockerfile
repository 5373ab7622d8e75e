# The rayworker image: the pinned Ray base image with rayworker installed.
#   docker build -t rayworker:0.1.0 .
# RAY_VERSION must equal the ray pin in pyproject.toml (tests/deploy checks it). The Python
# tag matches CI's interpreter; py312 works too (requires-python >= 3.11).
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311

# Build the wheel in a throwaway stage, so the final image holds no source tree or build tools.
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG} AS build
WORKDIR /home/ray/build
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users rayworker ./rayworker
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /home/ray/wheels .

FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}
ARG RAY_VERSION
COPY --from=build --chown=ray:users /home/ray/wheels /home/ray/wheels
# The constraint keeps the base image's Ray: pip may add missing extras, never swap Ray.
RUN echo "ray==${RAY_VERSION}" > /home/ray/ray-constraint.txt \
    && pip install --no-cache-dir --constraint /home/ray/ray-constraint.txt \
        /home/ray/wheels/*.whl \
    && rm -rf /home/ray/wheels \
    && rayworker --version
# No ENTRYPOINT: KubeRay and the cluster launcher start `ray start` themselves.
WORKDIR /home/ray
