# One image for the API and the dataflow (compose picks the command).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY features features
COPY dataflows dataflows
COPY sinks sinks
COPY api api
COPY config config
COPY crmflow crmflow
COPY history history
RUN pip install . && useradd --create-home crmflow
USER crmflow
EXPOSE 8000 9101
ENTRYPOINT ["crmflow"]
CMD ["api"]
