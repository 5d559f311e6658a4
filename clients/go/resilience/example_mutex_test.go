package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// An explicit lock handle, for work that does not fit in one function:
// Lock, put the fencing token in the writes, Extend before Until while the
// work goes on, Unlock at the end.
func ExampleMutex() {
	conn, err := resilience.Dial() // SIDECAR_ADDR, or 127.0.0.1:50051
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	locks := v1.NewLockServiceClient(conn)
	ctx := context.Background()

	m := resilience.NewMutex(locks, "invoices/2024-06", resilience.WithTTL(30*time.Second), resilience.WithOwner("billing-1"))
	if err := m.Lock(ctx); err != nil {
		log.Fatal(err) // errors.Is(err, resilience.ErrNotAcquired): someone else has it
	}
	fmt.Println("locked:", m.Locked(), "with a fencing token:", m.FencingToken() > 0)

	// Another process is told who holds it.
	err = resilience.NewMutex(locks, "invoices/2024-06").Lock(ctx)
	var na *resilience.NotAcquiredError
	fmt.Println("the other one:", errors.As(err, &na), na.Holder)

	if err := m.Extend(ctx); err != nil {
		log.Fatal(err) // errors.Is(err, resilience.ErrLeaseLost): stop, the lock may be gone
	}
	fmt.Println("extended, good for at most 27s:", time.Until(m.Until()) <= 27*time.Second)

	if err := m.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("locked after Unlock:", m.Locked())
	// Output:
	// locked: true with a fencing token: true
	// the other one: true billing-1
	// extended, good for at most 27s: true
	// locked after Unlock: false
}
