# Language slot "go": Go livekit/psrpc v0.8.2, the reference implementation.
# (The slot contract is in docs/interop.md, "Language slots".)
#
# Server: tests/interop/go/cmd/conformance-server, built into WORK. Client:
# none as a program: the scenarios' own Go client (generated code, in the
# test process) is the Go client. Needs Go and the module graph
# (tests/interop/setup.sh).
slot_name="Go (livekit/psrpc v0.8.2)"

slot_prepare() {
    export PATH=$PATH:/usr/local/go/bin
    command -v go >/dev/null || { echo "go not found: run tests/interop/setup.sh" >&2; return 1; }
    (cd "$ROOT/tests/interop/go" && go build -o "$WORK/go-conformance-server" ./cmd/conformance-server) || return 1
    slot_server=("$WORK/go-conformance-server")
    slot_client=()
}
