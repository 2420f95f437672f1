#!/bin/sh
# Container entrypoint: start the worker as the unprivileged `sdxl` user.
#
# The container starts as root only so that this script can hand the model cache to `sdxl`:
# RunPod mounts network volumes at /runpod-volume owned by root (and earlier workers that ran as
# root may have filled the cache), so a worker started directly as non-root could not create or
# update /runpod-volume/sdxl-worker. If ownership cannot be fixed (e.g. a root-squashed mount),
# the worker runs as root rather than failing to start; set RUN_AS_ROOT=1 to skip the switch.
set -eu

user="${WORKER_USER:-sdxl}"
if [ "$(id -u)" != 0 ] || [ "${RUN_AS_ROOT:-0}" = 1 ]; then
  exec "$@"
fi
if ! uid="$(id -u "$user" 2>/dev/null)"; then
  echo "docker-entrypoint: no user $user; running as root" >&2
  exec "$@"
fi

cache="${MODEL_CACHE_DIR:-}"
if [ -z "$cache" ] && [ -d /runpod-volume ]; then
  cache=/runpod-volume/sdxl-worker
fi
ok=1
if [ -n "$cache" ]; then
  if ! mkdir -p "$cache" 2>/dev/null; then
    ok=0
  elif [ "$(stat -c %u "$cache")" != "$uid" ]; then
    # Only the worker's own directory, never the whole volume.
    chown -R "$user:$(id -g "$user")" "$cache" 2>/dev/null || ok=0
  fi
fi

if [ "$ok" = 1 ]; then
  home="$(getent passwd "$user" | cut -d: -f6)"
  exec setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups env HOME="${home:-/tmp}" "$@"
fi
echo "docker-entrypoint: cannot give $cache to user $user; running as root" >&2
exec "$@"
