// Command payments is the payment service of the choreography example
// (e2e/choreography_test.go): it charges an order once its stock is
// reserved; charges above its limit fail, which it announces with
// payment.failed. Each event is handled once by its event_id.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// State is what the service writes to its state file after every change.
type State struct {
	Failed     []string       `json:"failed"`
	Charged    []string       `json:"charged"`
	Deliveries map[string]int `json:"deliveries"`
	Handled    map[string]int `json:"handled"`
}

type order struct {
	Order  string `json:"order"`
	Qty    int    `json:"qty"`
	Amount int    `json:"amount"`
}

const limit = 100

func main() {
	addr := flag.String("addr", "", "sidecar address")
	statePath := flag.String("state", "", "state file")
	flag.Parse()
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	c := v1.NewEventServiceClient(conn)
	st := State{Deliveries: map[string]int{}, Handled: map[string]int{}}
	save := func() {
		b, _ := json.Marshal(st)
		if err := os.WriteFile(*statePath+".tmp", b, 0o600); err != nil {
			log.Fatal(err)
		}
		if err := os.Rename(*statePath+".tmp", *statePath); err != nil {
			log.Fatal(err)
		}
	}
	save()
	ctx := context.Background()
	for {
		err := func() error {
			s, err := c.Subscribe(ctx, &v1.SubscribeRequest{Topic: "inventory.reserved", Group: "payments", Consumer: "payments-1"})
			if err != nil {
				return err
			}
			for {
				m, err := s.Recv()
				if err != nil {
					return err
				}
				ev := m.GetEvent()
				if ev == nil {
					continue
				}
				st.Deliveries[ev.GetEventId()]++
				if st.Handled[ev.GetEventId()] == 0 {
					var o order
					if err := json.Unmarshal(ev.GetPayload(), &o); err != nil {
						log.Fatal(err)
					}
					next := "payment.completed"
					if o.Amount > limit {
						next = "payment.failed"
						st.Failed = append(st.Failed, o.Order)
					} else {
						st.Charged = append(st.Charged, o.Order)
					}
					st.Handled[ev.GetEventId()]++
					save()
					payload, _ := json.Marshal(o)
					if _, err := c.Publish(ctx, &v1.PublishRequest{Topic: next, Key: o.Order, Payload: payload, IdempotencyKey: next + "/" + o.Order}); err != nil {
						return err
					}
				}
				save()
				if _, err := c.Ack(ctx, &v1.AckRequest{Topic: "inventory.reserved", Group: "payments", EventId: ev.GetEventId()}); err != nil {
					return err
				}
			}
		}()
		fmt.Fprintf(os.Stderr, "payments: %v; resubscribing\n", err)
		time.Sleep(100 * time.Millisecond)
	}
}
