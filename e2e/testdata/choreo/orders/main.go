// Command orders is the order service of the choreography example
// (e2e/choreography_test.go): it places one order, then follows it until
// the inventory released its stock (the payment failed), writes its state
// and exits.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// State is what the service writes to its state file when done.
type State struct {
	Orders     map[string]string `json:"orders"`
	Deliveries map[string]int    `json:"deliveries"`
}

func main() {
	addr := flag.String("addr", "", "sidecar address")
	statePath := flag.String("state", "", "state file")
	id := flag.String("order", "o-1", "order id")
	amount := flag.Int("amount", 500, "order amount")
	flag.Parse()
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	c := v1.NewEventServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st := State{Orders: map[string]string{}, Deliveries: map[string]int{}}
	// Follow the outcome first, so nothing is missed.
	s, err := c.Subscribe(ctx, &v1.SubscribeRequest{Topic: "inventory.released", Group: "orders", Consumer: "orders-1"})
	if err != nil {
		log.Fatal(err)
	}
	if m, err := s.Recv(); err != nil || m.GetSubscribed() == nil {
		log.Fatalf("subscribe: %v %v", m, err)
	}
	payload, _ := json.Marshal(map[string]any{"order": *id, "qty": 3, "amount": *amount})
	// Placed twice, as a client retrying after a timeout would: the
	// idempotency key makes it one event.
	for range 2 {
		if _, err := c.Publish(ctx, &v1.PublishRequest{Topic: "order.placed", Key: *id, Payload: payload, IdempotencyKey: "order.placed/" + *id}); err != nil {
			log.Fatal(err)
		}
	}
	st.Orders[*id] = "PLACED"
	for st.Orders[*id] == "PLACED" {
		m, err := s.Recv()
		if err != nil {
			log.Fatal(err)
		}
		ev := m.GetEvent()
		if ev == nil {
			continue
		}
		st.Deliveries[ev.GetEventId()]++
		var o struct {
			Order string `json:"order"`
		}
		if err := json.Unmarshal(ev.GetPayload(), &o); err != nil {
			log.Fatal(err)
		}
		if o.Order == *id {
			st.Orders[*id] = "CANCELLED"
		}
		if _, err := c.Ack(ctx, &v1.AckRequest{Topic: "inventory.released", Group: "orders", EventId: ev.GetEventId()}); err != nil {
			log.Fatal(err)
		}
	}
	b, _ := json.Marshal(st)
	if err := os.WriteFile(*statePath, b, 0o600); err != nil {
		log.Fatal(err)
	}
}
