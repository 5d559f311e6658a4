// Command shop is a small net/http service that takes payments once, with
// the resilience sidecar: POST /orders/{id}/pay honours an Idempotency-Key
// header (package idempotency of the Go client), so a client that retries
// after a timeout gets the first payment's response instead of paying
// twice; and the payment of one order runs under the sidecar's lock
// "order/<id>" (resilience.WithLock), so two requests with different keys
// never pay the same order at the same moment.
//
// The sidecar's address comes from SIDECAR_ADDR (default 127.0.0.1:50051):
//
//	sidecar --listen 127.0.0.1:50051 &
//	go run . -listen 127.0.0.1:8080      # serve until interrupted
//	curl -i -X POST -H 'Idempotency-Key: k1' -d '{"amount":"9.99"}' http://127.0.0.1:8080/orders/42/pay
//
//	go run . -demo                       # serve on a free port, call itself, print what happened
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/idempotency"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve HTTP on")
	demo := flag.Bool("demo", false, "serve on a free port, send a few requests to it, print the answers and exit")
	flag.Parse()
	if err := run(*listen, *demo); err != nil {
		log.Fatal(err)
	}
}

func run(listen string, demo bool) error {
	conn, err := resilience.Dial() // SIDECAR_ADDR, SIDECAR_API_TOKEN(_FILE)
	if err != nil {
		return err
	}
	defer conn.Close()
	s := &shop{locks: v1.NewLockServiceClient(conn), paid: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders/{id}/pay", s.pay)
	handler := idempotency.Middleware(v1.NewIdempotencyServiceClient(conn))(mux)

	if demo {
		listen = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	if demo {
		err = runDemo("http://"+l.Addr().String(), s)
	} else {
		log.Printf("shop: serving on http://%s", l.Addr())
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		select {
		case <-ctx.Done():
		case err = <-served:
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return errors.Join(err, srv.Shutdown(ctx))
}

// shop pays orders; paid counts the payments made per order.
type shop struct {
	locks v1.LockServiceClient
	mu    sync.Mutex
	paid  map[string]int
}

type payment struct {
	Order   string `json:"order"`
	Payment int    `json:"payment"`
	Amount  string `json:"amount"`
}

// pay handles POST /orders/{id}/pay with a body {"amount": "..."}.
func (s *shop) pay(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Amount string `json:"amount"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Amount == "" {
		http.Error(w, `the body must be {"amount": "..."}`, http.StatusBadRequest)
		return
	}
	id := r.PathValue("id")
	var p payment
	err := resilience.WithLock(r.Context(), s.locks, "order/"+id, func(ctx context.Context, lease resilience.Lease) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.paid[id]++ // the payment provider would be called here, with lease.FencingToken
		p = payment{Order: id, Payment: s.paid[id], Amount: req.Amount}
		return nil
	}, resilience.WithWait(5*time.Second))
	if err != nil {
		// A 5xx is never stored by the middleware: the key is released and
		// the client's retry runs again.
		http.Error(w, "the order is busy, retry: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(p)
}

// payments returns how many payments order id got.
func (s *shop) payments(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paid[id]
}

// runDemo pays order 42 the way a client that retries would, and prints
// each answer.
func runDemo(base string, s *shop) error {
	key := rand.Text() // a client makes one key per payment it means to make
	steps := []struct {
		what, key, body string
	}{
		{"first", key, `{"amount":"9.99"}`},
		{"retry", key, `{"amount":"9.99"}`},
		{"same key, other body", key, `{"amount":"19.99"}`},
		{"new key", rand.Text(), `{"amount":"9.99"}`},
	}
	for _, st := range steps {
		req, err := http.NewRequest(http.MethodPost, base+"/orders/42/pay", bytes.NewBufferString(st.body))
		if err != nil {
			return err
		}
		req.Header.Set("Idempotency-Key", st.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		replayed := resp.Header.Get("Idempotent-Replayed") == "true"
		if resp.Header.Get("Content-Type") == "application/problem+json" {
			var p struct{ Code string }
			if err := json.Unmarshal(body, &p); err != nil {
				return err
			}
			body = []byte(p.Code)
		}
		fmt.Printf("%s: %d %s replayed=%t\n", st.what, resp.StatusCode, bytes.TrimSpace(body), replayed)
	}
	fmt.Printf("payments of order 42: %d\n", s.payments("42"))
	return nil
}
