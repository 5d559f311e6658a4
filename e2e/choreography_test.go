package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// choreoState is the union of what the three services of
// testdata/choreo write to their state files.
type choreoState struct {
	Stock      int               `json:"stock"`
	Reserved   map[string]int    `json:"reserved"`
	Released   []string          `json:"released"`
	Failed     []string          `json:"failed"`
	Charged    []string          `json:"charged"`
	Orders     map[string]string `json:"orders"`
	Deliveries map[string]int    `json:"deliveries"`
	Handled    map[string]int    `json:"handled"`
}

func readChoreoState(t *testing.T, path string) choreoState {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s choreoState
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return s
}

// topicEvents reads every event of topic through a fresh group, until
// nothing more comes for a while.
func topicEvents(t *testing.T, c v1.EventServiceClient, topic string) []*v1.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s := subscribeE2E(t, ctx, c, &v1.SubscribeRequest{Topic: topic, Group: "audit", Consumer: "audit", MaxInFlight: 100})
	var out []*v1.Event
	for {
		m, err := s.Recv()
		if status.Code(err) == codes.DeadlineExceeded {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", topic, err)
		}
		out = append(out, m.GetEvent())
	}
}

// The seed's choreography, three services each behind its own sidecar on
// one Redis: orders places an order (publishing twice, as a retrying
// client would) → inventory reserves stock → inventory.reserved →
// payments refuses the amount → payment.failed → inventory releases the
// reservation → inventory.released → orders marks the order cancelled.
// Inventory "crashes" after its first reservation, before acking, so
// order.placed is delivered to it twice; it reserves once.
func TestEventsChoreography(t *testing.T) {
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir+string(os.PathSeparator),
		"./testdata/choreo/orders", "./testdata/choreo/inventory", "./testdata/choreo/payments")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the services: %v\n%s", err, out)
	}
	rd := testharness.StartRedis(t)
	bin := testharness.BuildSidecar(t)
	sidecar := func() *testharness.Sidecar { return testharness.StartSidecar(t, bin, "--redis-url", rd.URL()) }
	scOrders, scInventory, scPayments := sidecar(), sidecar(), sidecar()

	service := func(name, addr string, args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(dir, name), append([]string{"-addr", addr, "-state", filepath.Join(dir, name+".json")}, args...)...)
		cmd.Stderr = os.Stderr
		return cmd
	}
	for _, cmd := range []*exec.Cmd{
		service("inventory", scInventory.Addr(), "-drop-first-ack"),
		service("payments", scPayments.Addr()),
	} {
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	}
	orders := service("orders", scOrders.Addr(), "-order", "o-1", "-amount", "500")
	done := make(chan error, 1)
	if err := orders.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- orders.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("orders: %v", err)
		}
	case <-time.After(90 * time.Second):
		_ = orders.Process.Kill()
		t.Fatal("the order never got its outcome")
	}

	c := eventClient(t, scOrders)
	events := map[string][]*v1.Event{}
	for _, topic := range []string{"order.placed", "inventory.reserved", "payment.failed", "inventory.released", "payment.completed"} {
		events[topic] = topicEvents(t, c, topic)
	}
	for topic, evs := range events {
		want := 1
		if topic == "payment.completed" {
			want = 0
		}
		if len(evs) != want {
			t.Errorf("topic %s holds %d events, want %d (retried publishes must append once)", topic, len(evs), want)
		}
	}
	if t.Failed() {
		return
	}
	placed := events["order.placed"][0].GetEventId()

	// Inventory got order.placed twice (it dropped the first ack), and
	// reserved once.
	invPath := filepath.Join(dir, "inventory.json")
	testkit.EventuallyNil(t, 30*time.Second, "order.placed redelivered to inventory", func() error {
		if st := readChoreoState(t, invPath); st.Deliveries[placed] < 2 {
			return fmt.Errorf("inventory state %+v", st)
		}
		return nil
	})
	inv := readChoreoState(t, invPath)
	if inv.Stock != 10 || len(inv.Reserved) != 0 || !slices.Equal(inv.Released, []string{"o-1"}) {
		t.Errorf("inventory: stock %d, reserved %v, released %v; want the reservation released (stock 10)", inv.Stock, inv.Reserved, inv.Released)
	}
	for _, id := range []string{placed, events["payment.failed"][0].GetEventId()} {
		if inv.Handled[id] != 1 {
			t.Errorf("inventory handled event %s %d times, want once (deliveries %d)", id, inv.Handled[id], inv.Deliveries[id])
		}
	}
	if inv.Deliveries[placed] != 2 {
		t.Errorf("order.placed delivered %d times to inventory, want 2", inv.Deliveries[placed])
	}
	pay := readChoreoState(t, filepath.Join(dir, "payments.json"))
	reserved := events["inventory.reserved"][0].GetEventId()
	if !slices.Equal(pay.Failed, []string{"o-1"}) || len(pay.Charged) != 0 || pay.Handled[reserved] != 1 {
		t.Errorf("payments: %+v; want o-1 failed once", pay)
	}
	ord := readChoreoState(t, filepath.Join(dir, "orders.json"))
	if ord.Orders["o-1"] != "CANCELLED" || ord.Deliveries[events["inventory.released"][0].GetEventId()] != 1 {
		t.Errorf("orders: %+v; want o-1 cancelled after one inventory.released", ord)
	}
}
