module github.com/supertonic-grpc/clients/go

go 1.19

// The minimum versions are the ones Debian bookworm packages (golang-google-grpc-dev,
// golang-google-protobuf-dev), so build.sh can build offline against them and a
// module-proxy build elsewhere resolves the same API.
require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
