package testharness

import (
	"bufio"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// echoServer echoes every line back until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	return ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, msg string) (string, error) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return "", err
	}
	line, err := r.ReadString('\n')
	return line, err
}

func TestHarnessProxyForwardsDelaysAndCuts(t *testing.T) {
	t.Parallel()
	p := StartProxy(t, echoServer(t))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if got, err := roundTrip(t, c, r, "hello"); err != nil || got != "hello\n" {
		t.Fatalf("echo through proxy = %q, %v", got, err)
	}

	// A large message crosses intact, in order.
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = 'a' + byte(i%26)
	}
	if got, err := roundTrip(t, c, r, string(big)); err != nil || got != string(big)+"\n" {
		t.Fatalf("1 MiB echo: %d bytes, %v", len(got), err)
	}

	// Latency is added in each direction: a round trip takes at least 2d.
	const d = 100 * time.Millisecond
	p.SetLatency(d)
	if p.Latency() != d {
		t.Fatalf("Latency = %v", p.Latency())
	}
	start := time.Now()
	if got, err := roundTrip(t, c, r, "slow"); err != nil || got != "slow\n" {
		t.Fatalf("echo with latency = %q, %v", got, err)
	}
	if el := time.Since(start); el < 2*d {
		t.Fatalf("round trip took %v with %v latency each way", el, d)
	}
	p.SetLatency(0)

	// Cut ends the connection and refuses new ones until Restore.
	p.Cut()
	if _, err := roundTrip(t, c, r, "cut"); err == nil {
		t.Fatal("round trip succeeded after Cut")
	}
	c2, err := net.Dial("tcp", p.Addr())
	if err == nil {
		_, err = roundTrip(t, c2, bufio.NewReader(c2), "refused")
		c2.Close()
	}
	if err == nil {
		t.Fatal("a new connection worked while cut")
	}
	p.Restore()
	c3, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if got, err := roundTrip(t, c3, bufio.NewReader(c3), "back"); err != nil || got != "back\n" {
		t.Fatalf("after Restore = %q, %v", got, err)
	}

	// Close ends everything, and is idempotent.
	p.Close()
	p.Close()
	if p.Conns() != 0 {
		t.Fatalf("%d connections open after Close", p.Conns())
	}
	if _, err := net.Dial("tcp", p.Addr()); err == nil {
		t.Fatal("proxy still accepting after Close")
	}
}

// Through a proxy with latency, a Redis command with a shorter deadline
// fails at its deadline; without latency it succeeds.
func TestHarnessProxyInFrontOfRedis(t *testing.T) {
	t.Parallel()
	rd := StartRedis(t)
	p := StartProxy(t, rd.Addr())
	c := (&Redis{addr: p.Addr()}).Client(t)
	ctx := context.Background()
	if err := ping(c, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	p.SetLatency(300 * time.Millisecond)
	if err := ping(c, 100*time.Millisecond); err == nil {
		t.Fatal("PING within 100ms through 300ms of latency")
	}
	p.SetLatency(0)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
}
