#!/usr/bin/env bash
# Runs docker-compose.yml for real under a Docker engine, with each Compose client found
# (`docker compose`, then `docker-compose` v1), each in a project of its own:
#
#  1. the documented command, as written:
#       up --build --abort-on-container-exit --exit-code-from tests
#     it must exit 0, with every test passed but the restart test, which needs a runner;
#  2. the restart test: the nodes up (`up -d`), the tests in `run --rm -T tests`, and node2
#     stopped and started (`stop node2`, `start node2`) when the test prints
#     `KT-RESTART stop node2` / `KT-RESTART start node2`;
#  3. `down`.
#
# Which server the nodes ran is checked on their containers: ktcluster:dev, or KT_IMAGE,
# whose image ID must be the same at the end (Compose never builds or retags it).
#
# Environment (all optional; the first three are docker-compose.yml's own):
#   PYTHON_IMAGE          the Dockerfile's base image (its default: python:3.12-slim)
#   KT_IMAGE, KT_COMMAND  a real Kyoto Tycoon image and its ktserver command
#   WHEELHOUSE            a directory of wheels for PYTHON_IMAGE's Python: ktcluster's
#                         dependencies with its test extra, and hatchling. For engines whose
#                         builds cannot reach PyPI: the script puts them in an image on top
#                         of PYTHON_IMAGE whose pip installs from them only, and builds from it,
#                         e.g.  pip wheel --wheel-dir /tmp/wh '.[test]' hatchling
#                         (with the base image's Python version)
#   COMPOSE_CLIENTS       "v2", "v1" or "v2 v1" (the default: each one that works)
#
# The exit status is 0 when every run passed; the last lines sum up each run.
set -euo pipefail
cd "$(dirname "$0")/.."

RESTART_NODE=node2
TEST_MODULE=tests/test_external_cluster.py

say() { printf 'compose-check: %s\n' "$*"; }
fail() { say "FAILED: $*"; exit 1; }

docker info >/dev/null 2>&1 || { say "no Docker engine reachable (docker info failed)"; exit 2; }

declare -A CLIENT=([v2]="docker compose" [v1]="docker-compose")
clients=()
for name in ${COMPOSE_CLIENTS:-v2 v1}; do
    [[ -n ${CLIENT[$name]:-} ]] || fail "COMPOSE_CLIENTS: unknown client '$name' (v2 or v1)"
    if ${CLIENT[$name]} version >/dev/null 2>&1; then
        clients+=("$name")
    elif [[ -n ${COMPOSE_CLIENTS:-} ]]; then
        fail "${CLIENT[$name]} does not work here"
    fi
done
((${#clients[@]})) || fail "no Compose client works here (neither docker compose nor docker-compose)"

if [[ -n ${WHEELHOUSE:-} ]]; then
    base=ktcluster-check-base:local
    say "layering $WHEELHOUSE onto ${PYTHON_IMAGE:-python:3.12-slim} as $base"
    docker build -q -t "$base" -f - "$WHEELHOUSE" >/dev/null <<EOF
FROM ${PYTHON_IMAGE:-python:3.12-slim}
COPY . /wheelhouse
ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse
EOF
    export PYTHON_IMAGE=$base
fi

node_image=ktcluster:dev
kt_image_id=
if [[ -n ${KT_IMAGE:-} ]]; then
    node_image=$KT_IMAGE
    docker image inspect "$KT_IMAGE" >/dev/null 2>&1 || docker pull "$KT_IMAGE"
    kt_image_id=$(docker image inspect -f '{{.Id}}' "$KT_IMAGE")
fi

log_dir=$(mktemp -d)
project=
cleanup() {
    if [[ -n $project ]]; then
        $compose -p "$project" down --remove-orphans >/dev/null 2>&1 || true
    fi
    rm -rf "$log_dir"
}
trap cleanup EXIT

# "== 5 passed, 1 skipped in 9.1s ==" from a pytest run's output
summary_of() { grep -Eo '[0-9]+ (passed|failed|skipped|errors?)[^=]* in [0-9.]+s' "$1" | tail -1; }

node_images() {
    local service
    for service in node1 node2 node3; do
        docker ps -a --filter "label=com.docker.compose.project=$project" \
            --filter "label=com.docker.compose.service=$service" --format '{{.Image}}'
    done | sort -u
}

results=()
for name in "${clients[@]}"; do
    compose=${CLIENT[$name]}
    project=ktcluster-check-$name-$$
    version=$($compose version --short 2>/dev/null || $compose version | head -1)
    say "$compose ($version), nodes from $node_image, project $project"

    up_log=$log_dir/$name-up.log
    started=$SECONDS
    set +e
    $compose -p "$project" up --build --abort-on-container-exit --exit-code-from tests </dev/null 2>&1 | tee "$up_log"
    status=${PIPESTATUS[0]}
    set -e
    up_summary=$(summary_of "$up_log")
    say "up: exit status $status, $up_summary ($((SECONDS - started)) s)"
    ((status == 0)) || fail "$compose up exited with status $status"
    [[ $up_summary =~ ^[0-9]+\ passed,\ 1\ skipped ]] || fail "up: expected every test passed and 1 skipped"
    skips=$(grep -Ec 'SKIPPED \[[0-9]+\] ' "$up_log" || true)      # -rs: one line per reason
    restart_skips=$(grep -E 'SKIPPED \[[0-9]+\] ' "$up_log" | grep -c 'KT_RESTART_NODE' || true)
    ((skips == 1 && restart_skips == 1)) || fail "up: a test other than the restart test was skipped"
    [[ $(node_images) == "$node_image" ]] || fail "the nodes ran $(node_images | xargs), not $node_image"

    restart_log=$log_dir/$name-restart.log
    started=$SECONDS
    $compose -p "$project" up -d node1 node2 node3 </dev/null
    : >"$restart_log"
    while IFS= read -r line; do
        printf '%s\n' "$line" | tee -a "$restart_log"
        case $line in
            "KT-RESTART stop $RESTART_NODE") $compose -p "$project" stop "$RESTART_NODE" </dev/null ;;
            "KT-RESTART start $RESTART_NODE") $compose -p "$project" start "$RESTART_NODE" </dev/null ;;
        esac
    done < <($compose -p "$project" run --rm -T -e "KT_RESTART_NODE=$RESTART_NODE" tests \
                 python -m pytest -v -rs -p no:cacheprovider "$TEST_MODULE" -k restart </dev/null 2>&1
             echo "run: exit status $?")
    status=$(sed -n 's/^run: exit status //p' "$restart_log")
    restart_summary=$(summary_of "$restart_log")
    say "restart: exit status $status, $restart_summary ($((SECONDS - started)) s)"
    [[ $status == 0 && $restart_summary =~ ^1\ passed(,\ [0-9]+\ deselected)?\ in ]] || fail "the restart test did not pass"

    $compose -p "$project" down --remove-orphans </dev/null
    project=
    results+=("$compose ($version), nodes $node_image: up: $up_summary; restart: $restart_summary")
done

if [[ -n $kt_image_id ]]; then
    after=$(docker image inspect -f '{{.Id}}' "$KT_IMAGE")
    [[ $after == "$kt_image_id" ]] || fail "$KT_IMAGE now names image $after, not $kt_image_id"
    say "$KT_IMAGE is still image $kt_image_id"
fi
for result in "${results[@]}"; do
    say "passed: $result"
done
