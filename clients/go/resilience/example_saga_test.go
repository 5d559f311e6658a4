package resilience_test

import (
	"context"
	"log"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// An order is placed in three steps in three services. Each step is
// recorded with the HTTP call that undoes it before it runs; if one fails,
// the sidecar undoes the ones before it, newest first. If this process
// dies midway, the sidecar does the same after the saga's timeout. The
// sidecar's config must declare the upstreams ("inventory", "payments",
// "shipping"); see docs/sagas.md.
func ExampleStartSaga() {
	conn, err := resilience.Dial()
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()

	order := "order-1001"
	saga, err := resilience.StartSaga(ctx, v1.NewSagaServiceClient(conn), order, "place-order", 5*time.Minute)
	if err != nil {
		log.Fatal(err)
	}
	undo := func(upstream, path string) *v1.Compensation {
		return &v1.Compensation{Upstream: upstream, Method: "POST", Path: path}
	}
	steps := []struct {
		name string
		undo *v1.Compensation
		do   func(context.Context) error
	}{
		{"reserve-stock", undo("inventory", "/reservations/"+order+"/cancel"), reserveStock},
		{"charge-card", undo("payments", "/charges/"+order+"/refund"), chargeCard},
		{"book-courier", undo("shipping", "/bookings/"+order+"/cancel"), bookCourier},
	}
	for _, st := range steps {
		if err := saga.Step(ctx, st.name, st.undo, st.do); err != nil {
			log.Printf("order %s not placed: %v (the sidecar undoes the steps taken)", order, err)
			return
		}
	}
	if err := saga.Complete(ctx); err != nil {
		log.Printf("order %s: %v", order, err) // it timed out meanwhile: it is being undone
	}
}

func reserveStock(context.Context) error { return nil }
func chargeCard(context.Context) error   { return nil }
func bookCourier(context.Context) error  { return nil }
