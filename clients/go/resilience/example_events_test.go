package resilience_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// The order service announces a placed order; the shipping service, one
// consumer group with any number of replicas, handles each order once per
// group. Publish retries with the same idempotency key append once.
// Subscribe acks an event when the handler returns nil and nacks it (it
// comes again, with DeliveryCount+1) when it returns an error.
func ExampleSubscribe() {
	conn, err := resilience.Dial() // SIDECAR_ADDR, or 127.0.0.1:50051
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	events := v1.NewEventServiceClient(conn)
	ctx := context.Background()
	topic := "orders.placed." + rand.Text() // fresh for each run of the example

	for range 2 { // a retry, after a timeout say, appends nothing
		_, dup, err := resilience.Publish(ctx, events, topic, []byte(`{"order":1001}`),
			resilience.WithEventKey("order-1001"),
			resilience.WithHeader("content-type", "application/json"),
			resilience.WithIdempotencyKey(topic+"/order-1001"))
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("published; duplicate:", dup)
	}

	ctx, stop := context.WithCancel(ctx)
	err = resilience.Subscribe(ctx, events, topic, "shipping", "shipping-1",
		func(ctx context.Context, ev *v1.Event) error {
			fmt.Println("ship", ev.GetKey(), string(ev.GetPayload()), "delivery", ev.GetDeliveryCount())
			stop() // a real consumer runs until shutdown
			return nil
		})
	fmt.Println("subscription ended:", err)
	// Output:
	// published; duplicate: false
	// published; duplicate: true
	// ship order-1001 {"order":1001} delivery 1
	// subscription ended: <nil>
}
