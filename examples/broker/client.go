// Command client is a program's side of keyward's fd broker (protocol 1),
// standard library only.
//
//	keyward run --broker fd --grant G -- go run client.go HOST PATH
//
// The program has no proxy URL, no token and no CA in its environment, only
// KEYWARD_BROKER_FD (3). Each dial sends one byte 0x01 and gets back 0x01 with
// one descriptor: a stream on which the program speaks plain HTTP/1.1 with
// Host naming the grant's host; keyward forwards it over TLS with the grant's
// credential injected and the response scrubbed. 0xFF means the dial was
// refused; EOF (or EPIPE on the send) means the broker is gone.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"syscall"
)

// broker is the socket the keyward wrapper gave this process.
func broker() (*net.UnixConn, error) {
	n, err := strconv.Atoi(os.Getenv("KEYWARD_BROKER_FD"))
	if err != nil {
		return nil, errors.New("KEYWARD_BROKER_FD is not set: run under `keyward run --broker fd`")
	}
	conn, err := net.FileConn(os.NewFile(uintptr(n), "keyward-broker"))
	if err != nil {
		return nil, err
	}
	unix, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, errors.New("KEYWARD_BROKER_FD is not a Unix socket")
	}
	return unix, nil
}

// dial asks the broker for one fresh stream.
func dial(b *net.UnixConn) (net.Conn, error) {
	if _, _, err := b.WriteMsgUnix([]byte{1}, nil, nil); err != nil {
		return nil, fmt.Errorf("the keyward broker is gone: %w", err)
	}
	buf := make([]byte, 2)
	oob := make([]byte, syscall.CmsgSpace(4))
	n, oobn, _, _, err := b.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for i := range msgs {
			if rights, err := syscall.ParseUnixRights(&msgs[i]); err == nil {
				fds = append(fds, rights...)
			}
		}
	}
	if n != 1 || buf[0] != 1 || len(fds) != 1 {
		for _, fd := range fds {
			syscall.Close(fd)
		}
		if n == 0 {
			return nil, errors.New("the keyward broker is gone (EOF): the daemon stopped or the run ended")
		}
		return nil, errors.New("the keyward broker refused the dial (0xFF)")
	}
	f := os.NewFile(uintptr(fds[0]), "keyward-stream")
	defer f.Close()
	return net.FileConn(f)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: client HOST PATH")
		os.Exit(2)
	}
	b, err := broker()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) { return dial(b) },
	}}
	resp, err := client.Get("http://" + os.Args[1] + os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode)
	fmt.Println(string(body))
}
