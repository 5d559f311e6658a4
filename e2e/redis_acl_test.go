package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// aclMarker marks the ACL file line in docs/security.md that the test applies.
const aclMarker = "<!-- redis-acl-line -->"

// docACLRules reads the least-privilege ACL line of docs/security.md (the
// users.acl form, "user sidecar on >PASSWORD ..."), so the documented line
// is the one tested. It returns the user name and its rules with the
// password placeholder replaced.
func docACLRules(t *testing.T, password string) (string, []string) {
	t.Helper()
	f, err := os.Open(filepath.Join(moduleRoot(t), "docs", "security.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	marked, inBlock := false, false
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == aclMarker:
			marked = true
		case marked && !inBlock && strings.HasPrefix(line, "```"):
			inBlock = true
		case inBlock && strings.HasPrefix(line, "user "):
			fields := strings.Fields(line)
			rules := fields[2:]
			replaced := false
			for i, r := range rules {
				if r == ">PASSWORD" {
					rules[i], replaced = ">"+password, true
				}
			}
			if !replaced {
				t.Fatalf("docs/security.md: the ACL line has no >PASSWORD placeholder: %s", line)
			}
			return fields[1], rules
		case inBlock:
			t.Fatalf("docs/security.md: the block after %s must start with the \"user ...\" line, got %q", aclMarker, line)
		}
	}
	t.Fatalf("docs/security.md has no %s block with a \"user ...\" line", aclMarker)
	return "", nil
}

// setUser runs ACL SETUSER name rules... as the default (admin) user.
func setUser(t *testing.T, admin *redis.Client, name string, rules ...string) {
	t.Helper()
	args := []any{"ACL", "SETUSER", name, "reset"}
	for _, r := range rules {
		args = append(args, r)
	}
	if err := admin.Do(ctxT(t, 10*time.Second), args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER %s: %v", name, err)
	}
}

// aclLog returns Redis's ACL LOG: one entry per denied command or key.
func aclLog(t *testing.T, admin *redis.Client) []any {
	t.Helper()
	v, err := admin.Do(ctxT(t, 10*time.Second), "ACL", "LOG").Slice()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// runTour runs one README tour against addr and checks its expected output.
func runTour(t *testing.T, tr *tour, addr string) {
	t.Helper()
	binDir := filepath.Join(moduleRoot(t), ".bin")
	script := strings.ReplaceAll(tr.script.String(), "localhost:50051", addr)
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Env = append(os.Environ(), "PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tour %q failed: %v\n%s", tr.name, err, out)
	}
	rest := string(out)
	for _, want := range tr.expect {
		i := strings.Index(rest, want)
		if i < 0 {
			t.Fatalf("tour %q: output lacks %q (in order)\n--- output ---\n%s", tr.name, want, out)
		}
		rest = rest[i+len(want):]
	}
}

// TestRedisACLLeastPrivilege: the sidecar does everything the README tours
// do, plus held locks with waiters and a saga whose compensation runs,
// connected as a user with exactly the ACL line of docs/security.md, and
// Redis denies it nothing (its ACL LOG stays empty). A user without that
// line gets clear errors: UNAVAILABLE/STORE_UNAVAILABLE for the app, NOT
// SERVING health when no command is allowed, and a log naming NOPERM and
// docs/security.md for the operator.
func TestRedisACLLeastPrivilege(t *testing.T) {
	if _, err := os.Stat(filepath.Join(moduleRoot(t), ".bin", "grpcurl")); err != nil {
		t.Fatalf("grpcurl not in .bin (run `make tools`): %v", err)
	}
	bin := testharness.BuildSidecar(t)
	rd := testharness.StartRedis(t)
	admin := rd.Client(t)
	user, rules := docACLRules(t, "s3cret-acl-test")
	setUser(t, admin, user, rules...)
	url := fmt.Sprintf("redis://%s:s3cret-acl-test@%s/0", user, rd.Addr())

	t.Run("tours", func(t *testing.T) {
		for _, tr := range readTours(t, filepath.Join(moduleRoot(t), "README.md"), tourMarker) {
			args := []string{"--redis-url", url}
			if tr.config != "" {
				args = append(args, "--config", filepath.Join(moduleRoot(t), tr.config))
			}
			runTour(t, tr, testharness.StartSidecar(t, bin, args...).Addr())
		}
	})

	t.Run("locks and sagas", func(t *testing.T) {
		var undone atomic.Int32
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/api/undo/reserve" {
				undone.Add(1)
			}
			w.WriteHeader(http.StatusOK)
		}))
		t.Cleanup(up.Close)
		cfg := brkConfig(t, "upstreams:\n  inventory: {url: \""+up.URL+"/api\"}\n")
		sc := testharness.StartSidecar(t, bin, "--redis-url", url, "--config", cfg, "--redis-wait-replicas", "all")
		conn := sc.Conn(t)
		ctx := ctxT(t, time.Minute)
		locks := v1.NewLockServiceClient(conn)

		hold, err := locks.HoldLock(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := hold.Send(&v1.HoldLockRequest{Msg: &v1.HoldLockRequest_Acquire_{Acquire: &v1.HoldLockRequest_Acquire{
			Key: "acl/k", Ttl: durationpb.New(2 * time.Second), Owner: "holder"}}}); err != nil {
			t.Fatal(err)
		}
		if m, err := hold.Recv(); err != nil || m.GetAcquired() == nil {
			t.Fatalf("HoldLock: %v, %v", m, err)
		}
		// A waiter queues behind the session (pub/sub wake-up), and gets the
		// lock once the session ends.
		waited := make(chan error, 1)
		go func() {
			r, err := locks.AcquireLock(ctx, &v1.AcquireLockRequest{Key: "acl/k", Ttl: durationpb.New(5 * time.Second),
				WaitTimeout: durationpb.New(20 * time.Second), Owner: "waiter"})
			if err == nil && !r.GetAcquired() {
				err = fmt.Errorf("not acquired: %v", r)
			}
			if err == nil {
				_, err = locks.ReleaseLock(ctx, &v1.ReleaseLockRequest{Key: "acl/k", LeaseId: r.GetLease().GetLeaseId()})
			}
			waited <- err
		}()
		testkit.Eventually(t, 10*time.Second, "the waiter is queued in Redis", func() bool { return lockQueued(t, admin) })
		if err := hold.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if err := <-waited; err != nil {
			t.Fatalf("waiter: %v", err)
		}

		sagas := v1.NewSagaServiceClient(conn)
		if _, err := sagas.StartSaga(ctx, &v1.StartSagaRequest{SagaId: "acl-1", Name: "order", Timeout: durationpb.New(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		if _, err := sagas.RecordStep(ctx, &v1.RecordStepRequest{SagaId: "acl-1", Step: "reserve",
			Compensation: &v1.Compensation{Upstream: "inventory", Method: "POST", Path: "/undo/reserve"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := sagas.AbortSaga(ctx, &v1.AbortSagaRequest{SagaId: "acl-1", Reason: "test"}); err != nil {
			t.Fatal(err)
		}
		waitSaga(t, ctx, sagas, "acl-1", v1.SagaState_SAGA_STATE_COMPENSATED)
		if undone.Load() != 1 {
			t.Fatalf("the compensation reached the upstream %d times, want 1", undone.Load())
		}
	})

	if log := aclLog(t, admin); len(log) != 0 {
		t.Fatalf("Redis denied the documented ACL user %d times: %v", len(log), log)
	}

	// Users without the line.
	expectStoreUnavailable := func(t *testing.T, sc *testharness.Sidecar) {
		t.Helper()
		_, err := v1.NewLockServiceClient(sc.Conn(t)).AcquireLock(ctxT(t, 10*time.Second),
			&v1.AcquireLockRequest{Key: "k", Ttl: durationpb.New(time.Second), Owner: "o"})
		if code, reason := reasonOf(err); code != codes.Unavailable || reason != "STORE_UNAVAILABLE" {
			t.Fatalf("AcquireLock: %v; want UNAVAILABLE with STORE_UNAVAILABLE", err)
		}
		testkit.Eventually(t, 10*time.Second, "the log names NOPERM and docs/security.md", func() bool {
			l := sc.Log()
			return strings.Contains(l, "NOPERM") && strings.Contains(l, "docs/security.md")
		})
		if l := sc.Log(); strings.Contains(l, "s3cret") {
			t.Fatalf("the log holds the Redis password")
		}
	}
	t.Run("another namespace's keys", func(t *testing.T) {
		other := make([]string, len(rules))
		for i, r := range rules {
			other[i] = strings.ReplaceAll(r, "{default/", "{other/")
		}
		setUser(t, admin, "sidecar-other", other...)
		sc := testharness.StartSidecar(t, bin, "--redis-url", fmt.Sprintf("redis://sidecar-other:s3cret-acl-test@%s/0", rd.Addr()))
		expectStoreUnavailable(t, sc)
	})
	t.Run("no commands", func(t *testing.T) {
		setUser(t, admin, "bare", "on", ">s3cret-acl-test")
		sc := testharness.StartSidecarNoWait(t, bin, "--redis-url", fmt.Sprintf("redis://bare:s3cret-acl-test@%s/0", rd.Addr()))
		waitHealth(t, sc.Conn(t), healthpb.HealthCheckResponse_NOT_SERVING, 10*time.Second)
		expectStoreUnavailable(t, sc)
	})
}

// lockQueued reports whether a sidecar waits in the queue of lock key
// "acl/k" (its zset rs:{default/lock/acl%2Fk}:lock:queue, docs/redis-keys.md).
func lockQueued(t *testing.T, admin *redis.Client) bool {
	t.Helper()
	n, err := admin.ZCard(ctxT(t, 5*time.Second), "rs:{default/lock/acl%2Fk}:lock:queue").Result()
	if err != nil {
		t.Fatal(err)
	}
	return n > 0
}
