#!/usr/bin/env bash
# Build bin/say.
#
# Offline (the default when Debian's Go packages are installed): GOPATH mode against the
# module sources that golang-google-grpc-dev & co. put under /usr/share/gocode/src. The
# module is exposed to the go tool through a symlink in a throwaway GOPATH, so neither
# go.mod nor the tree is touched and no module proxy or checksum database is contacted.
#
# Anywhere else (SAY_BUILD_MODE=module, or no Debian sources found): a normal module build
# through GOPROXY; run `go mod tidy` once there to create go.sum.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
module="github.com/supertonic-grpc/clients/go"
gocode="${SAY_GOCODE:-/usr/share/gocode}"
out="$here/bin/say"

command -v go >/dev/null || { echo "build.sh: go not found (run make go-tools)" >&2; exit 2; }

mode="${SAY_BUILD_MODE:-}"
if [ -z "$mode" ]; then
  if [ -d "$gocode/src/google.golang.org/grpc" ]; then mode=debian; else mode=module; fi
fi

# The go tool refuses to run without a build cache; CI sandboxes sometimes have no $HOME.
if [ -z "${GOCACHE:-}" ] && [ -z "${HOME:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ]; then
  export GOCACHE="${TMPDIR:-/tmp}/say-go-build-cache"
fi

mkdir -p "$here/bin"
case "$mode" in
  debian)
    # grpc-go imports github.com/golang/protobuf; the 1.3 API (Debian's default pick) cannot
    # marshal messages from today's protoc-gen-go, so insist on the APIv2-backed 1.4+.
    if ! grep -q 'google.golang.org/protobuf' "$gocode/src/github.com/golang/protobuf/go.mod" 2>/dev/null; then
      echo "build.sh: $gocode has github.com/golang/protobuf < 1.4; install golang-github-golang-protobuf-1-5-dev" >&2
      exit 2
    fi
    gopath="$(mktemp -d)"
    trap 'rm -rf "$gopath"' EXIT
    mkdir -p "$gopath/src/$(dirname "$module")"
    ln -s "$here" "$gopath/src/$module"
    # GOPATH entries are searched in order: ours (this module) first, then Debian's.
    (
      cd "$gopath/src/$module"
      env GO111MODULE=off GOPATH="$gopath:$gocode" GOFLAGS= GOPROXY=off GOSUMDB=off \
        go build -trimpath -o "$out" "$module/cmd/say"
    )
    ;;
  module)
    (cd "$here" && go build -mod=mod -trimpath -o "$out" ./cmd/say)
    ;;
  *)
    echo "build.sh: SAY_BUILD_MODE must be debian or module, not '$mode'" >&2
    exit 2
    ;;
esac
echo "build.sh: built $out" >&2
