// The grpc-go client of tests/grpc.rs, run as the child of `keyward run`:
// it reaches the server through the proxy from the environment (HTTPS_PROXY)
// and trusts keyward's CA the way every Go program on Linux does, through
// crypto/x509's system roots, which read SSL_CERT_FILE.
//
// Built in GOPATH mode against Debian's golang-google-grpc-dev (no module
// download): GO111MODULE=off GOPATH=/usr/share/gocode go build client.go.
// Usage: client HOST:PORT CALL. Prints its environment, then what the call
// returned, one `KEY value` line each.
package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// raw passes message bytes as they are: no protobuf types needed.
type raw struct{}

func (raw) Marshal(v interface{}) ([]byte, error)      { return *(v.(*[]byte)), nil }
func (raw) Unmarshal(data []byte, v interface{}) error { *(v.(*[]byte)) = data; return nil }
func (raw) Name() string                               { return "proto" }

func main() {
	target, call := os.Args[1], os.Args[2]
	fmt.Println("ENVIRON", os.Environ())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// An empty tls.Config: the system roots, i.e. SSL_CERT_FILE.
	creds := credentials.NewTLS(&tls.Config{})
	conn, err := grpc.DialContext(ctx, target, grpc.WithTransportCredentials(creds))
	if err != nil {
		fmt.Println("DIAL", err)
		os.Exit(2)
	}
	defer conn.Close()
	in := []byte("hello")
	var out []byte
	var header, trailer metadata.MD
	method := map[string]string{"unary": "/kw.Test/Unary", "echo_auth": "/kw.Test/EchoAuth"}[call]
	err = conn.Invoke(ctx, method, &in, &out, grpc.ForceCodec(raw{}), grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		fmt.Println("CODE", status.Code(err))
		fmt.Println("DETAILS", status.Convert(err).Message())
		os.Exit(2)
	}
	fmt.Println("REPLY", string(out))
	if call == "echo_auth" {
		fmt.Println("INITIAL", header.Get("x-echo-auth")[0])
		fmt.Println("TRAILER", trailer.Get("x-echo-auth")[0])
	}
}
