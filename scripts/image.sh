#!/usr/bin/env bash
# Build the llm-proxy image without a Docker daemon, then prove it works: buildah builds,
# podman runs it with the port published on 127.0.0.1 only, the script checks /health, a
# chat completion against the built-in mock-gpt model and a graceful SIGTERM (a stream in
# flight finishes, exit code 0), and prints the image size.
#
# Public container registries are out of reach, so the base image is made here with
# debootstrap (Debian bookworm minbase + python3 + python3-venv) and cached in the store.
# pip inside the build reaches the package index the way this host does: its index
# settings are read now, from pip's own config and environment, and handed to the build as
# a secret file, so no host name is written into the repository or the image.
#
#   scripts/image.sh          build and check (make image)
#   scripts/image.sh clean    delete the image store, cached base included
#
# Environment: IMAGE (default localhost/llm-proxy:<version>), LLM_PROXY_IMAGE_STORE
# (default /var/tmp/llm-proxy-image), BASE_IMAGE (skip debootstrap and use this one).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STORE="${LLM_PROXY_IMAGE_STORE:-/var/tmp/llm-proxy-image}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)"
IMAGE="${IMAGE:-localhost/llm-proxy:$VERSION}"
LOCAL_BASE="localhost/llm-proxy-base:bookworm"
NAME="llm-proxy-image-check-$$"
ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'image.sh: %s\n' "$*" >&2; exit 1; }

if [[ "${1:-}" == clean ]]; then
  rm -rf "$STORE"
  say "removed $STORE"
  exit 0
fi
[[ $EUID -eq 0 ]] || die "run as root (buildah and podman use a private root store here)"

install_tools() {
  local missing=()
  for tool in buildah podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if ((${#missing[@]})); then
    say "installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah podman runc debootstrap >/dev/null
  fi
}

# A private store under $STORE: nothing touches the host's default container storage.
mkdir -p "$STORE"
WORK="$(mktemp -d "$STORE/work.XXXXXX")"
STORAGE=(--root "$STORE/root" --runroot "$STORE/runroot")
pod() { podman "${STORAGE[@]}" --runtime runc --cgroup-manager cgroupfs --events-backend file "$@"; }
bah() { buildah "${STORAGE[@]}" "$@"; }

cleanup() {
  pod rm --force --ignore "$NAME-a" "$NAME-b" >/dev/null 2>&1 || true
  bah rm --all >/dev/null 2>&1 || true  # working containers a failed build leaves
  [[ -n "${STREAM_PID:-}" ]] && kill "$STREAM_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The first bookworm mirror this host's apt uses (one-line or deb822 format).
debian_mirror() {
  local uri
  uri="$(
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$1 == "deb" && $0 ~ / bookworm / { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }'
  )"
  if [[ -z "$uri" ]]; then
    uri="$(
      awk 'tolower($1) == "uris:" { u = $2 } tolower($1) == "suites:" && $0 ~ /bookworm( |$)/ && u !~ /security/ { print u; exit }' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null
    )"
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

make_local_base() {
  if pod image exists "$LOCAL_BASE"; then
    say "base image $LOCAL_BASE is cached"
    return
  fi
  local rootfs="$WORK/rootfs" started=$SECONDS
  say "debootstrap bookworm minbase + python3 into $rootfs"
  timeout 1200 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$(debian_mirror)" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  # Package lists, caches, manuals and translations are no use in a server image (~50 MB);
  # the copyright files stay.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
  tar -C "$rootfs" --numeric-owner -c . \
    | pod import --change 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >"$WORK/import.log" 2>&1 \
    || { cat "$WORK/import.log" >&2; die "podman import failed"; }
  rm -rf "$rootfs"
  say "base image $LOCAL_BASE made in $((SECONDS - started)) s"
}

# pip's index settings as this host has them, limited to what a container can use:
# http(s) indexes (file:// ones are this host's disk), trusted hosts and the CA bundle.
PIP_CA=""
write_pip_config() {
  python3 - "$WORK/pip.conf" "$WORK/pip-ca" <<'PY'
import re, subprocess, sys

out = subprocess.run(
    [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
).stdout
found = {}
for line in out.splitlines():  # global, user, site, then environment: the last one wins
    m = re.match(r"^[^.]*\.([a-z-]+)='(.*)'$", line)
    if m:
        found[m[1]] = m[2]
web = lambda value: " ".join(u for u in value.split() if u.startswith(("http://", "https://")))
lines = ["[global]"]
if web(found.get("index-url", "")):
    lines.append(f"index-url = {web(found['index-url'])}")
if web(found.get("extra-index-url", "")):
    lines.append(f"extra-index-url = {web(found['extra-index-url'])}")
if found.get("trusted-host"):
    lines.append(f"trusted-host = {found['trusted-host']}")
if found.get("cert"):
    lines.append("cert = /etc/ssl/certs/ca-certificates.crt")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
open(sys.argv[2], "w").write(found.get("cert", ""))
PY
  PIP_CA="$(cat "$WORK/pip-ca")"
  [[ -z "$PIP_CA" && -f /etc/ssl/certs/ca-certificates.crt ]] && PIP_CA=/etc/ssl/certs/ca-certificates.crt
  say "pip settings for the build: $(grep -c = "$WORK/pip.conf") line(s) from this host's pip config"
}

build_image() {
  local base="${BASE_IMAGE:-$LOCAL_BASE}" started=$SECONDS
  local volumes=()
  [[ -n "$PIP_CA" ]] && volumes=(--volume "$PIP_CA:/etc/ssl/certs/ca-certificates.crt:ro")
  say "building $IMAGE on $base"
  timeout 1800 buildah "${STORAGE[@]}" build \
    --runtime runc --network host --format docker --layers \
    "${ULIMITS[@]}" "${volumes[@]}" \
    --secret "id=pipconf,src=$WORK/pip.conf" \
    --build-arg "BASE_IMAGE=$base" \
    --build-arg "VERSION=$VERSION" \
    --build-arg "REVISION=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --file "$ROOT/Dockerfile" --tag "$IMAGE" "$ROOT" >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log" >&2; die "build failed"; }
  BUILD_SECONDS=$((SECONDS - started))
  say "built $IMAGE in $BUILD_SECONDS s"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Podman cannot schedule the image's HEALTHCHECK without systemd and says so on stderr;
# the check itself is run by hand below (podman healthcheck run).
start() {
  local name="$1"
  shift
  pod run --detach --name "$name" "${HARDENED[@]}" "$@" >"$WORK/$name.log" 2>&1 \
    || { cat "$WORK/$name.log" >&2; die "podman run failed"; }
}

wait_ready() {
  local port="$1" name="$2"
  for _ in $(seq 1 120); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/ready" 2>/dev/null; then
      pod healthcheck run "$name" >/dev/null 2>&1 || die "$name: the image's HEALTHCHECK failed"
      return 0
    fi
    if [[ "$(pod inspect --format '{{.State.Running}}' "$name")" != true ]]; then
      pod logs "$name" >&2 || true
      die "$name exited during start-up"
    fi
    sleep 0.5
  done
  pod logs "$name" >&2 || true
  die "$name did not become ready in 60 s"
}

# Stop with SIGTERM (30 s before SIGKILL, as terminationGracePeriodSeconds would) and
# require exit code 0.
stop_and_check() {
  local name="$1" started=$SECONDS code
  timeout 60 podman "${STORAGE[@]}" --runtime runc --cgroup-manager cgroupfs \
    --events-backend file stop -t 30 "$name" >>"$WORK/$name.log" 2>&1
  STOP_SECONDS=$((SECONDS - started))
  code="$(pod inspect --format '{{.State.ExitCode}}' "$name")"
  [[ "$code" == 0 ]] || { pod logs "$name" >&2; die "$name exited $code after SIGTERM"; }
  say "$name: SIGTERM -> exit 0 in $STOP_SECONDS s"
}

# The pod's security context, as the Kubernetes manifests set it.
HARDENED=(--user 10001:10001 --read-only --tmpfs /tmp:rw,size=64m --cap-drop ALL
  --security-opt no-new-privileges "${ULIMITS[@]}")

check_image() {
  local port body
  port="$(free_port)"
  say "run A: the image as built (baked example config, one worker per core)"
  start "$NAME-a" -p "127.0.0.1:$port:8000" "$IMAGE"
  wait_ready "$port" "$NAME-a"
  body="$(curl -fsS "http://127.0.0.1:$port/health")"
  [[ "$body" == *'"ok"'* ]] || die "/health said $body"
  body="$(curl -fsS "http://127.0.0.1:$port/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model": "mock-gpt", "messages": [{"role": "user", "content": "Hello"}]}')"
  [[ "$body" == *'"chat.completion"'* ]] || die "chat completion said $body"
  say "run A: /health ok, HEALTHCHECK ok, chat completion ok"
  stop_and_check "$NAME-a"

  say "run B: SIGTERM during a 4 s stream (one worker, as in Kubernetes)"
  cat >"$WORK/slow.yaml" <<'YAML'
model_list:
  - model_name: mock-slow
    params: {model: mock/mock-slow, mock_chunk_delay_ms: 400, mock_chunks: 10}
YAML
  chmod 644 "$WORK/slow.yaml"
  chmod 755 "$WORK"
  port="$(free_port)"
  start "$NAME-b" -e LLM_PROXY_WORKERS=1 -v "$WORK/slow.yaml:/etc/llm-proxy/config.yaml:ro" \
    -p "127.0.0.1:$port:8000" "$IMAGE"
  wait_ready "$port" "$NAME-b"
  curl -sSN --max-time 30 "http://127.0.0.1:$port/v1/chat/completions" \
    -H 'content-type: application/json' \
    -d '{"model": "mock-slow", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}' \
    >"$WORK/stream.txt" 2>&1 &
  STREAM_PID=$!
  sleep 1
  stop_and_check "$NAME-b"
  wait "$STREAM_PID" || true
  STREAM_PID=""
  grep -q 'data: \[DONE\]' "$WORK/stream.txt" \
    || { cat "$WORK/stream.txt" >&2; die "the in-flight stream was cut by SIGTERM"; }
  ((STOP_SECONDS >= 2)) || die "stop took $STOP_SECONDS s: the stream cannot have drained"
  say "run B: the stream in flight finished with [DONE] before the exit"
}

main() {
  local started=$SECONDS
  install_tools
  [[ -n "${BASE_IMAGE:-}" ]] || make_local_base
  write_pip_config
  build_image
  check_image
  local bytes
  bytes="$(pod image inspect --format '{{.Size}}' "$IMAGE")"
  # Untagged images are the build cache too: only those older than a day go.
  pod image prune --force --filter until=24h >/dev/null 2>&1 || true
  say "image $IMAGE: $((bytes / 1000000)) MB ($bytes bytes), base $(pod image inspect --format '{{.Size}}' "${BASE_IMAGE:-$LOCAL_BASE}" | awk '{printf "%d MB", $1 / 1000000}')"
  say "digest $(pod image inspect --format '{{.Digest}}' "$IMAGE")"
  say "build $BUILD_SECONDS s, whole run $((SECONDS - started)) s"
}

main
