# ktcluster with its embedded Kyoto Tycoon-compatible server and its test suite.
# docker-compose.yml runs three nodes and the multi-node tests from this image.
# (No Kyoto Tycoon is built here: a real one comes from an image you already have,
# see KT_IMAGE in docker-compose.yml.)
FROM python:3.12-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY ktcluster ./ktcluster
COPY tests ./tests
RUN pip install --no-cache-dir '.[test]'

EXPOSE 1978
WORKDIR /tmp
CMD ["ktcluster-server", "-host", "0.0.0.0", "-port", "1978", ":"]
