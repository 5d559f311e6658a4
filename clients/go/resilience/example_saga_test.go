package resilience_test

import (
	"context"
	"crypto/rand"
	"fmt"
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
	conn, err := resilience.Dial() // SIDECAR_ADDR, or 127.0.0.1:50051
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	sagas := v1.NewSagaServiceClient(conn)
	ctx := context.Background()

	order := "order-" + rand.Text() // a fresh order for each run of the example
	saga, err := resilience.StartSaga(ctx, sagas, order, "place-order", 5*time.Minute)
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
			fmt.Println("order not placed (the sidecar undoes the steps taken):", err)
			return
		}
		fmt.Println("done:", st.name)
	}
	if err := saga.Complete(ctx); err != nil {
		fmt.Println("order not placed:", err) // it timed out meanwhile: it is being undone
		return
	}

	// The saga log, as the sidecar keeps it.
	got, err := sagas.GetSaga(ctx, &v1.GetSagaRequest{SagaId: order})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(got.GetSaga().GetState(), "with", len(got.GetSaga().GetSteps()), "steps recorded")
	// Output:
	// done: reserve-stock
	// done: charge-card
	// done: book-courier
	// SAGA_STATE_COMPLETED with 3 steps recorded
}

func reserveStock(context.Context) error { return nil } // call the inventory service here
func chargeCard(context.Context) error   { return nil } // call the payment provider here
func bookCourier(context.Context) error  { return nil } // call the shipping service here

// A step whose work is not one function: record its compensation first
// (write-ahead: a crash in the middle of the work is compensated too),
// then do the work, and abort the saga if it fails.
func ExampleSaga_AddCompensation() {
	conn, err := resilience.Dial() // SIDECAR_ADDR, or 127.0.0.1:50051
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	sagas := v1.NewSagaServiceClient(conn)
	ctx := context.Background()

	order := "order-" + rand.Text()
	saga, err := resilience.StartSaga(ctx, sagas, order, "refund-order", time.Minute)
	if err != nil {
		log.Fatal(err)
	}
	refund := &v1.Compensation{Upstream: "payments", Method: "POST", Path: "/charges/" + order + "/refund"}
	if err := saga.AddCompensation(ctx, "charge-card", refund); err != nil {
		log.Fatal(err) // the saga timed out or was aborted: do not charge
	}
	if err := chargeCard(ctx); err != nil {
		_ = saga.Abort(ctx, err.Error()) // the sidecar calls the refund
		return
	}
	if err := saga.Complete(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("charged, saga completed")
	// Output:
	// charged, saga completed
}
