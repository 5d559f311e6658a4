package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// Issue 18, section 1: what the admission limits keep the sidecar to.
const (
	limitCalls       = 300       // concurrent ExecuteCalls
	limitBodyBytes   = 4_000_000 // each upstream answer ("4 MB")
	limitRounds      = 3         // bursts of limitCalls, one after another
	limitRSSBound    = 200 << 20 // the bound on peak RSS
	limitWaiters     = 10_000    // max_waiters' default
	limitExtraWaiter = 100_000   // waiters arriving past the limit
)

// runLimits measures issue 18's two figures on fresh sidecars: the peak
// RSS (VmHWM) of limitRounds bursts of limitCalls concurrent ExecuteCalls
// whose upstream answers 4 MB, with the default response budget and with
// the budget at its maximum (as good as none, the behaviour before); and
// limitExtraWaiter lock waiters arriving while max_waiters (default) are
// waiting, all refused, with every admitted waiter granted afterwards.
func (t *targetRun) runLimits() {
	tb := t.env.TB.(*benchTB)
	upURL := serveBigBodies(tb, limitBodyBytes)
	dir, err := os.MkdirTemp("", "bench-limits-")
	if err != nil {
		tb.Fatalf("bench: %v", err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	cfg := filepath.Join(dir, "sidecar.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("upstreams:\n  big: {url: %q, max_connections: 1024, timeout: 30s}\n", upURL)), 0o600); err != nil {
		tb.Fatalf("bench: %v", err)
	}
	fmt.Fprintf(t.out, "\n== %d concurrent ExecuteCalls of a %d-byte answer, %d bursts, fresh sidecar each ==\n", limitCalls, limitBodyBytes, limitRounds)
	fmt.Fprintf(t.out, "%-44s %8s %8s %8s %10s %10s\n", "max_response_bytes_in_flight", "ok", "refused", "other", "idle RSS", "peak RSS")
	var defaultPeak int64
	for _, c := range []struct {
		label string
		args  []string
	}{
		{"default (32 MiB)", nil},
		{"4 GiB (no budget in effect, as before)", []string{"--max-response-bytes-in-flight", strconv.Itoa(4 << 30)}},
	} {
		sc := testharness.StartSidecar(tb, t.env.Bin, append([]string{"--config", cfg, "--log-level", "error"}, c.args...)...)
		conns := make([]*grpc.ClientConn, 8)
		for i := range conns {
			cc, err := grpc.NewClient(sc.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
			if err != nil {
				tb.Fatalf("bench: %v", err)
			}
			defer cc.Close()
			conns[i] = cc
		}
		idle := rssBytes(sc.PID())
		var ok, refused, other atomic.Int64
		var firstOther atomic.Value
		for range limitRounds {
			var wg sync.WaitGroup
			for i := range limitCalls {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					r, err := v1.NewBreakerServiceClient(conns[i%len(conns)]).ExecuteCall(ctx, &v1.ExecuteCallRequest{Upstream: "big", Path: "/big"})
					switch {
					case err == nil && len(r.GetBody()) == limitBodyBytes:
						ok.Add(1)
					case limitOf(err) == "max_response_bytes_in_flight":
						refused.Add(1)
					default:
						if other.Add(1) == 1 {
							firstOther.Store(fmt.Sprint(err))
						}
					}
				}()
			}
			wg.Wait()
		}
		peak := procStatus(sc.PID(), "VmHWM")
		sc.Kill()
		if c.args == nil {
			defaultPeak = peak
		}
		fmt.Fprintf(t.out, "%-44s %8d %8d %8d %10s %10s%s\n", c.label, ok.Load(), refused.Load(), other.Load(), mb(idle), mb(peak), errSuffix(firstOther.Load()))
	}
	t.add(target{n: 18, what: fmt.Sprintf("%d concurrent 4 MB ExecuteCalls: peak RSS, default budget", limitCalls), known: defaultPeak > 0,
		met: defaultPeak > 0 && defaultPeak < limitRSSBound, figure: mb(defaultPeak), bound: "< " + mb(limitRSSBound)})
	t.runWaiterLimit()
}

// runWaiterLimit: limitWaiters callers wait, each on a held key, on a
// fresh sidecar on Redis with the default max_waiters; limitExtraWaiter
// more arrive and must be refused; then the holders release and every
// admitted waiter must be granted.
func (t *targetRun) runWaiterLimit() {
	tb := t.env.TB.(*benchTB)
	sc := testharness.StartSidecar(tb, t.env.Bin, "--redis-url", t.env.RedisURL, "--log-level", "error")
	defer sc.Kill()
	conns := dialN(tb, sc.Addr(), 16)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	run := t.seq.Add(1)
	key := func(i int) string { return fmt.Sprintf("wl-%d-%d", run, i) }
	leases := make([]string, limitWaiters)
	runParallel(limitWaiters, 256, func(i int) {
		r, err := v1.NewLockServiceClient(conns[i%len(conns)]).AcquireLock(ctx,
			&v1.AcquireLockRequest{Key: key(i), Ttl: durationpb.New(10 * time.Minute), Owner: "holder"})
		if err == nil && r.GetAcquired() {
			leases[i] = r.GetLease().GetLeaseId()
		}
	})
	rss0 := rssBytes(sc.PID())
	var granted, failed atomic.Int64
	var firstErr atomic.Value
	var waiting sync.WaitGroup
	// Waiters arrive at keyWaiterRate per second (as in keywaiters.go):
	// a burst of them all at once would pass max_concurrent_calls on the
	// way in, before each becomes a waiter.
	tick := time.NewTicker(time.Second / keyWaiterRate * 10)
	defer tick.Stop()
	for i := range limitWaiters {
		if i%10 == 0 {
			<-tick.C
		}
		waiting.Add(1)
		go func() {
			defer waiting.Done()
			r, err := v1.NewLockServiceClient(conns[i%len(conns)]).AcquireLock(ctx, &v1.AcquireLockRequest{Key: key(i),
				Ttl: durationpb.New(time.Minute), WaitTimeout: durationpb.New(5 * time.Minute), Owner: "waiter"})
			if err == nil && r.GetAcquired() {
				granted.Add(1)
			} else if failed.Add(1) == 1 {
				firstErr.Store(fmt.Sprint(r, err))
			}
		}()
	}
	// Every waiter is parked once its key's release channel is subscribed
	// (one per key: each waiter heads its key's queue).
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		if n, _ := strconv.Atoi(redisInfo(ctx, t.env.Redis, "stats")["pubsubshard_channels"]); n >= limitWaiters || failed.Load() > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond) // real time: the waiters arrive
	}
	rssFull := rssBytes(sc.PID())
	var refused, other atomic.Int64
	var firstOther atomic.Value
	t0 := time.Now()
	runParallel(limitExtraWaiter, 256, func(i int) {
		// A short wait: one admitted by mistake would not hold the run up.
		_, err := v1.NewLockServiceClient(conns[i%len(conns)]).AcquireLock(ctx, &v1.AcquireLockRequest{Key: key(i % limitWaiters),
			Ttl: durationpb.New(time.Minute), WaitTimeout: durationpb.New(100 * time.Millisecond), Owner: "extra"})
		if limitOf(err) == "max_waiters" {
			refused.Add(1)
		} else if other.Add(1) == 1 {
			firstOther.Store(fmt.Sprint(err))
		}
	})
	refuseTime := time.Since(t0)
	peakRefusing := procStatus(sc.PID(), "VmHWM")
	runParallel(limitWaiters, 256, func(i int) {
		if leases[i] != "" {
			_, _ = v1.NewLockServiceClient(conns[i%len(conns)]).ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: key(i), LeaseId: leases[i]})
		}
	})
	waiting.Wait()
	fmt.Fprintf(t.out, "\n== %d lock waiters (max_waiters default) on a fresh sidecar on Redis, then %d more ==\n", limitWaiters, limitExtraWaiter)
	fmt.Fprintf(t.out, "extra waiters refused LIMIT_EXCEEDED (max_waiters): %d / %d in %v (%.0f/s)%s\n", refused.Load(), limitExtraWaiter,
		refuseTime.Round(time.Millisecond), float64(limitExtraWaiter)/refuseTime.Seconds(), errSuffix(firstOther.Load()))
	fmt.Fprintf(t.out, "admitted waiters granted after the releases: %d / %d%s\n", granted.Load(), limitWaiters, errSuffix(firstErr.Load()))
	fmt.Fprintf(t.out, "RSS: %s with the keys held, %s with all waiting, peak %s while refusing\n", mb(rss0), mb(rssFull), mb(peakRefusing))
	t.add(target{n: 18, what: fmt.Sprintf("%d waiters past max_waiters refused, admitted all granted", limitExtraWaiter), known: true,
		met:    refused.Load() == limitExtraWaiter && granted.Load() == limitWaiters,
		figure: fmt.Sprintf("%d refused, %d/%d granted", refused.Load(), granted.Load(), limitWaiters), bound: "all"})
}

// limitOf is the ErrorInfo "limit" of a RESOURCE_EXHAUSTED/LIMIT_EXCEEDED
// error ("" for any other).
func limitOf(err error) string {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == "LIMIT_EXCEEDED" {
			return info.GetMetadata()["limit"]
		}
	}
	return ""
}

// serveBigBodies serves n bytes with a Content-Length at every path,
// from this process, until the bench ends.
func serveBigBodies(tb *benchTB, n int) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("bench: listen: %v", err)
	}
	body := make([]byte, n)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "bench: upstream server:", err)
		}
	}()
	tb.Cleanup(func() { _ = hs.Close(); <-served })
	return "http://" + lis.Addr().String()
}
