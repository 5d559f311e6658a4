package resilience_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// A payment endpoint that clients retry: the charge runs once per
// idempotency key, and every retry gets the first response.
func ExampleIdempotent() {
	conn, err := resilience.Dial() // SIDECAR_ADDR, or 127.0.0.1:50051
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := v1.NewIdempotencyServiceClient(conn)
	ctx := context.Background()

	// The key comes from the client (an Idempotency-Key header); the
	// fingerprint from the request it was sent with.
	key := "payments/" + rand.Text()
	body := []byte(`{"order":1001,"amount":4200}`)
	charges := 0
	charge := func(ctx context.Context) (resilience.Result, error) {
		charges++ // call the payment provider here
		return resilience.Result{
			Data:     []byte(`{"charge":"ch_1"}`),
			Metadata: map[string]string{"status": "201"},
		}, nil
	}

	for range 3 { // the client retries, e.g. after a timeout
		res, err := resilience.Idempotent(ctx, client, key, resilience.Fingerprint(body), charge)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(res.Metadata["status"], string(res.Data))
	}
	fmt.Println("charged", charges, "time(s)")

	// The same key with a different request is refused.
	_, err = resilience.Idempotent(ctx, client, key, resilience.Fingerprint([]byte(`{"order":1001,"amount":9900}`)), charge)
	fmt.Println(errors.Is(err, resilience.ErrIdempotencyKeyMismatch))
	// Output:
	// 201 {"charge":"ch_1"}
	// 201 {"charge":"ch_1"}
	// 201 {"charge":"ch_1"}
	// charged 1 time(s)
	// true
}

// A multi-step operation records a checkpoint after each external call, so
// that if this process dies the run that takes over resumes after the last
// finished phase instead of charging twice.
func ExampleExecution_Checkpoint() {
	conn, err := resilience.Dial()
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := v1.NewIdempotencyServiceClient(conn)

	key := "orders/" + rand.Text()
	res, err := resilience.Idempotent(context.Background(), client, key, "sha256:...",
		func(ctx context.Context) (resilience.Result, error) {
			run := resilience.ExecutionFrom(ctx)
			chargeID := string(run.RecoveryData)
			if run.RecoveryPoint == "" { // nothing done yet
				chargeID = "ch_42" // charge the card (pass the key on to the provider)
				if err := run.Checkpoint(ctx, "charged", []byte(chargeID)); err != nil {
					return resilience.Result{}, err // lease lost: another run took over
				}
			}
			// ship the order, referencing chargeID
			return resilience.Result{Data: []byte("shipped, paid by " + chargeID)}, nil
		})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(res.Data))
	// Output:
	// shipped, paid by ch_42
}
