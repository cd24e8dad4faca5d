# ktcluster with its embedded Kyoto Tycoon-compatible server and its test suite: the
# image of docker-compose.yml's test runner, and of its nodes unless KT_IMAGE names a
# real Kyoto Tycoon image (no Kyoto Tycoon is built here).
#
# PYTHON_IMAGE: any image with Python 3.10+ and pip on the PATH, e.g. a mirror's copy:
#   docker build --build-arg PYTHON_IMAGE=registry.example.com/python:3.12-slim .
# pip installs from PyPI, or from the index that image's pip is set up to use.
# (An empty PYTHON_IMAGE, which docker-compose v1 passes when it is unset, is the default.)
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE:-python:3.12-slim}

WORKDIR /src
COPY pyproject.toml README.md ./
COPY ktcluster ./ktcluster
COPY tests ./tests
RUN pip install --no-cache-dir '.[test]'

EXPOSE 1978
WORKDIR /tmp
# no -host: listen on every address of the container, as ktserver does
CMD ["ktcluster-server", "-port", "1978", ":"]
