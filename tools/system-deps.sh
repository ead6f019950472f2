#!/usr/bin/env bash
# Installs the Debian packages this project needs when they are missing, so that `make demo`
# and `make test` work on a fresh Debian machine that has only python3 (and make).
#
#   tools/system-deps.sh build    what building .venv needs (python3's venv module)
#   tools/system-deps.sh test     that, and every program the tests run
#
# As root it runs apt-get itself, otherwise through sudo; when it can do neither it prints one
# line naming the missing packages and exits 1. A package counts as present when what the
# tests use of it is there (a command on PATH, /usr/sbin or /sbin; a module; a file), not when
# dpkg says so: nginx-full serves as well as nginx-light, and Node's own packages bring npm.
#
# SYSTEM_DEPS_ASSUME_MISSING="pkg ..." treats those packages as missing (tests of this script).
set -euo pipefail

# The one list. Columns: group, package, how to tell it is present (command NAME | module NAME |
# file GLOB). A later issue that needs a program adds one line here.
PACKAGES="
build  python3-venv       module   ensurepip
test   nginx-light        command  nginx
test   curl               command  curl
test   systemd            command  systemd-analyze
test   systemd-container  command  systemd-nspawn
test   debootstrap        command  debootstrap
test   postgresql         file     /usr/lib/postgresql/*/bin/postgres
test   mono-complete      command  cert-sync
test   nuget              command  nuget
test   nodejs             command  node
test   npm                command  npm
"
PYTHON="${PYTHON:-python3}"
SEARCH_PATH="$PATH:/usr/sbin:/sbin"

present() {  # kind what
  case "$1" in
    command) PATH="$SEARCH_PATH" command -v "$2" >/dev/null ;;
    module) "$PYTHON" -c "import $2" 2>/dev/null ;;
    file) compgen -G "$2" >/dev/null ;;
    *) echo "system-deps: unknown check '$1'" >&2; exit 2 ;;
  esac
}

assumed_missing() {  # package
  [[ " ${SYSTEM_DEPS_ASSUME_MISSING:-} " == *" $1 "* ]]
}

missing_packages() {  # groups to include, as a pattern: build or build|test
  local group package kind what
  while read -r group package kind what; do
    [[ -n "$group" && "$group" =~ ^($1)$ ]] || continue
    if assumed_missing "$package" || ! present "$kind" "$what"; then
      echo "$package"
    fi
  done <<<"$PACKAGES"
}

case "${1:-}" in
  build) groups="build" ;;
  test) groups="build|test" ;;
  *) echo "usage: $0 build|test" >&2; exit 2 ;;
esac
mapfile -t need < <(missing_packages "$groups")
[ ${#need[@]} -eq 0 ] && exit 0

install="apt-get install -y -qq --no-install-recommends ${need[*]}"
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null; then
  sudo=(sudo)
else
  echo "system-deps: missing Debian packages ${need[*]}; not root and no sudo: as root run apt-get update && $install" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "system-deps: missing Debian packages ${need[*]}; no apt-get on this machine: install them by hand" >&2
  exit 1
fi
echo "system-deps: installing ${need[*]}"
if ! { "${sudo[@]}" apt-get update -qq &&
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; }; then
  echo "system-deps: could not install ${need[*]}; as root run apt-get update && $install" >&2
  exit 1
fi
