// Command inventory is the inventory service of the choreography example
// (e2e/choreography_test.go): it reserves stock when an order is placed and
// releases it when the order's payment fails, handling each event once by
// its event_id however often it is delivered.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// State is what the service writes to its state file after every change.
type State struct {
	Stock    int            `json:"stock"`
	Reserved map[string]int `json:"reserved"`
	Released []string       `json:"released"`
	// Deliveries counts every delivery by event id, Handled the ones whose
	// effect was applied (at most one each).
	Deliveries map[string]int `json:"deliveries"`
	Handled    map[string]int `json:"handled"`
}

type order struct {
	Order  string `json:"order"`
	Qty    int    `json:"qty"`
	Amount int    `json:"amount"`
}

func main() {
	addr := flag.String("addr", "", "sidecar address")
	statePath := flag.String("state", "", "state file")
	dropFirstAck := flag.Bool("drop-first-ack", false, "do not ack the first order.placed delivery, as if the service crashed after its work")
	flag.Parse()
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	c := v1.NewEventServiceClient(conn)
	var mu sync.Mutex
	st := State{Stock: 10, Reserved: map[string]int{}, Deliveries: map[string]int{}, Handled: map[string]int{}}
	save := func() {
		b, _ := json.Marshal(st)
		tmp := *statePath + ".tmp"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			log.Fatal(err)
		}
		if err := os.Rename(tmp, *statePath); err != nil {
			log.Fatal(err)
		}
	}
	mu.Lock()
	save()
	mu.Unlock()
	ctx := context.Background()
	dropped := false
	handle := func(topic string, apply func(o order) (publishTopic string)) func(ev *v1.Event) bool {
		return func(ev *v1.Event) bool {
			mu.Lock()
			defer mu.Unlock()
			st.Deliveries[ev.GetEventId()]++
			if st.Handled[ev.GetEventId()] == 0 {
				var o order
				if err := json.Unmarshal(ev.GetPayload(), &o); err != nil {
					log.Fatalf("%s: %v", topic, err)
				}
				next := apply(o)
				st.Handled[ev.GetEventId()]++
				save()
				// The idempotency key makes a republish after a crash
				// between save and ack harmless.
				payload, _ := json.Marshal(o)
				if _, err := c.Publish(ctx, &v1.PublishRequest{Topic: next, Key: o.Order, Payload: payload, IdempotencyKey: next + "/" + o.Order}); err != nil {
					log.Fatalf("publish %s: %v", next, err)
				}
			} else {
				save()
			}
			if topic == "order.placed" && *dropFirstAck && !dropped {
				dropped = true
				return false
			}
			return true
		}
	}
	go consume(c, "order.placed", handle("order.placed", func(o order) string {
		st.Stock -= o.Qty
		st.Reserved[o.Order] = o.Qty
		return "inventory.reserved"
	}))
	consume(c, "payment.failed", handle("payment.failed", func(o order) string {
		st.Stock += st.Reserved[o.Order]
		delete(st.Reserved, o.Order)
		st.Released = append(st.Released, o.Order)
		return "inventory.released"
	}))
}

// consume subscribes to topic as group "inventory" and acks what handle
// accepts, resubscribing if the stream breaks.
func consume(c v1.EventServiceClient, topic string, handle func(*v1.Event) bool) {
	for {
		err := func() error {
			s, err := c.Subscribe(context.Background(), &v1.SubscribeRequest{Topic: topic, Group: "inventory", Consumer: "inventory-1",
				VisibilityTimeout: durationpb.New(time.Second)})
			if err != nil {
				return err
			}
			for {
				m, err := s.Recv()
				if err != nil {
					return err
				}
				ev := m.GetEvent()
				if ev == nil || !handle(ev) {
					continue
				}
				if _, err := c.Ack(context.Background(), &v1.AckRequest{Topic: topic, Group: "inventory", EventId: ev.GetEventId()}); err != nil {
					return err
				}
			}
		}()
		fmt.Fprintf(os.Stderr, "inventory: %s: %v; resubscribing\n", topic, err)
		time.Sleep(100 * time.Millisecond)
	}
}
