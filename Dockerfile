# One image for the API and the dataflow (compose picks the command).
# The build stage compiles the core with mypyc (crmflow/compile_core.py), so the image runs
# the compiled core without carrying a compiler; a failed compile fails the build (--check).
FROM python:3.12-slim AS build

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY features features
COPY dataflows dataflows
COPY sinks sinks
COPY api api
COPY config config
COPY crmflow crmflow
COPY history history
RUN python -m venv /opt/crmflow && /opt/crmflow/bin/pip install . 'mypy>=1.10,<3' \
    && /opt/crmflow/bin/python -m crmflow.compile_core \
    && /opt/crmflow/bin/python -m crmflow.compile_core --check \
    && /opt/crmflow/bin/pip uninstall --yes mypy

FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/crmflow/bin:$PATH
COPY --from=build /opt/crmflow /opt/crmflow
RUN useradd --create-home crmflow
USER crmflow
# Bytewax's metrics server writes dataflow.json into the working directory: one it may write
WORKDIR /home/crmflow
EXPOSE 8000 9101
ENTRYPOINT ["crmflow"]
CMD ["api"]
