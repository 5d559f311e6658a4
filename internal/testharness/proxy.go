package testharness

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy is a TCP proxy on a loopback port in front of one target address,
// for fault injection: it can delay everything it forwards (SetLatency) and
// cut every connection (Cut, until Restore). Bytes keep their order in each
// direction; a delay applies to the bytes read after it was set. Its
// methods are safe for concurrent use.
type Proxy struct {
	tb     TB
	ln     net.Listener
	target string

	latency atomic.Int64 // nanoseconds added to every chunk, each direction

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	cut    bool
	closed bool
	wg     sync.WaitGroup
}

// proxyChunkBytes is the most one read forwards at once.
const proxyChunkBytes = 32 << 10

// proxyQueue bounds the chunks in flight per direction; a full queue stops
// reading, so a slow side pushes back instead of filling memory.
const proxyQueue = 256

// StartProxy listens on a free loopback port and forwards every accepted
// connection to target (dialled per connection). Cleanup closes it.
func StartProxy(tb TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("testharness: proxy listen: %v", err)
	}
	p := &Proxy{tb: tb, ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	tb.Cleanup(p.Close)
	p.wg.Add(1)
	go p.accept()
	return p
}

// Addr returns the proxy's "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetLatency delays every chunk read from either side by d before it is
// written to the other (so a request and its reply take 2d more).
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// Latency returns the delay set by SetLatency.
func (p *Proxy) Latency() time.Duration { return time.Duration(p.latency.Load()) }

// Cut closes every open connection and makes the proxy close new ones as
// soon as they are accepted (a reset, as a crashed or partitioned peer
// would look), until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		_ = c.Close()
	}
}

// Restore undoes Cut: new connections are forwarded again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

// Conns returns how many connections (both sides counted) are open.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops listening, closes every connection and waits until all the
// proxy's goroutines have ended. It is idempotent.
func (p *Proxy) Close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		_ = p.ln.Close()
		for c := range p.conns {
			_ = c.Close()
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// track registers c, or closes it and reports false when the proxy is cut
// or closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut || p.closed {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	_ = c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // e.g. EMFILE: do not spin
			continue
		}
		if !p.track(c) {
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// serve dials the target for client and forwards both ways until either
// side is done.
func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	defer p.untrack(client)
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return
	}
	if !p.track(server) {
		return
	}
	defer p.untrack(server)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(server, client) }()
	go func() { defer wg.Done(); p.pipe(client, server) }()
	wg.Wait()
}

type proxyChunk struct {
	data []byte
	due  time.Time
}

// pipe copies src to dst, each chunk no earlier than the latency after it
// was read. At EOF it half-closes dst; on any error it closes both.
func (p *Proxy) pipe(dst, src net.Conn) {
	q := make(chan proxyChunk, proxyQueue)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ch := range q {
			if d := time.Until(ch.due); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(ch.data); err != nil {
				_ = src.Close()
				_ = dst.Close()
				for range q { // let the reader finish
				}
				return
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	buf := make([]byte, proxyChunkBytes)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			q <- proxyChunk{data: append([]byte(nil), buf[:n]...), due: time.Now().Add(p.Latency())}
		}
		if err != nil {
			break
		}
	}
	close(q)
	<-done
}
