package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// childModeEnv selects a child-process mode of the test binary (see
// runChild); the tests start such children to kill them for real.
const childModeEnv = "E2E_CHILD_MODE"

// runChild runs a child mode and returns its exit code.
func runChild(mode string) int {
	switch mode {
	case "hold":
		return childHold(os.Getenv("E2E_ADDR"), os.Getenv("E2E_KEY"))
	case "hold-permit":
		return childHoldPermit(os.Getenv("E2E_ADDR"), os.Getenv("E2E_KEY"), os.Getenv("E2E_LIMIT"))
	case "subscribe":
		return childSubscribe(os.Getenv("E2E_ADDR"))
	case "unixlock":
		return childUnixLock(os.Getenv("E2E_ADDR"))
	default:
		fmt.Fprintf(os.Stderr, "unknown child mode %q\n", mode)
		return 2
	}
}

// childHold holds a lock through a HoldLock session with a long TTL,
// prints "HELD <token>" and waits to be killed.
func childHold(addr, key string) int {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	stream, err := v1.NewLockServiceClient(conn).HoldLock(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	err = stream.Send(&v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Acquire_{Acquire: &v1.HoldLockRequest_Acquire{
		Key: key, Ttl: durationpb.New(time.Minute), Owner: "child"}}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	m, err := stream.Recv()
	if err != nil || m.GetAcquired() == nil {
		fmt.Fprintln(os.Stderr, "not acquired:", m, err)
		return 1
	}
	fmt.Printf("HELD %d\n", m.GetAcquired().GetFencingToken())
	for {
		if _, err := stream.Recv(); err != nil {
			return 1
		}
	}
}

func lockClient(t *testing.T, s *testharness.Sidecar) v1.LockServiceClient {
	t.Helper()
	return v1.NewLockServiceClient(s.Conn(t))
}

// ctxT is a context bounded well below the test timeout.
func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// reasonOf returns the gRPC code and ErrorInfo reason of err.
func reasonOf(err error) (codes.Code, string) {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return st.Code(), info.GetReason()
		}
	}
	return st.Code(), ""
}

// waitHealth waits (bounded) until the sidecar's health for "" is want.
func waitHealth(t *testing.T, conn *grpc.ClientConn, want healthpb.HealthCheckResponse_ServingStatus, within time.Duration) {
	t.Helper()
	h := healthpb.NewHealthClient(conn)
	testkit.EventuallyNil(t, within, fmt.Sprintf("health %v", want), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r, err := h.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && r.GetStatus() != want {
			err = fmt.Errorf("health %v", r.GetStatus())
		}
		return err
	})
}

// metricValue scrapes one unlabelled gauge from a Prometheus endpoint.
func metricValue(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return f
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

var errStale = errors.New("stale fencing token")
