#!/usr/bin/env bash
# Regenerate the Go stubs in supertonicv1/ from ../../proto (make go-stubs).
#   ./generate.sh          write supertonicv1/*.pb.go
#   ./generate.sh --check  regenerate into a temp dir; exit 1 naming the stale files
# Options (for tests): --proto-dir DIR (default ../../proto), --out-dir DIR (the module
# root that holds supertonicv1/, default this directory).
# Needs protoc, protoc-gen-go and protoc-gen-go-grpc on PATH (make go-tools). The generated
# headers record the protoc and plugin versions, so compare with the same toolchain.
set -euo pipefail

script_dir="$(cd "$(dirname "$0")" && pwd)"
proto_dir="$script_dir/../../proto"
here="$script_dir"
module="github.com/supertonic-grpc/clients/go"
out_pkg="supertonicv1"

check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1 ;;
    --proto-dir) proto_dir="${2:?--proto-dir needs a value}"; shift ;;
    --out-dir) here="${2:?--out-dir needs a value}"; shift ;;
    *) echo "usage: $0 [--check] [--proto-dir DIR] [--out-dir DIR]" >&2; exit 2 ;;
  esac
  shift
done
proto_dir="$(cd "$proto_dir" && pwd)"
[ "$check" = 1 ] || mkdir -p "$here"
if [ -d "$here" ]; then here="$(cd "$here" && pwd)"; fi

for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || { echo "generate.sh: $tool not found (run make go-tools)" >&2; exit 2; }
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Relative, sorted proto names: protoc embeds them in the descriptors, so the output must
# not depend on the checkout path or directory listing order.
mapfile -t protos < <(cd "$proto_dir" && find . -name '*.proto' -printf '%P\n' | LC_ALL=C sort)
(
  cd "$proto_dir"
  protoc -I . \
    --go_out="$tmp" --go_opt="module=$module" \
    --go-grpc_out="$tmp" --go-grpc_opt="module=$module" \
    "${protos[@]}"
)

if [ "$check" = 1 ]; then
  stale=()
  while IFS= read -r f; do
    cmp -s "$tmp/$f" "$here/$f" 2>/dev/null || stale+=("$here/$f")
  done < <(cd "$tmp" && find . -name '*.pb.go' -printf '%P\n' | LC_ALL=C sort)
  # Stubs of a proto that was removed are stale too.
  if [ -d "$here/$out_pkg" ]; then
    while IFS= read -r f; do
      [ -e "$tmp/$f" ] || stale+=("$here/$f")
    done < <(cd "$here" && find "$out_pkg" -name '*.pb.go' -printf '%p\n' | LC_ALL=C sort)
  fi
  if [ "${#stale[@]}" -gt 0 ]; then
    echo "generate.sh: stale Go stubs: ${stale[*]}; run \`make go-stubs\`" >&2
    exit 1
  fi
  exit 0
fi

find "$here/$out_pkg" -name '*.pb.go' -delete 2>/dev/null || true
(cd "$tmp" && find . -name '*.pb.go' -printf '%P\n') | while IFS= read -r f; do
  mkdir -p "$here/$(dirname "$f")"
  cp "$tmp/$f" "$here/$f"
done
echo "generate.sh: wrote $(cd "$here" && find "$out_pkg" -name '*.pb.go' | LC_ALL=C sort | tr '\n' ' ')" >&2
