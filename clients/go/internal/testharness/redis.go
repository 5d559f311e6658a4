package testharness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// redisReadyTimeout bounds how long StartRedis waits for PING.
const redisReadyTimeout = 10 * time.Second

// redisStartAttempts is how many fresh ports StartRedis tries when the port
// it picked was taken by someone else in the meantime.
const redisStartAttempts = 3

// Redis is a redis-server process on a loopback port, owned by one test.
// Its methods are safe for concurrent use.
type Redis struct {
	tb      TB
	dir     string // --dir, and home of the log file
	logPath string
	addr    string
	p       *proc
}

// StartRedis starts a fresh redis-server on a free loopback port with
// persistence off, waits until it answers PING and registers a Cleanup that
// kills it. It fails tb when redis-server is not on PATH or does not become
// ready within 10s.
func StartRedis(tb TB) *Redis {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not found on PATH: run `make redis` (scripts/ensure-redis.sh)")
	}
	dir, err := os.MkdirTemp("", "testharness-redis-")
	if err != nil {
		tb.Fatalf("testharness: create redis dir: %v", err)
	}
	r := &Redis{tb: tb, dir: dir, logPath: filepath.Join(dir, "redis.log")}
	tb.Cleanup(r.cleanup)

	for attempt := 1; ; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			tb.Fatalf("testharness: find free port: %v", err)
		}
		_, port, _ := net.SplitHostPort(addr)
		offset := logSize(r.logPath)
		p, err := startProc(r.logPath, bin,
			"--port", port,
			"--bind", "127.0.0.1",
			"--save", "",
			"--appendonly", "no",
			"--dir", r.dir,
			"--protected-mode", "no",
			"--daemonize", "no")
		if err != nil {
			tb.Fatalf("testharness: start redis-server: %v", err)
		}
		r.addr, r.p = addr, p
		err = r.waitReady()
		if err == nil {
			return r
		}
		p.kill()
		if attempt < redisStartAttempts && addrInUse(r.logPath, offset) {
			tb.Logf("testharness: redis port %s was taken, retrying on another port", addr)
			continue
		}
		tb.Fatalf("testharness: %v\nredis log (%s), last %d lines:\n%s",
			err, r.logPath, logTailLines, tailFile(r.logPath, logTailLines))
	}
}

// waitReady polls PING until it is answered, the process exits, or
// redisReadyTimeout passes.
func (r *Redis) waitReady() error {
	deadline := time.Now().Add(redisReadyTimeout)
	for {
		if r.p.exited() {
			return fmt.Errorf("redis-server on %s exited before answering PING: %s", r.addr, r.p.exitDescription())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		reply, err := r.Do(ctx, "PING")
		cancel()
		if err == nil && reply == "PONG" {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("PING answered %q", reply)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s did not answer PING within %v: %v", r.addr, redisReadyTimeout, err)
		}
		time.Sleep(pollInterval)
	}
}

// URL returns the server's address as "redis://127.0.0.1:port/0".
func (r *Redis) URL() string { return "redis://" + r.addr + "/0" }

// Do sends one command on a fresh connection and returns its reply: a
// string for a simple or bulk string, an int64 for an integer, nil for a
// null, []any for an array; an error reply is returned as an error. It
// speaks RESP2 itself so that the client module needs no Redis library.
func (r *Redis) Do(ctx context.Context, args ...string) (any, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", r.addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return nil, err
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return nil, err
	}
	return readReply(bufio.NewReader(conn))
}

// readReply reads one RESP2 reply.
func readReply(br *bufio.Reader) (any, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("redis: empty reply line")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, errors.New("redis: " + body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = readReply(br); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("redis: unexpected reply %q", line)
}

// cleanup kills the server, reports its log tail if the test failed and
// removes its directory.
func (r *Redis) cleanup() {
	if r.p != nil {
		r.p.kill()
	}
	if r.tb.Failed() {
		r.tb.Logf("redis-server %s log, last %d lines:\n%s", r.addr, logTailLines, tailFile(r.logPath, logTailLines))
	}
	_ = os.RemoveAll(r.dir)
}
